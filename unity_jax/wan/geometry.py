"""Geometry of a diffusers `WanTransformer3DModel` checkpoint, read from its config.json alone.

Pure Python (no jax import), so `config.validate()` can compare a checkpoint with the unity_jax
config before anything compiles and before distributed set-up.
"""

import json
import os

# What a checkpoint must say for the UnityDiT's RGB path to be exactly the Wan forward:
# field -> (required value, why). I2V checkpoints (image_dim / added_kv_proj_dim) add image
# cross-attention that the UnityDiT does not have.
REQUIRED = {
    "cross_attn_norm": (True, "the UnityDiT always normalises before cross-attention"),
    "qk_norm": ("rms_norm_across_heads", "the UnityDiT's qk-norm is RMS across all heads"),
    "eps": (1e-6, "the UnityDiT's norms use eps 1e-6"),
    "image_dim": (None, "image-conditioned (I2V) checkpoints are not supported"),
    "added_kv_proj_dim": (None, "image-conditioned (I2V) checkpoints are not supported"),
    "pos_embed_seq_len": (None, "learned image position embeddings are not supported"),
}


def read_config(directory: str) -> dict:
  """The checkpoint's config.json as a dict."""
  with open(os.path.join(directory, "config.json")) as f:
    return json.load(f)


def unsupported(checkpoint: dict) -> str | None:
  """Why a checkpoint config cannot be imported, or None."""
  for field, (value, why) in REQUIRED.items():
    found = checkpoint.get(field, value)
    if found != value:
      return f"checkpoint config.json has {field}={found!r}, expected {value!r}: {why}"
  if checkpoint.get("out_channels") not in (None, checkpoint.get("in_channels")):
    return (f"checkpoint config.json has out_channels={checkpoint.get('out_channels')} != "
            f"in_channels={checkpoint.get('in_channels')}")
  return None


def model_geometry(checkpoint: dict) -> dict:
  """The unity_jax `config.model` / `config.codec` values a checkpoint config implies."""
  heads, head_dim = checkpoint["num_attention_heads"], checkpoint["attention_head_dim"]
  return {
      "model.dim": heads * head_dim, "model.num_heads": heads,
      "model.num_layers": checkpoint["num_layers"], "model.ffn_dim": checkpoint["ffn_dim"],
      "model.patch_size": tuple(checkpoint.get("patch_size", (1, 2, 2))),
      "model.freq_dim": checkpoint.get("freq_dim", 256),
      "model.text_dim": checkpoint.get("text_dim", 4096),
      "codec.latent_channels": checkpoint["in_channels"],
  }


def mismatch(checkpoint: dict, config) -> str | None:
  """Why `config` cannot hold the checkpoint's weights (naming both values), or None.

  The text encoder is not checked: Wan was trained on umT5 embeddings
  (`model.text_encoder="precomputed"`), but the builtin encoder with the checkpoint's text_dim
  also fits the weights (its text projection then sees new features: a CPU smoke mode).
  """
  problem = unsupported(checkpoint)
  if problem:
    return problem
  wrong = []
  for key, expected in model_geometry(checkpoint).items():
    group, name = key.split(".")
    found = config[group][name]
    found = tuple(found) if isinstance(expected, tuple) else found
    if found != expected:
      wrong.append(f"config.{key}={found!r} but the checkpoint has {expected!r}")
  if config.model.prediction != "velocity":
    wrong.append(f"config.model.prediction={config.model.prediction!r} but Wan checkpoints "
                 "predict the flow velocity ('velocity')")
  if config.model.rope_theta != 10000.0:
    wrong.append(f"config.model.rope_theta={config.model.rope_theta} but Wan's RoPE uses 10000")
  if not config.model.qk_norm:
    wrong.append("config.model.qk_norm=False but Wan checkpoints have RMS qk-norm")
  if wrong:
    return "; ".join(wrong) + " (wan.config_from_diffusers(DIR) builds a matching config)"
  return None


def vae_mismatch(vae: dict, codec) -> str | None:
  """Why an `AutoencoderKLWan` config.json does not fit `config.codec`, or None."""
  implied = {"latent_channels": vae.get("z_dim"),
             "spatial_stride": vae.get("scale_factor_spatial", 8),
             "temporal_stride": vae.get("scale_factor_temporal", 4)}
  wrong = [f"config.codec.{key}={codec[key]!r} but the VAE has {value!r}"
           for key, value in implied.items() if codec[key] != value]
  generation = "wan2.2_vae" if vae.get("is_residual") else "wan2.1_vae"
  if codec.name != generation:
    wrong.append(f"config.codec.name={codec.name!r} but the VAE is a {generation}")
  return "; ".join(wrong) or None
