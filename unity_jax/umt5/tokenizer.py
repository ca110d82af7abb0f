"""umT5 tokenization from the SentencePiece model file (`spiece.model`).

The rules are those of transformers' T5 tokenizer as Wan's pipeline calls it
(`padding="max_length", truncation=True, add_special_tokens=True`):

  ids = sentencepiece(text) [+ EOS]; a text longer than length - 1 pieces is cut to length - 1
  pieces and still ends in EOS; then padded with the pad id (0 for umT5) up to `length`;
  mask = 1 on the pieces and the EOS, 0 on padding.

HF truncates silently; here `encode` also returns how many texts were cut, so a caller can warn
or refuse (Wan conditions on at most 512 tokens). No BOS is added (T5 has none). The EOS and pad
ids are read from the model file (umT5: pad 0, EOS 1, unk 2); a model without a pad piece pads
with 0, which the mask hides anyway.
"""

import html
import re

import numpy as np


class Tokenizer:
  """SentencePiece tokenizer with T5's EOS/padding rules: `encode(texts, length)`."""

  def __init__(self, path: str):
    try:
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("umt5.Tokenizer needs sentencepiece: pip install 'unity_jax[text]'") from e
    self.path = path
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.eos_id = int(self._sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"{path}: the SentencePiece model has no EOS piece; umT5 ends every "
                       "sequence with one")
    pad = int(self._sp.pad_id())
    self.pad_id = pad if pad >= 0 else 0
    self.vocab_size = int(self._sp.get_piece_size())

  def pieces(self, text: str) -> list[int]:
    """SentencePiece ids of `text`, without EOS."""
    return list(self._sp.encode(text))

  def encode(self, texts, length: int):
    """Token ids and mask of a batch, every row ending in EOS.

    Args:
      texts: a string or a list of B strings.
      length: L, the padded length (>= 1; Wan uses 512).
    Returns:
      (ids int32 [B, L], mask int32 [B, L] with 1 on the tokens incl. EOS, number of texts
      truncated to fit L - 1 pieces + EOS).
    """
    if length < 1:
      raise ValueError(f"length must be >= 1 (room for EOS), got {length}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = np.full((len(texts), length), self.pad_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    truncated = 0
    for row, pieces in enumerate(self._sp.encode(texts)):
      if len(pieces) > length - 1:
        truncated += 1
        pieces = pieces[:length - 1]
      tokens = list(pieces) + [self.eos_id]
      ids[row, :len(tokens)] = tokens
      mask[row, :len(tokens)] = 1
    return ids, mask, truncated


def wan_prompt_clean(text: str) -> str:
  """Wan's prompt cleaning (diffusers `prompt_clean`): ftfy if installed, HTML unescape, spaces.

  Apply it before `encode` to get the token ids Wan's pipeline would feed the encoder.
  """
  try:
    import ftfy  # pylint: disable=g-import-not-at-top
    text = ftfy.fix_text(text)
  except ImportError:   # diffusers skips it too when ftfy is missing
    pass
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()
