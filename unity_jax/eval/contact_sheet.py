"""A one-image contact sheet of a trained model's samples on UniBench-synth clips.

  python -m unity_jax.eval.contact_sheet --workdir runs/quickstart \
      --data runs/quickstart_data --out runs/quickstart/contact_sheet.png

One row per eval clip (the first `--clips`, one per source in load_clips' order); columns:
  input RGB | estimated depth | ground-truth depth | joint: generated RGB | joint: its depth
The estimate is unity-eval's (one step from noise, the posterior mean); the joint columns are
generated from the clip's caption alone with unity-eval's defaults for the quickstart (Euler,
caption guidance). Each panel shows `--frames` frames (first, middle, last by default) so motion
is visible without a video player; docs/evaluation.md shows the quickstart's sheet.
"""

import argparse
import os

import numpy as np

from unity_jax import io_utils


def _frames(video: np.ndarray, count: int) -> np.ndarray:
  """`count` frames of [T, H, W, 3] spread from first to last."""
  return video[np.linspace(0, len(video) - 1, count).round().astype(int)]


def _strip(video: np.ndarray, count: int, scale: int, gap: int) -> np.ndarray:
  """Frames of one panel left to right, enlarged: [H·scale, count·(W·scale + gap) − gap, 3]."""
  frames = _frames(video, count).repeat(scale, axis=1).repeat(scale, axis=2)
  spacer = np.full((frames.shape[1], gap, 3), 255, np.uint8)
  pieces = []
  for frame in frames:
    pieces += [frame, spacer]
  return np.concatenate(pieces[:-1], axis=1)


def compose(rows, labels, *, frames: int = 3, scale: int = 3, gap: int = 2,
            panel_gap: int = 8) -> np.ndarray:
  """rows: [[video uint8 [T, H, W, 3] per column]] -> one labelled uint8 image."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  strips = [[_strip(v, frames, scale, gap) for v in row] for row in rows]
  height, width = strips[0][0].shape[:2]
  label_h = 14
  total_w = len(labels) * (width + panel_gap) - panel_gap
  image = np.full((label_h + len(rows) * (height + panel_gap) - panel_gap, total_w, 3), 255,
                  np.uint8)
  for r, row in enumerate(strips):
    for c, strip in enumerate(row):
      top, left = label_h + r * (height + panel_gap), c * (width + panel_gap)
      image[top:top + height, left:left + width] = strip
  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  for c, label in enumerate(labels):
    draw.text((c * (width + panel_gap) + 1, 1), label, fill=(0, 0, 0))
  return np.asarray(canvas)


def sample_rows(pipe, clips, *, steps: int, guidance: float, seed: int = 0):
  """[[input RGB, estimated depth, true depth, generated RGB, generated depth] per clip]."""
  count = len(clips)
  # Padded to unity-eval's batch of 8 (repeating the last clip): the same shapes as its sampling
  # calls, so their compilations come from the persistent cache.
  clips = list(clips) + [clips[-1]] * max(0, 8 - count)
  rgb = np.stack([c["rgb"] for c in clips])
  captions = [c["caption"] for c in clips]
  seeds = [seed + i for i in range(len(clips))]
  estimated = pipe.estimate(video=rgb, modality="depth", prompt=captions, num_steps=1,
                            seed=seeds)
  joint = pipe.generate(captions, modality="depth", num_steps=steps, guidance_scale=guidance,
                        seed=seeds)
  return [[c["rgb"], e.modality, c["modalities"]["depth"], j.rgb, j.modality]
          for c, e, j in list(zip(clips, estimated, joint))[:count]]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data", required=True, help="OpenUni directory with an eval split")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--clips", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10, help="ODE steps of joint generation")
  parser.add_argument("--guidance", type=float, default=4.0)
  parser.add_argument("--frames", type=int, default=3, help="frames shown per panel")
  parser.add_argument("--scale", type=int, default=3)
  args = parser.parse_args(argv)
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  from unity_jax.eval import unibench  # pylint: disable=g-import-not-at-top
  from unity_jax.sample.pipeline import Pipeline  # pylint: disable=g-import-not-at-top
  from unity_jax.eval import cli  # pylint: disable=g-import-not-at-top
  cli._configure_jax(cli.JAX_CACHE_DIR)  # pylint: disable=protected-access
  clips = unibench.load_clips(args.data, "eval", args.clips)
  pipe = Pipeline.from_workdir(args.workdir)
  rows = sample_rows(pipe, clips, steps=args.steps, guidance=args.guidance)
  labels = ["input RGB", "estimated depth", "true depth", "joint: generated RGB",
            "joint: its depth"]
  image = compose(rows, labels, frames=args.frames, scale=args.scale)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with io_utils.atomic_path(args.out) as tmp:
    iio.imwrite(tmp, image, extension=".png")
  print(f"contact sheet: {args.out} ({len(rows)} clips; {', '.join(c['id'] for c in clips)})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
