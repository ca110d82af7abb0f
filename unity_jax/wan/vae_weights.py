"""Importing a diffusers `AutoencoderKLWan` directory (config.json + safetensors) as JAX params.

The geometry comes from config.json (`vae_config`); the expected tensors come from
`vae.param_shapes(config)`, so the import is a coverage check as well as a conversion: a tensor
the architecture needs but the checkpoint lacks, a tensor the checkpoint has but nothing uses,
or a shape that differs fails with a `CheckpointError` naming the key with the expected and
found shapes. Tensors are read one at a time (SafetensorsCheckpoint memory-maps the files).

Name mapping (the JAX path is the diffusers module path with '/' for '.'):
  <module>.weight  [out, in, kt, kh, kw] (Conv3d) -> <module>/kernel [kt, kh, kw, in, out]
  <module>.weight  [out, in, kh, kw]     (Conv2d) -> <module>/kernel [kh, kw, in, out]
  <module>.bias    [out]                           -> <module>/bias   [out]
  <norm>.gamma     [C, 1, 1, 1] or [C, 1, 1]       -> <norm>/gamma    [C]
"""

import json
import os

import jax
import numpy as np

from unity_jax.wan import vae as vae_lib
from unity_jax.wan.safetensors_io import (CheckpointError, SafetensorsCheckpoint,
                                          write_safetensors)

_LEAF_TO_TORCH = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}


def vae_config(raw: dict, where: str = "config.json") -> vae_lib.VAEConfig:
  """VAEConfig from a diffusers AutoencoderKLWan config dict (defaults as the diffusers class)."""
  def get(name, default):
    value = raw.get(name, default)
    return default if value is None else value
  if get("attn_scales", []):
    raise CheckpointError(f"{where}: attn_scales={raw['attn_scales']} is not supported (every "
                          "released Wan VAE has no attention in the down/up blocks)")
  base_dim = int(get("base_dim", 96))
  z_dim = int(get("z_dim", 16))
  cfg = vae_lib.VAEConfig(
      base_dim=base_dim, decoder_base_dim=int(get("decoder_base_dim", base_dim)), z_dim=z_dim,
      dim_mult=tuple(int(m) for m in get("dim_mult", [1, 2, 4, 4])),
      num_res_blocks=int(get("num_res_blocks", 2)),
      temperal_downsample=tuple(bool(t) for t in get("temperal_downsample",
                                                     [False, True, True])),
      is_residual=bool(get("is_residual", False)),
      in_channels=int(get("in_channels", 3)), out_channels=int(get("out_channels", 3)),
      patch_size=int(get("patch_size", 1)),
      latents_mean=tuple(float(v) for v in get("latents_mean", [])),
      latents_std=tuple(float(v) for v in get("latents_std", [])))
  if len(cfg.temperal_downsample) != len(cfg.dim_mult) - 1:
    raise CheckpointError(f"{where}: temperal_downsample has {len(cfg.temperal_downsample)} "
                          f"entries; expected len(dim_mult) - 1 = {len(cfg.dim_mult) - 1}")
  for name in ("latents_mean", "latents_std"):
    if len(getattr(cfg, name)) != z_dim:
      raise CheckpointError(f"{where}: {name} has {len(getattr(cfg, name))} entries; expected "
                            f"z_dim = {z_dim}")
  if cfg.in_channels != 3 * cfg.patch_size ** 2 or cfg.out_channels != cfg.in_channels:
    raise CheckpointError(f"{where}: in_channels={cfg.in_channels}, out_channels="
                          f"{cfg.out_channels} with patch_size={cfg.patch_size}; expected RGB "
                          f"patchified, {3 * cfg.patch_size ** 2} channels each")
  for name, value in (("scale_factor_spatial", cfg.spatial_stride),
                      ("scale_factor_temporal", cfg.temporal_stride)):
    if raw.get(name) is not None and int(raw[name]) != value:
      raise CheckpointError(f"{where}: {name}={raw[name]} but the architecture (dim_mult, "
                            f"temperal_downsample, patch_size) gives {value}")
  if cfg.temporal_stride != vae_lib.ENCODE_CHUNK:
    raise CheckpointError(f"{where}: temporal stride {cfg.temporal_stride}; the causal chunking "
                          f"(first frame, then groups of {vae_lib.ENCODE_CHUNK}) needs "
                          f"{vae_lib.ENCODE_CHUNK} (two True entries in temperal_downsample)")
  return cfg


