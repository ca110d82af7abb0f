"""umT5 text encoder in JAX (Wan's text conditioning), loaded from a Hugging Face directory.

  from unity_jax import umt5
  encoder = umt5.load("Wan2.1-T2V-1.3B-Diffusers/text_encoder")        # optional mesh=
  tokenizer = umt5.Tokenizer("Wan2.1-T2V-1.3B-Diffusers/tokenizer/spiece.model")
  ids, mask, truncated = tokenizer.encode(["a cat on a mat"], length=512)
  hidden = encoder(ids, mask)                          # float32 [B, L, D], HF last_hidden_state
  text = umt5.wan_text_embeddings(hidden, mask, 512)   # padded rows zeroed, as Wan's pipeline

`model` holds the pure forward (params pytree + static config), `weights` the import from
safetensors (name mapping, coverage checks, sharded placement), `tokenizer` the SentencePiece
side. See docs/umt5.md.
"""

import jax.numpy as jnp

from unity_jax.umt5.model import (ConfigError, UMT5Config, config_from_hf, encode, encode_jit,
                                  init_params, param_shapes, relative_position_buckets,
                                  wan_text_embeddings)
from unity_jax.umt5.tokenizer import Tokenizer, wan_prompt_clean
from unity_jax.umt5.weights import load_params, shardings
from unity_jax.wan.safetensors_io import CheckpointError


class Encoder:
  """A loaded umT5 encoder: `encoder(token_ids, mask) -> float32 [B, L, D]`.

  Attributes: `params` (pytree, see model.py), `config` (UMT5Config). Calls go through one
  jitted function, compiled once per (B, L).
  """

  def __init__(self, params, config: UMT5Config):
    self.params = params
    self.config = config

  def __call__(self, token_ids, mask):
    """token_ids int [B, L], mask {0, 1} [B, L] -> float32 [B, L, D] (padded rows not zeroed)."""
    token_ids = jnp.asarray(token_ids, jnp.int32)
    mask = jnp.asarray(mask, jnp.int32)
    if token_ids.shape != mask.shape or token_ids.ndim != 2:
      raise ValueError(f"token_ids {token_ids.shape} and mask {mask.shape} must both be [B, L]")
    return encode_jit(self.params, self.config, token_ids, mask)


def load(model_dir: str, mesh=None, axis: str = "fsdp", dtype=jnp.float32,
         allow_decoder: bool = False) -> Encoder:
  """An Encoder from a Hugging Face UMT5EncoderModel directory (see weights.load_params)."""
  params, config = load_params(model_dir, mesh=mesh, axis=axis, dtype=dtype,
                               allow_decoder=allow_decoder)
  return Encoder(params, config)


__all__ = ["CheckpointError", "ConfigError", "Encoder", "Tokenizer", "UMT5Config", "config_from_hf",
           "encode", "encode_jit", "init_params", "load", "load_params", "param_shapes",
           "relative_position_buckets", "shardings", "wan_prompt_clean", "wan_text_embeddings"]
