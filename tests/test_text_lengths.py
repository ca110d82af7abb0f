"""Text lengths fit the synthetic world's captions and prompts; truncation is never silent."""

import pathlib
import warnings

import pytest

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.data import prompts
from unity_jax.data.synthetic import captions, world
from unity_jax.model import text

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The longest texts of a scan over 3,500 seeds per source (3,000 training, 500 held-out eval) at
# tiny's geometry: captions up to 302 tokens, segmentation prompts naming targets up to 145.
EXTREMES = (("two_person", 320), ("two_person", 808), ("two_person", 2469),
            ("general", 1050), ("general", 1318))


def _scenes():
  """(source, seed) pairs: the first training and eval seeds of every source, and EXTREMES."""
  for source in constants.SOURCES:
    for seed in [*range(20), *(1_000_000 + i for i in range(5))]:
      yield source, seed
  yield from EXTREMES


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_tiny_lengths_fit_every_synthetic_caption_and_prompt(arg):
  config = config_lib.load_config(str(ROOT / "configs/tiny.py") + (f":{arg}" if arg else ""))
  d = config.data
  assert max(d.caption_len, d.prompt_len) <= config.model.text_max_len
  for source, seed in _scenes():
    scene = world.sample_scene(seed, source, num_frames=d.num_frames, height=d.height,
                               width=d.width)
    caption = captions.caption(scene)
    assert not text.truncated([caption], d.caption_len)[0], (source, seed, caption)
    for modality in constants.MODALITIES:
      prompt = prompts.modality_prompt(modality, captions.segmentation_targets(scene))
      assert not text.truncated([prompt], d.prompt_len)[0], (source, seed, prompt)


def test_sampler_warns_when_it_truncates():
  from unity_jax.sample import pipeline  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    pipeline._warn_if_truncated(["a" * 318, ""], 320, "caption", "data.caption_len")
  with pytest.warns(UserWarning, match=r"1 caption\(s\) of up to 322 tokens are truncated to "
                    r"the checkpoint's data.caption_len=320"):
    pipeline._warn_if_truncated(["a" * 320, "b"], 320, "caption", "data.caption_len")


def test_tokenizer_lengths():
  assert text.token_length("") == 2 and text.token_length("ü") == 4
  assert text.truncated(["abc", "abcd"], 5).tolist() == [False, True]
  tokens, _ = text.tokenize(["abcd"], 5)
  assert text.detokenize(tokens) == ["abc"]  # What truncated() predicts.
