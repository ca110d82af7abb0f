"""Wan2.1 / Wan2.2 interoperability: diffusers checkpoints in and out of unity_jax (docs/wan.md).

Transformer: `config_from_diffusers`, `load_transformer`, `rgb_forward`, `export_transformer`
import a diffusers WanTransformer3DModel as UnityDiT's RGB path and write it back.

VAE: `load_vae(dir)` imports a diffusers AutoencoderKLWan (Wan2.1 or Wan2.2) as a
`WanVAECodec` (unity_jax/wan/vae.py, vae_weights.py, vae_codec.py).
"""

from unity_jax.wan.safetensors_io import CheckpointError, SafetensorsCheckpoint
from unity_jax.wan.transformer import (check_geometry, config_from_diffusers, export_transformer,
                                       load_transformer, rgb_apply, rgb_forward)
from unity_jax.wan.vae_codec import WanVAECodec, load_vae
