"""Import and export of diffusers' WanTransformer3DModel checkpoints as UnityDiT's RGB path.

UnityDiT's RGB path is Wan's transformer (see `names.py` for the tensor-by-tensor mapping):
the same timestep sinusoid, time MLP and 6-way AdaLN projection, per-block AdaLN tables,
RMS qk-norm across heads, affine cross-attention pre-norm, tanh-GELU FFN, 3D RoPE over
interleaved pairs, and a final AdaLN + linear head. What UnityVideo adds (`modality_*`
parameters) is initialised so that the imported model starts as Wan (`_init_extension`).

Memory. Tensors are read one at a time from memory-mapped safetensors and each leaf is built
with `jax.make_array_from_callback`, whose callback reads only the slice its device holds. A
scanned leaf [L, ...] is filled one layer at a time into a donated device buffer, so the host
stages at most one layer's slices, never the model. Export gathers one tensor (one layer of a
scanned leaf) at a time and streams it into its shard file; under multi-process every process
joins the gathers and process 0 writes.
"""

import functools
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from unity_jax import config as config_lib
from unity_jax import model as model_lib
from unity_jax.parallel import mesh as mesh_lib
from unity_jax.wan import geometry, names
from unity_jax.wan.safetensors_io import (DTYPES, CheckpointError, SafetensorsCheckpoint,
                                          dtype_name, write_safetensors_streaming)

EXTENSION_FILE = "unity_extension.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
CLASS_NAME = "WanTransformer3DModel"
CODEC_BY_CHANNELS = {16: "wan2.1_vae", 48: "wan2.2_vae"}
EXTENSION_PREFIXES = ("modality_", "text_encoder/")
WAN_ROPE_THETA = 10000.0   # WanRotaryPosEmbed's theta (not a config.json key)


def check_supported(checkpoint_config: dict) -> None:
  """Raises CheckpointError naming the config.json field a UnityDiT cannot represent."""
  name = checkpoint_config.get("_class_name", CLASS_NAME)
  if name != CLASS_NAME:
    raise CheckpointError(f"config.json _class_name={name!r}: expected {CLASS_NAME!r}")
  problem = geometry.unsupported(checkpoint_config)
  if problem:
    raise CheckpointError(problem)
  in_channels = checkpoint_config.get("in_channels")
  if in_channels not in CODEC_BY_CHANNELS:
    raise CheckpointError(f"checkpoint config.json has in_channels={in_channels!r}, expected "
                          f"one of {sorted(CODEC_BY_CHANNELS)} (Wan2.1 / Wan2.2 VAE latents)")


def check_geometry(checkpoint_config: dict, config) -> None:
  """Raises CheckpointError when `config` cannot hold the checkpoint, naming both values
  (the rules of `geometry.mismatch`, which `config.validate` also applies)."""
  check_supported(checkpoint_config)
  problem = geometry.mismatch(checkpoint_config, config)
  if problem:
    raise CheckpointError(problem)


def _dtype_record(checkpoint) -> dict:
  """Stored dtypes, compactly: the common one plus (pattern, dtype) exceptions, where a
  pattern 'blocks.*.x' stands for every layer when all layers agree."""
  by_pattern = {}
  for key in checkpoint.keys():
    parts = key.split(".")
    pattern = ".".join(["blocks", "*"] + parts[2:]) if parts[0] == "blocks" else key
    by_pattern.setdefault(pattern, {})[key] = checkpoint.dtype(key)
  counts = {}
  for dtypes in by_pattern.values():
    for dtype in dtypes.values():
      counts[dtype] = counts.get(dtype, 0) + 1
  default = max(counts, key=counts.get)
  overrides = []
  for pattern, dtypes in sorted(by_pattern.items()):
    if len(set(dtypes.values())) == 1:
      if next(iter(dtypes.values())) != default:
        overrides.append((pattern, next(iter(dtypes.values()))))
    else:
      overrides.extend((k, d) for k, d in sorted(dtypes.items()) if d != default)
  return dict(dtype=default, dtype_overrides=tuple(overrides))


