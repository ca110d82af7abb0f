"""Prompt embeddings for sampling a model trained on precomputed text (model.text_encoder =
"precomputed"), made exactly as `unity-data precompute` stored them for training.

The hook is `text_encoders.make_text_encoder(config)` (config.text: umT5 with Wan's prompt
cleaning, EOS-terminated ids and zeroed padding, or the fake encoder), called with the same
shapes precompute uses — one caption per call ([1, Lc]), the M = 5 modality prompts of one
segmentation target in one call ([M, Lm]) — and rounded through the stored dtype
(config.precompute.dtype), so a prompt seen in training gets bit-identical conditioning here.
"""

import warnings
from typing import Sequence

import numpy as np

from unity_jax import constants
from unity_jax.data import latent_examples
from unity_jax.data import prompts as prompts_lib
from unity_jax.data import text_encoders


def _warn_if_cut(encode, texts: Sequence[str], length: int, what: str, key: str) -> None:
  """Warns when the text encoder cuts a text to fit the checkpoint's length (never silent)."""
  if encode.truncated(texts, length).any():
    warnings.warn(f"a {what} is longer than {key}={length} tokens and is truncated: "
                  f"{texts[0][:80]!r}", stacklevel=3)


def _mask(lengths: np.ndarray, size: int) -> np.ndarray:
  return np.arange(size)[None, :] < np.asarray(lengths)[:, None]


class PromptEmbedder:
  """Captions and modality prompts -> {"embedding": float32 [B, L, D], "mask": bool [B, L]}.

  Results are cached per text (sampling loops reuse the same prompts and the empty caption).
  """

  def __init__(self, config):
    self.encode = text_encoders.make_text_encoder(config)
    if self.encode is None:
      raise ValueError("PromptEmbedder needs config.model.text_encoder='precomputed'")
    self.dtype = latent_examples.stored_dtype(config)
    self.caption_len = int(config.data.caption_len)
    self.prompt_len = int(config.data.prompt_len)
    self._captions, self._prompts = {}, {}

  def _stored(self, embedding: np.ndarray) -> np.ndarray:
    """The values training read back from the store (bfloat16 storage rounds)."""
    return np.asarray(embedding).astype(self.dtype).astype(np.float32)

  def captions(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """B captions -> embedding float32 [B, Lc, D], mask bool [B, Lc]."""
    for text in texts:
      if text not in self._captions:
        _warn_if_cut(self.encode, [text], self.caption_len, "caption", "data.caption_len")
        embedding, length = self.encode([text], self.caption_len)
        self._captions[text] = (self._stored(embedding[0]), int(length[0]))
    rows = [self._captions[t] for t in texts]
    return {"embedding": np.stack([r[0] for r in rows]),
            "mask": _mask(np.array([r[1] for r in rows]), self.caption_len)}

  def prompts(self, modality: str, targets: Sequence[str | None]) -> dict[str, np.ndarray]:
    """The C_m prompt of `modality` for each segmentation target -> embedding float32
    [B, Lm, D], mask bool [B, Lm]; rows come from precompute's [M, Lm] call per target."""
    index = constants.modality_id(modality)
    for target in targets:
      if target not in self._prompts:
        texts = [prompts_lib.modality_prompt(m, target) for m in constants.MODALITIES]
        _warn_if_cut(self.encode, texts[index:index + 1], self.prompt_len, "modality prompt",
                     "data.prompt_len")
        embedding, lengths = self.encode(texts, self.prompt_len)
        self._prompts[target] = (self._stored(embedding), np.asarray(lengths))
    rows = [self._prompts[t] for t in targets]
    return {"embedding": np.stack([r[0][index] for r in rows]),
            "mask": _mask(np.array([r[1][index] for r in rows]), self.prompt_len)}
