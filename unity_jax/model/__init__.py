"""Model construction from config: `build_model`, `dummy_inputs`, `init_params`."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from unity_jax import constants
from unity_jax.model.dit import UnityDiT

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config) -> UnityDiT:
  """The UnityDiT described by `config.model` and `config.codec`."""
  m = config.model
  return UnityDiT(
      dim=m.dim, num_layers=m.num_layers, num_heads=m.num_heads, ffn_dim=m.ffn_dim,
      latent_channels=config.codec.latent_channels, num_modalities=len(constants.MODALITIES),
      patch_size=tuple(m.patch_size), freq_dim=m.freq_dim, text_encoder=m.text_encoder,
      text_dim=m.text_dim, text_layers=m.text_layers, text_heads=m.text_heads,
      text_max_len=m.text_max_len, switcher=m.switcher,
      # .get: configs written before the switch existed keep the original (non-residual) form.
      switcher_residual=bool(m.get("switcher_residual", False)), modality_embed=m.modality_embed,
      head_mode=m.head_mode, prediction=m.prediction,
      data_prediction_min_t=m.data_prediction_min_t, qk_norm=m.qk_norm, rope_theta=m.rope_theta,
      attention=m.attention, attention_chunk=m.attention_chunk, remat=m.remat,
      scan_layers=m.scan_layers, dtype=_DTYPES[m.dtype], param_dtype=_DTYPES[m.param_dtype])


def latent_grid(config) -> tuple[int, int, int, int]:
  """(F', H', W', C) of one stream's latents for the configured clip size."""
  d, c = config.data, config.codec
  return (1 + (d.num_frames - 1) // c.temporal_stride, d.height // c.spatial_stride,
          d.width // c.spatial_stride, c.latent_channels)


def _text(config, lead_shape, length):
  if config.model.text_encoder == "builtin":
    return {"tokens": jnp.zeros((*lead_shape, length), jnp.int32),
            "mask": jnp.ones((*lead_shape, length), bool)}
  return {"embedding": jnp.zeros((*lead_shape, length, config.model.text_dim), jnp.float32),
          "mask": jnp.ones((*lead_shape, length), bool)}


def dummy_inputs(config, batch_size: int, num_streams: int | None = None) -> dict:
  """Model keyword inputs of the configured shapes (zeros), for init and shape checks."""
  streams = config.model.num_modality_streams if num_streams is None else num_streams
  grid = latent_grid(config)
  inputs = dict(rgb=jnp.zeros((batch_size, *grid)), t_rgb=jnp.zeros((batch_size,)),
                caption=_text(config, (batch_size,), config.data.caption_len))
  if streams:
    inputs.update(modality=jnp.zeros((batch_size, streams, *grid)),
                  modality_id=jnp.zeros((batch_size, streams), jnp.int32),
                  t_modality=jnp.zeros((batch_size, streams)),
                  prompt=_text(config, (batch_size, streams), config.data.prompt_len))
  return inputs


def init_params(config, rng, batch_size: int = 1):
  """Initial parameters (a plain pytree, logical-partitioning boxes removed).

  For `model.modality_embed="separate"` the modality patch embedding starts as a copy of the
  RGB one (the release's initialisation), followed by its zero-initialised linear.
  """
  model = build_model(config)
  params = nn.unbox(model.init(rng, **dummy_inputs(config, batch_size)))["params"]
  if config.model.modality_embed == "separate":
    params = {**params, "modality_patch_embed": params["patch_embed"]}
  return params


def logical_param_axes(config):
  """Logical axis names of every parameter: a pytree of PartitionSpecs like the params."""
  model = build_model(config)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config, 1)))
  return nn.get_partition_spec(boxed)["params"]