def config_from_diffusers(transformer_dir: str, base=None) -> ml_collections.ConfigDict:
  """A unity_jax config with the geometry of a diffusers WanTransformer3DModel directory.

  Starts from `base` (default `config_lib.base_config()`) and sets the model geometry,
  precomputed text embeddings of the checkpoint's text_dim, the Wan VAE codec of its
  in_channels, the residual switcher (so the modality stream starts as Wan), the presets'
  10x learning rate on `modality_*` parameters, and `config.wan`: what export needs to write
  the checkpoint back (stored dtypes, rope_max_seq_len, diffusers version).
  """
  checkpoint = SafetensorsCheckpoint(transformer_dir, exclude=(EXTENSION_FILE,))
  check_supported(checkpoint.config)
  config = config_lib.base_config() if base is None else ml_collections.ConfigDict(base)
  implied = geometry.model_geometry(checkpoint.config)
  config.model.update({k.split(".")[1]: v for k, v in implied.items() if k.startswith("model")})
  config.model.update(text_encoder="precomputed", qk_norm=True, rope_theta=WAN_ROPE_THETA,
                      prediction="velocity", switcher="adaptive", switcher_residual=True)
  codec = CODEC_BY_CHANNELS[implied["codec.latent_channels"]]
  config.codec = ml_collections.ConfigDict(config_lib.WAN_CODECS[codec])
  config.train.lr_multipliers = (("modality_*", 10.0),)
  config.wan = ml_collections.ConfigDict(dict(
      rope_max_seq_len=checkpoint.config.get("rope_max_seq_len", 1024),
      diffusers_version=checkpoint.config.get("_diffusers_version", "0.33.0"),
      **_dtype_record(checkpoint)))
  if "init" in config and "transformer" in config.init:
    config.init.transformer = transformer_dir
  return config


# ----------------------------------------------------------------------------------- import


def abstract_params(config) -> dict:
  """{'a/b/c': ShapeDtypeStruct} of every UnityDiT parameter (no allocation)."""
  shapes = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))
  return traverse_util.flatten_dict(shapes, sep="/")


def param_shardings(config, mesh=None) -> dict:
  """{'a/b/c': Sharding}: the trainer's NamedShardings on `mesh`, or the first device."""
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {path: device for path in abstract_params(config)}
  logical = model_lib.logical_param_axes(config)
  shardings = mesh_lib.logical_to_sharding(logical, mesh, config)
  return traverse_util.flatten_dict(shardings, sep="/")


def _full_index(index, shape):
  """Normalises a callback index to one slice per axis."""
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  return index


