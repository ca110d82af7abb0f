"""Built-in text side: a byte-level tokenizer and a small transformer text encoder.

The synthetic world's captions are short English sentences, so a byte-level tokenizer (no
vocabulary file, exact and deterministic) is enough. Real runs feed precomputed umT5 caption
embeddings instead; `encode_text` accepts either (see `TextEncoder` and `UnityDiT`).
"""

from typing import Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
_BYTE_OFFSET = 3
VOCAB_SIZE = 256 + _BYTE_OFFSET


def token_length(text: str) -> int:
  """Untruncated token count of `text`: BOS + its UTF-8 bytes + EOS."""
  return len(text.encode("utf-8")) + 2


def truncated(texts: Sequence[str], max_len: int) -> np.ndarray:
  """bool [N]: which texts `tokenize(texts, max_len)` would cut (callers count and report it)."""
  return np.asarray([token_length(t) > max_len for t in texts], bool)


def tokenize(texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes strings into UTF-8 byte ids with BOS/EOS, padded or truncated to `max_len`.

  The empty string tokenizes to [BOS, EOS] — the "empty caption" used by caption dropout and
  classifier-free guidance. Truncation keeps EOS and drops the tail bytes; it is not reported
  here: the data pipeline, `unity-data inspect`, the converter and the sampler count it with
  `truncated` and say so.

  Returns:
    tokens: int32 [N, max_len]; mask: bool [N, max_len] (True on real tokens).
  """
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2 (room for BOS and EOS), got {max_len}")
  tokens = np.full((len(texts), max_len), PAD_ID, np.int32)
  for row, text in enumerate(texts):
    ids = [b + _BYTE_OFFSET for b in text.encode("utf-8")][: max_len - 2]
    ids = [BOS_ID, *ids, EOS_ID]
    tokens[row, : len(ids)] = ids
  return tokens, tokens != PAD_ID


def detokenize(tokens: np.ndarray) -> list[str]:
  """Inverse of `tokenize` for untruncated rows: int [N, L] -> list of N strings."""
  out = []
  for row in np.asarray(tokens):
    data = bytes(int(t) - _BYTE_OFFSET for t in row if t >= _BYTE_OFFSET)
    out.append(data.decode("utf-8", errors="replace"))
  return out


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------
# Kept below the tokenizer so data workers need not import flax.
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from unity_jax.model import layers  # noqa: E402


class TextEncoder(nn.Module):
  """A small pre-LN transformer over byte tokens, trained from scratch with the DiT.

  tokens: int32 [N, L]; mask: bool [N, L]. Returns float [N, L, dim].
  """
  dim: int
  num_layers: int
  num_heads: int
  max_len: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask):
    if tokens.shape[-1] > self.max_len:
      raise ValueError(f"text length {tokens.shape[-1]} exceeds model.text.max_len={self.max_len}")
    embed = nn.Embed(VOCAB_SIZE, self.dim, param_dtype=self.param_dtype, name="token_embed",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(0.02), ("vocab", "embed")))
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "embed")), (self.max_len, self.dim),
                     self.param_dtype)
    x = (embed(tokens) + pos[: tokens.shape[-1]]).astype(self.dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      h = layers.LayerNormAffine(param_dtype=self.param_dtype, name=f"norm_attn_{i}")(x)
      x = x + layers.Attention(self.num_heads, name=f"attn_{i}", **kw)(h, key_mask=mask)
      h = layers.LayerNormAffine(param_dtype=self.param_dtype, name=f"norm_ffn_{i}")(x)
      x = x + layers.FeedForward(4 * self.dim, name=f"ffn_{i}", **kw)(h)
    return layers.LayerNormAffine(param_dtype=self.param_dtype, name="final_norm")(x)