def torch_name_and_shape(path: tuple, shape: tuple) -> tuple[str, tuple]:
  """(diffusers key, diffusers shape) of the JAX leaf at `path` with JAX `shape`."""
  name = ".".join(path[:-1] + (_LEAF_TO_TORCH[path[-1]],))
  if path[-1] == "kernel":
    shape = (shape[-1], shape[-2]) + tuple(shape[:-2])
  elif path[-1] == "gamma":
    shape = tuple(shape) + (1,) * (2 if "attentions" in path else 3)
  return name, tuple(shape)


def _to_jax(array: np.ndarray, leaf: str) -> np.ndarray:
  array = np.asarray(array, np.float32)
  if leaf == "kernel":                 # [out, in, *spatial] -> [*spatial, in, out]
    return np.ascontiguousarray(np.moveaxis(array, (0, 1), (-1, -2)))
  if leaf == "gamma":
    return array.reshape(-1)
  return array


def expected_tensors(cfg: vae_lib.VAEConfig) -> dict[str, tuple[tuple, tuple]]:
  """{diffusers key: (JAX path, diffusers shape)} of every tensor `cfg` needs."""
  flat, _ = jax.tree_util.tree_flatten_with_path(vae_lib.param_shapes(cfg),
                                                 is_leaf=vae_lib.is_shape_leaf)
  out = {}
  for key_path, shape in flat:
    path = tuple(k.key for k in key_path)
    name, torch_shape = torch_name_and_shape(path, shape)
    out[name] = (path, torch_shape)
  return out


def load_params(directory: str) -> tuple[vae_lib.VAEConfig, dict]:
  """(VAEConfig, params as float32 numpy arrays) of a diffusers AutoencoderKLWan directory."""
  ckpt = SafetensorsCheckpoint(directory)
  cfg = vae_config(ckpt.config, f"{directory}/config.json")
  expected = expected_tensors(cfg)
  found = set(ckpt.keys())
  problems = [f"missing tensor {k!r} (expected shape {expected[k][1]})"
              for k in sorted(set(expected) - found)]
  problems += [f"unexpected tensor {k!r} (shape {ckpt.shape(k)}) that no {cfg.generation} "
               "parameter uses" for k in sorted(found - set(expected))]
  problems += [f"tensor {k!r} has shape {ckpt.shape(k)}; expected {expected[k][1]}"
               for k in sorted(found & set(expected)) if ckpt.shape(k) != expected[k][1]]
  if problems:
    more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
    raise CheckpointError(f"{directory}: the checkpoint does not match its config.json "
                          f"({cfg.generation}, z_dim {cfg.z_dim}): " + "; ".join(problems[:8])
                          + more)
  params = {}
  for name, (path, _) in expected.items():
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = _to_jax(ckpt.read(name), path[-1])
  return cfg, params


def to_diffusers(cfg: vae_lib.VAEConfig, params) -> dict[str, np.ndarray]:
  """{diffusers key: float32 array in the diffusers layout}: the inverse of the import."""
  out = {}
  for name, (path, torch_shape) in expected_tensors(cfg).items():
    array = params
    for k in path:
      array = array[k]
    array = np.asarray(array, np.float32)
    if path[-1] == "kernel":
      array = np.moveaxis(array, (-1, -2), (0, 1))
    out[name] = np.ascontiguousarray(array.reshape(torch_shape))
  return out


def save_vae(directory: str, cfg: vae_lib.VAEConfig, params) -> None:
  """Writes config.json + diffusion_pytorch_model.safetensors as diffusers' save_pretrained."""
  os.makedirs(directory, exist_ok=True)
  raw = {"_class_name": "AutoencoderKLWan", "base_dim": cfg.base_dim,
         "decoder_base_dim": cfg.decoder_base_dim, "z_dim": cfg.z_dim,
         "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks,
         "attn_scales": [], "temperal_downsample": list(cfg.temperal_downsample),
         "dropout": 0.0, "latents_mean": list(cfg.latents_mean),
         "latents_std": list(cfg.latents_std), "is_residual": cfg.is_residual,
         "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
         "patch_size": cfg.patch_size if cfg.patch_size > 1 else None,
         "scale_factor_temporal": cfg.temporal_stride,
         "scale_factor_spatial": cfg.spatial_stride}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(raw, f, indent=2)
  write_safetensors(os.path.join(directory, "diffusion_pytorch_model.safetensors"),
                    to_diffusers(cfg, params))