def _layer_sharding(sharding):
  """The sharding of one layer of a scanned leaf (its leading axis dropped)."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
  return sharding


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked, layer, i):
  return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), i, 0)


def _load_leaf(checkpoint, tensor_names, layout, stacked, abstract, sharding, patch):
  """One parameter as a jax.Array with `sharding`, each device reading only its slice."""
  dtype = abstract.dtype

  def read(name, shape):
    return lambda index: names.read_ours(checkpoint, name, layout, _full_index(index, shape),
                                         patch).astype(dtype)

  if not stacked:
    return jax.make_array_from_callback(abstract.shape, sharding,
                                        read(tensor_names[0], abstract.shape))
  layer_shape, layer_sharding = abstract.shape[1:], _layer_sharding(sharding)
  leaf = jax.jit(lambda: jnp.zeros(abstract.shape, dtype), out_shardings=sharding)()
  for i, name in enumerate(tensor_names):
    layer = jax.make_array_from_callback(layer_shape, layer_sharding, read(name, layer_shape))
    leaf = _set_layer(leaf, layer, i)
  return leaf


def _check_tensors(checkpoint, expected: dict, what: str) -> None:
  """Every expected tensor present with its shape, and no other: {name: stored shape}."""
  found = set(checkpoint.keys())
  missing = sorted(set(expected) - found)
  if missing:
    raise CheckpointError(f"{what}: missing tensor {missing[0]!r} (expected shape "
                          f"{expected[missing[0]]}; {len(missing)} missing in all)")
  unexpected = sorted(found - set(expected))
  if unexpected:
    raise CheckpointError(f"{what}: unexpected tensor {unexpected[0]!r} of shape "
                          f"{checkpoint.shape(unexpected[0])} ({len(unexpected)} unexpected in "
                          "all; UnityDiT has no parameter it maps to)")
  for name, shape in expected.items():
    if checkpoint.shape(name) != tuple(shape):
      raise CheckpointError(f"{what}: tensor {name!r} has shape {checkpoint.shape(name)}, "
                            f"expected {tuple(shape)}")


def expected_tensors(config, abstract=None) -> dict:
  """{diffusers name: (unity_jax path, layout, stacked, stored shape)} of the RGB path."""
  abstract = abstract_params(config) if abstract is None else abstract
  patch = tuple(config.model.patch_size)
  out = {}
  for path, tensor_names, layout, stacked in names.rgb_entries(config.model.num_layers,
                                                               config.model.scan_layers):
    shape = abstract[path].shape[1:] if stacked else abstract[path].shape
    for name in tensor_names:
      out[name] = (path, layout, stacked, names.stored_shape(layout, shape, patch))
  return out


def load_transformer(transformer_dir: str, config, mesh=None, rng=None) -> dict:
  """UnityDiT params with the RGB path read from a diffusers WanTransformer3DModel directory.

  Args:
    transformer_dir: holds config.json and diffusion_pytorch_model*.safetensors (+ index), and
      optionally `unity_extension.safetensors` (the `modality_*` parameters an export wrote).
    config: a unity_jax config matching the checkpoint (`check_geometry`).
    mesh: place every leaf with the trainer's sharding on this mesh (None: first device).
    rng: key for the extension's random initialisation (default: key(config.seed)).
  Returns:
    the params pytree of `model_lib.init_params(config, ...)`, in config.model.param_dtype.
  """
  checkpoint = SafetensorsCheckpoint(transformer_dir, exclude=(EXTENSION_FILE,))
  check_geometry(checkpoint.config, config)
  abstract = abstract_params(config)
  shardings = param_shardings(config, mesh)
  expected = expected_tensors(config, abstract)
  _check_tensors(checkpoint, {k: v[3] for k, v in expected.items()}, transformer_dir)
  patch = tuple(config.model.patch_size)
  flat = {}
  for path, tensor_names, layout, stacked in names.rgb_entries(config.model.num_layers,
                                                               config.model.scan_layers):
    flat[path] = _load_leaf(checkpoint, tensor_names, layout, stacked, abstract[path],
                            shardings[path], patch)
  # Not in Wan: UnityVideo's modality_* parameters and, in the CPU smoke mode with
  # model.text_encoder="builtin", the byte-level text encoder under text_encoder/.
  extension = sorted(set(abstract) - set(flat))
  outside = [p for p in extension if not p.startswith(EXTENSION_PREFIXES)]
  if outside:
    raise CheckpointError(f"config has parameters outside Wan's RGB path that are neither "
                          f"{' nor '.join(EXTENSION_PREFIXES)}: {outside[:3]}")
  ext_path = os.path.join(transformer_dir, EXTENSION_FILE)
  if os.path.isfile(ext_path):
    side = SafetensorsCheckpoint(transformer_dir, files=[EXTENSION_FILE])
    _check_tensors(side, {p: abstract[p].shape for p in extension}, ext_path)
    for p in extension:
      flat[p] = _load_leaf(side, [p], "same", False, abstract[p], shardings[p], patch)
  else:
    rng = jax.random.key(config.seed) if rng is None else rng
    flat.update(_init_extension(config, flat, extension, abstract, shardings, rng))
  return traverse_util.unflatten_dict(flat, sep="/")


def _init_extension(config, rgb, extension, abstract, shardings, rng) -> dict:
  """The parameters Wan lacks, for an imported model (docs/wan.md, "Added parameters").

  Model initialisers (also for the builtin text encoder, when configured), run under jit
  with only these outputs, so nothing else is materialised: modality_embed normal(0.02),
  modality_switcher fc1 Xavier / fc2 zero (with switcher_residual), modality_zero_linear
  zero. Copies of the imported RGB path:
  modality_head (every head) = rgb_head, modality_patch_embed = patch_embed.
  """
  def init(key):
    flat = traverse_util.flatten_dict(model_lib.init_params(config, key), sep="/")
    return {p: flat[p] for p in extension}

  out = jax.jit(init, out_shardings={p: shardings[p] for p in extension})(rng)
  copies = {"modality_head/": "rgb_head/", "modality_patch_embed/": "patch_embed/"}
  for path in extension:
    for prefix, source in copies.items():
      if path.startswith(prefix):
        copy = jax.jit(lambda x, shape=abstract[path].shape: jnp.broadcast_to(x, shape),
                       out_shardings=shardings[path])
        out[path] = copy(rgb[source + path[len(prefix):]])
  return out


# ----------------------------------------------------------------------------------- forward


@functools.partial(jax.jit, static_argnums=0)
def _apply_jit(model, params, latents, timestep, text):
  return _apply(model, params, latents, timestep, text)


def wan_time_model(config):
  """The UnityDiT of `config` taking timesteps in Wan's 0..1000 units (same parameters).

  UnityDiT embeds t·1000 for t in [0, 1]; T/1000·1000 differs from T by up to an ulp of T
  (6e-5 near 1000) for some float32 T, which the fastest sinusoid frequency carries to the
  output, so Wan's timesteps are embedded as they are.
  """
  return model_lib.build_model(config).clone(timestep_scale=1.0)


def _apply(model, params, latents, timestep, text):
  rgb = jnp.moveaxis(jnp.asarray(latents, jnp.float32), 1, -1)          # [B, F, H, W, C]
  t = jnp.asarray(timestep, jnp.float32)
  text = jnp.asarray(text)
  # Wan's cross-attention has no text mask: padded embeddings are attended, as here.
  caption = {"embedding": text, "mask": jnp.ones(text.shape[:2], bool)}
  velocity, _ = model.apply({"params": params}, rgb, t, caption)
  return jnp.moveaxis(velocity, -1, 1)


def rgb_apply(params, config, latents, timestep, text):
  """The RGB-only UnityDiT forward in diffusers' layout, as a differentiable jax function.

  latents: [B, C, F, H, W]; timestep: [B] in Wan's 0..1000; text: [B, L, text_dim]
  (umT5 embeddings, padded rows included). Returns float32 [B, C, F, H, W].
  """
  return _apply(wan_time_model(config), params, latents, timestep, text)


def rgb_forward(params, config, latents, timestep, text) -> np.ndarray:
  """`rgb_apply` jitted, numpy out: what WanTransformer3DModel(...).sample returns."""
  out = _apply_jit(wan_time_model(config), params, latents, timestep, text)
  return np.asarray(jax.device_get(out), np.float32)


# ----------------------------------------------------------------------------------- export


def _export_dtypes(config, dtype):
  """name -> safetensors dtype name for the diffusers tensors."""
  if dtype is not None:
    if isinstance(dtype, str) and dtype.upper() in DTYPES:
      fixed = dtype.upper()
    else:
      fixed = dtype_name(jnp.dtype(dtype))
    return lambda name: fixed
  wan = config.get("wan", None)
  if wan is None:
    return lambda name: "F32"
  exact = dict(wan.dtype_overrides)

  def lookup(name):
    parts = name.split(".")
    pattern = ".".join(["blocks", "*"] + parts[2:]) if parts[0] == "blocks" else name
    return exact.get(name, exact.get(pattern, wan.dtype))
  return lookup


@jax.jit
def _take(leaf, i):
  return jax.lax.dynamic_index_in_dim(leaf, i, keepdims=False)


def _gather(leaf, layer=None) -> np.ndarray:
  """One leaf (or one layer of a scanned leaf) on the host of every process."""
  x = leaf if layer is None else _take(leaf, layer)
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def diffusers_config(config) -> dict:
  """The config.json of the WanTransformer3DModel that holds `config`'s RGB path."""
  m = config.model
  wan = config.get("wan", None)
  return {
      "_class_name": CLASS_NAME,
      "_diffusers_version": wan.diffusers_version if wan is not None else "0.33.0",
      "patch_size": list(m.patch_size), "num_attention_heads": m.num_heads,
      "attention_head_dim": m.dim // m.num_heads,
      "in_channels": config.codec.latent_channels, "out_channels": config.codec.latent_channels,
      "text_dim": m.text_dim, "freq_dim": m.freq_dim, "ffn_dim": m.ffn_dim,
      "num_layers": m.num_layers, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
      "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None,
      "rope_max_seq_len": wan.rope_max_seq_len if wan is not None else 1024,
      "pos_embed_seq_len": None,
  }


