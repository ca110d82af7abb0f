"""unity_jax.eval.contact_sheet.compose: layout of the quickstart's contact sheet."""

import numpy as np

from unity_jax.eval import contact_sheet


def test_compose_lays_out_rows_by_columns_of_frame_strips():
  rng = np.random.default_rng(0)
  video = lambda: rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)  # noqa: E731
  rows = [[video(), video()] for _ in range(3)]
  image = contact_sheet.compose(rows, ["a", "b"], frames=3, scale=2, gap=1, panel_gap=4)
  strip_w, strip_h = 3 * 16 + 2, 16                     # 3 frames of 8·2 px, 2 gaps of 1 px
  assert image.shape == (14 + 3 * strip_h + 2 * 4, 2 * strip_w + 4, 3)
  # Row 1, column 1, frame 3 (the last frame), enlarged 2x by repetition.
  top, left = 14 + strip_h + 4, strip_w + 4 + 2 * (16 + 1)
  np.testing.assert_array_equal(image[top:top + 16:2, left:left + 16:2], rows[1][1][-1])
