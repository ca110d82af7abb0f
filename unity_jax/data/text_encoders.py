"""Text-encoder hooks for `unity-data precompute`: texts -> padded embeddings + lengths.

A hook is any callable

  encode(texts: Sequence[str], length: int) -> (embeddings float32 [N, length, D],
                                                lengths int32 [N])

whose row n depends only on texts[n] (never on the other texts of the call, so the stored bytes
do not depend on how clips were grouped or on the process count). Positions at and beyond
lengths[n] are zero. Hooks also answer `truncated(texts, length) -> bool [N]`: which texts
`encode` cuts to fit `length`, so callers count and report it (nothing is cut silently).
`make_text_encoder(config)` picks the hook from config:

  config.model.text_encoder == "builtin"  -> None (the DiT's byte-token encoder is trained; nothing
                                             to precompute)
  config.text.encoder == "umt5"           -> the JAX umT5 encoder (`unity_jax.umt5`) loaded from
                                             config.text.encoder_dir, tokenised with
                                             config.text.tokenizer_path
  config.text.encoder == "fake"           -> `FakeTextEncoder`: deterministic embeddings of the
                                             byte tokens (tests and CPU runs; no weights)
"""

from typing import Callable, Sequence

import numpy as np

from unity_jax.model import text as text_lib

TextEncoder = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]


class FakeTextEncoder:
  """Byte tokens (model/text.py) looked up in a fixed random table plus a position term.

  Deterministic and batch-independent; distinct texts give distinct embeddings. Not a language
  model: it exists so precompute, its resume and the precomputed-text training path can be
  tested without umT5 weights.
  """

  def __init__(self, dim: int, seed: int = 0):
    self.dim = int(dim)
    rng = np.random.default_rng(seed)
    self.table = rng.standard_normal((text_lib.VOCAB_SIZE, self.dim)).astype(np.float32)
    self.seed = seed

  def __call__(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, mask = text_lib.tokenize(list(texts), length)
    position = np.sin(np.arange(length, dtype=np.float32)[:, None]
                      * (1.0 + np.arange(self.dim, dtype=np.float32)[None, :]) / self.dim)
    embeddings = (self.table[tokens] + 0.1 * position[None]) * mask[..., None]
    return embeddings.astype(np.float32), mask.sum(axis=1).astype(np.int32)

  def truncated(self, texts: Sequence[str], length: int) -> np.ndarray:
    return text_lib.truncated(list(texts), length)


class UMT5TextEncoder:
  """The JAX umT5 encoder (unity_jax.umt5) as Wan conditions on it: `wan_prompt_clean`,
  SentencePiece ids ending in EOS, encoder hidden states, rows past each text's length zeroed.

  Callers pass one clip's texts per call with fixed shapes ([1, Lc] captions, [M, Lm] prompts),
  so the jitted encoder compiles twice and sees the same shapes on every process.
  """

  def __init__(self, encoder_dir: str, tokenizer_path: str, dim: int):
    from unity_jax import umt5  # pylint: disable=g-import-not-at-top
    if not encoder_dir or not tokenizer_path:
      raise ValueError("config.text.encoder='umt5' needs config.text.encoder_dir (a Hugging "
                       "Face UMT5EncoderModel directory, e.g. Wan's text_encoder/) and "
                       "config.text.tokenizer_path (its tokenizer/spiece.model)")
    self.umt5 = umt5
    self.encoder = umt5.load(encoder_dir)
    self.tokenizer = umt5.Tokenizer(tokenizer_path)
    if self.encoder.config.d_model != dim:
      raise ValueError(f"the umT5 encoder in {encoder_dir} has d_model="
                       f"{self.encoder.config.d_model}, config.model.text_dim is {dim}")

  def __call__(self, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, _ = self.tokenizer.encode([self.umt5.wan_prompt_clean(t) for t in texts], length)
    hidden = self.encoder(ids, mask)
    embeddings = np.asarray(self.umt5.wan_text_embeddings(hidden, mask, length), np.float32)
    return embeddings, mask.sum(axis=1).astype(np.int32)

  def truncated(self, texts: Sequence[str], length: int) -> np.ndarray:
    """bool [N]: texts whose pieces + EOS exceed `length` (the tokenizer keeps L - 1 + EOS)."""
    return np.asarray([len(self.tokenizer.pieces(self.umt5.wan_prompt_clean(t))) + 1 > length
                       for t in texts], bool)


def make_text_encoder(config) -> TextEncoder | None:
  """The hook chosen by config (module docstring), or None when text is not precomputed."""
  if config.model.text_encoder != "precomputed":
    return None
  if config.text.encoder == "fake":
    return FakeTextEncoder(config.model.text_dim)
  if config.text.encoder == "umt5":
    return UMT5TextEncoder(config.text.encoder_dir, config.text.tokenizer_path,
                           config.model.text_dim)
  raise ValueError(f"config.text.encoder={config.text.encoder!r}: expected 'umt5' or 'fake'")