def _layer_of(name):
  parts = name.split(".")
  return int(parts[1]) if parts[0] == "blocks" else -1


def export_transformer(params, config, out_dir: str, dtype=None,
                       max_shard_size: int = 5 * 2**30) -> None:
  """Writes a directory that `WanTransformer3DModel.from_pretrained(out_dir)` loads.

  config.json, diffusion_pytorch_model-0000k-of-0000n.safetensors shards of at most
  `max_shard_size` bytes (a tensor larger than that gets its own shard) and their index, plus
  `unity_extension.safetensors` with the parameters Wan lacks (`modality_*`, and the builtin
  text encoder if configured; float32, named by their unity_jax paths) for `load_transformer`
  to read back. dtype: None keeps each tensor's stored dtype from `config.wan` (float32
  without it), or one dtype for every diffusers tensor.
  The directory appears atomically (written under a temporary name, then renamed).
  """
  check_geometry(diffusers_config(config), config)
  flat = traverse_util.flatten_dict(params, sep="/")
  patch = tuple(config.model.patch_size)
  abstract = {p: jax.ShapeDtypeStruct(x.shape, x.dtype) for p, x in flat.items()}
  expected = expected_tensors(config, abstract)
  stored_dtype = _export_dtypes(config, dtype)
  specs = {name: (stored_dtype(name), shape) for name, (_, _, _, shape) in expected.items()}

  def produce(name):
    path, layout, stacked, _ = expected[name]
    layer = _layer_of(name) if stacked else None
    return names.from_ours(layout, _gather(flat[path], layer), patch)

  order = sorted(specs, key=lambda n: (_layer_of(n), n))
  shards, size = [[]], 0
  for name in order:
    nbytes = int(np.prod(specs[name][1])) * np.dtype(DTYPES[specs[name][0]]).itemsize
    if shards[-1] and size + nbytes > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += nbytes
  files = [f"diffusion_pytorch_model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
           for k in range(len(shards))]
  extension = sorted(set(flat) - {path for path, *_ in expected.values()})
  writer = jax.process_index() == 0
  tmp = None
  if writer:
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    for file, shard in zip(files, shards):
      if writer:
        write_safetensors_streaming(os.path.join(tmp, file), {n: specs[n] for n in shard},
                                    produce, metadata={"format": "pt"})
      else:
        for name in sorted(shard):   # the same gathers, in the writer's order
          produce(name)
    ext_specs = {p: ("F32", flat[p].shape) for p in extension}
    produce_ext = lambda p: _gather(flat[p]).astype(np.float32)
    if writer:
      write_safetensors_streaming(os.path.join(tmp, EXTENSION_FILE), ext_specs, produce_ext,
                                  metadata={"format": "unity_jax"})
      total = sum(int(np.prod(s)) * np.dtype(DTYPES[d]).itemsize for d, s in specs.values())
      index = {"metadata": {"total_size": total},
               "weight_map": {n: f for f, shard in zip(files, shards) for n in sorted(shard)}}
      with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
      with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(diffusers_config(config), f, indent=2, sort_keys=True)
      _replace_dir(tmp, out_dir)
      tmp = None
    else:
      for p in extension:
        produce_ext(p)
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("unity_jax.wan.export_transformer")


def _replace_dir(src, dst):
  """Renames the finished directory `src` to `dst`, replacing an existing `dst`."""
  if os.path.exists(dst):
    old = dst.rstrip("/") + f".old-{os.getpid()}"
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)
  else:
    os.replace(src, dst)

