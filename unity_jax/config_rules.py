"""Validation of unity_jax configs: every rule that would otherwise fail late (or silently).

`validate(config, num_devices=None)` runs before anything compiles and before distributed
set-up; a broken rule raises `ConfigError` naming the key, the value and the rule. Rules come
in three kinds: a domain per plain key (`DOMAINS`), rules across keys (geometry divisibility,
stages, the optimizer), and rules about files the config names (pretrained checkpoints and
precomputed stores: only their JSON metadata is read). `unity_jax.config` re-exports the
public names, so callers use `config_lib.validate`.
"""

import math
import os

from unity_jax import constants
from unity_jax.parallel import rules as rules_lib

ENUMS = {
    "model.text_encoder": ("builtin", "precomputed"),
    "model.switcher": ("adaptive", "token_add"),
    "model.modality_embed": ("shared", "separate"),
    "model.head_mode": ("per_modality", "shared"),
    "model.prediction": ("velocity", "data"),
    "model.attention": ("xla", "chunked", "cudnn", "splash"),
    "model.remat": ("none", "full", "dots", "save_attention_out"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "codec.name": ("pixel", "wan2.1_vae", "wan2.2_vae"),
    "objective.timestep_sampling": ("uniform", "logit_normal"),
    "objective.timesteps": ("independent", "shared"),
    "data.no_modality": ("rgb_only", "drop"),
    "text.encoder": ("umt5", "fake"),
    "precompute.dtype": ("float32", "bfloat16"),
}
MESH_AXES = ("data", "fsdp", "tensor", "context")


class ConfigError(ValueError):
  """A config value breaks a rule; the message names the key, the value and the rule."""


def resolved_data_source(config) -> str:
  """train.data_source with "auto" resolved: the grain pipeline when data.dir is set."""
  if config.train.data_source == "auto":
    return "openuni" if config.data.dir else "random"
  return config.train.data_source


def precomputed_root(config) -> str:
  """data.precomputed resolved: "" (off), a URL, or a path (relative ones under data.dir)."""
  path = config.data.precomputed
  if not path or "://" in path or os.path.isabs(path):
    return path
  return os.path.join(config.data.dir, path)


def _fail(key, value, rule):
  raise ConfigError(f"config.{key}={value!r}: {rule}")


def mesh_shape(config, num_devices: int) -> dict[str, int]:
  """Resolves config.mesh (one axis may be -1 = the remaining devices) into axis sizes."""
  sizes = {axis: int(config.mesh[axis]) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    _fail("mesh", dict(sizes), "at most one mesh axis may be -1")
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      _fail(f"mesh.{axis}", size, "mesh axis sizes must be positive (or -1 for the rest)")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      _fail("mesh", dict(sizes), f"fixed axes ({fixed}) must divide the {num_devices} devices")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    _fail("mesh", dict(sizes), f"the mesh product {math.prod(sizes.values())} must equal the "
          f"device count {num_devices}")
  return sizes


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Domains of the plain keys (rules between keys live in validate()); "key": (check, rule).
_AT_LEAST_1 = (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
_AT_LEAST_0 = (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0")
_POSITIVE = (lambda v: _is_real(v) and v > 0, "must be a finite number > 0")
_BOOL = (lambda v: isinstance(v, bool), "must be True or False")
DOMAINS = {
    "seed": (_is_int, "must be an integer"),
    **{f"model.{k}": _AT_LEAST_1 for k in (
        "dim", "num_layers", "num_heads", "ffn_dim", "text_dim", "text_heads", "text_max_len",
        "attention_chunk")},
    "model.text_layers": _AT_LEAST_0,
    "model.freq_dim": (lambda v: _is_int(v) and v >= 2 and v % 2 == 0,
                       "must be an even integer >= 2 (sin and cos halves)"),
    "model.patch_size": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(
        _is_int(p) and p >= 1 for p in v), "must be 3 integers >= 1 (frames, height, width)"),
    "model.rope_theta": _POSITIVE,
    "model.qk_norm": _BOOL,
    "model.scan_layers": _BOOL,
    "codec.spatial_stride": _AT_LEAST_1,
    "codec.temporal_stride": _AT_LEAST_1,
    "codec.latent_channels": _AT_LEAST_1,
    "data.dir": (lambda v: isinstance(v, str), "must be a path string ('' = no data directory)"),
    **{f"data.{k}": _AT_LEAST_1 for k in ("num_frames", "height", "width", "caption_len",
                                          "prompt_len")},
    "data.worker_count": (_AT_LEAST_0[0], "must be an integer >= 0 (0 = decode in-process)"),
    "data.prefetch_buffer": _AT_LEAST_0,
    "data.skip_corrupt": _BOOL,
    "data.flip_augment": _BOOL,
    "data.precomputed": (lambda v: isinstance(v, str), "must be a path or URL string ('' = "
                         "decode the videos)"),
    "objective.logit_mean": (_is_real, "must be a finite number"),
    "objective.logit_std": _POSITIVE,
    **{f"mesh.{a}": (lambda v: _is_int(v) and (v >= 1 or v == -1),
                     "mesh axis sizes must be integers >= 1 (or -1 for the rest)")
       for a in MESH_AXES},
    "train.batch_size": _AT_LEAST_1,
    "precompute.batch_per_device": _AT_LEAST_1,
    "train.carry_optimizer_across_stages": _BOOL,
}


def _validate_domains(config) -> None:
  """Per-key domains, checked first so the cross-key rules never divide by zero."""
  for key, (check, rule) in DOMAINS.items():
    node = config
    for part in key.split("."):
      node = node[part]
    if not check(node):
      _fail(key, tuple(node) if isinstance(node, list) else node, rule)
  if config.mesh.rules not in rules_lib.RULES:
    _fail("mesh.rules", config.mesh.rules, f"must be one of {list(rules_lib.RULES)} "
          "(unity_jax/parallel/rules.py)")
  weights = tuple(config.data.source_weights)
  if weights and all(_is_real(w) for w in weights) and not any(w > 0 for w in weights):
    _fail("data.source_weights", weights, "at least one source weight must be > 0")


def validate(config, num_devices: int | None = None) -> None:
  """Checks every rule that would otherwise fail late (or silently) inside jit."""
  _validate_domains(config)
  for key, choices in ENUMS.items():
    group, name = key.split(".")
    value = config[group][name]
    if value not in choices:
      _fail(key, value, f"must be one of {list(choices)}")
  m, d, codec = config.model, config.data, config.codec
  if m.dim % m.num_heads:
    _fail("model.num_heads", m.num_heads, f"must divide model.dim={m.dim}")
  if (m.dim // m.num_heads) % 2 or m.dim // m.num_heads < 6:
    _fail("model.num_heads", m.num_heads, f"head dim {m.dim // m.num_heads} must be even and "
          ">= 6 for 3D RoPE")
  if m.text_dim % m.text_heads:
    _fail("model.text_heads", m.text_heads, f"must divide model.text_dim={m.text_dim}")
  if m.num_modality_streams < 1:
    _fail("model.num_modality_streams", m.num_modality_streams, "must be >= 1")
  if (d.num_frames - 1) % codec.temporal_stride or d.num_frames < 1:
    _fail("data.num_frames", d.num_frames, f"must be 1 + k*{codec.temporal_stride} "
          f"(codec.temporal_stride={codec.temporal_stride}; 4k+1 for Wan VAEs)")
  pt, ph, pw = m.patch_size
  latent_frames = 1 + (d.num_frames - 1) // codec.temporal_stride
  if latent_frames % pt:
    _fail("model.patch_size", tuple(m.patch_size), f"temporal patch {pt} must divide the "
          f"{latent_frames} latent frames")
  for key, size, p in (("data.height", d.height, ph), ("data.width", d.width, pw)):
    if size % (codec.spatial_stride * p):
      _fail(key, size, f"must be divisible by codec.spatial_stride*patch = "
            f"{codec.spatial_stride}*{p}")
  if d.caption_len > m.text_max_len or d.prompt_len > m.text_max_len:
    _fail("data.caption_len", (d.caption_len, d.prompt_len),
          f"caption and prompt lengths must be <= model.text_max_len={m.text_max_len}")
  if codec.name == "pixel" and codec.latent_channels != 3 * codec.temporal_stride * \
      codec.spatial_stride ** 2:
    _fail("codec.latent_channels", codec.latent_channels, "the pixel codec has "
          f"3*temporal_stride*spatial_stride^2 = "
          f"{3 * codec.temporal_stride * codec.spatial_stride ** 2} channels")
  if not 0.0 < m.data_prediction_min_t <= 1.0:
    _fail("model.data_prediction_min_t", m.data_prediction_min_t, "must lie in (0, 1]")
  o = config.objective
  if not 0.0 <= o.caption_dropout <= 1.0:
    _fail("objective.caption_dropout", o.caption_dropout, "must lie in [0, 1]")
  if o.shift <= 0:
    _fail("objective.shift", o.shift, "must be > 0")
  if o.estimate_shift < 0:
    _fail("objective.estimate_shift", o.estimate_shift, "must be >= 0 (0: use objective.shift)")
  if len(d.source_weights) != len(constants.SOURCES) or min(d.source_weights) < 0:
    _fail("data.source_weights", tuple(d.source_weights),
          f"must be {len(constants.SOURCES)} non-negative weights for {list(constants.SOURCES)}")
  if not config.stages:
    _fail("stages", config.stages, "at least one curriculum stage is required")
  for i, s in enumerate(config.stages):
    _validate_stage(f"stages[{i}]", s, config.train.batch_size)
  if config.train.batch_size < 1:
    _fail("train.batch_size", config.train.batch_size, "must be >= 1")
  _validate_train(config)
  _validate_pretrained(config)
  if num_devices is not None:
    sizes = mesh_shape(config, num_devices)
    data_parallel = sizes["data"] * sizes["fsdp"]
    if config.train.batch_size % data_parallel:
      _fail("train.batch_size", config.train.batch_size,
            f"must be divisible by the data-parallel size data*fsdp={data_parallel}")
    micro_batch = config.train.batch_size // config.train.accumulate_steps
    if micro_batch % data_parallel:
      _fail("train.accumulate_steps", config.train.accumulate_steps,
            f"the micro-batch batch_size/accumulate_steps={micro_batch} must be divisible by "
            f"the data-parallel size data*fsdp={data_parallel}")
    if m.num_heads % sizes["tensor"] or m.ffn_dim % sizes["tensor"]:
      _fail("mesh.tensor", sizes["tensor"], f"must divide model.num_heads={m.num_heads} and "
            f"model.ffn_dim={m.ffn_dim}")
    if m.dim % sizes["fsdp"]:
      _fail("mesh.fsdp", sizes["fsdp"], f"must divide model.dim={m.dim}")


def _validate_stage(key, s, batch_size):
  if not isinstance(s.name, str) or not s.name:
    _fail(f"{key}.name", s.name, "must be a non-empty string (it names the stage in logs)")
  if not _is_int(s.steps) or s.steps < 1:
    _fail(f"{key}.steps", s.steps, "must be >= 1")
  if not _is_int(s.max_person_count):
    _fail(f"{key}.max_person_count", s.max_person_count, "must be an integer (negative = no "
          "limit)")
  for source in s.sources:
    if source not in constants.SOURCES:
      _fail(f"{key}.sources", tuple(s.sources), f"unknown source {source!r}; expected a subset "
            f"of {list(constants.SOURCES)}")
  if not s.sources:
    _fail(f"{key}.sources", tuple(s.sources), "must name at least one source")
  for modality in s.modalities:
    if modality not in constants.MODALITIES:
      _fail(f"{key}.modalities", tuple(s.modalities), f"unknown modality {modality!r}; expected "
            f"a subset of {list(constants.MODALITIES)}")
  if len(s.modality_weights) != len(s.modalities) or any(w < 0 for w in s.modality_weights):
    _fail(f"{key}.modality_weights", tuple(s.modality_weights),
          f"must be {len(s.modalities)} non-negative weights, one per modality")
  probs = dict(s.task_probs)
  if set(probs) != set(constants.TASKS):
    _fail(f"{key}.task_probs", probs, f"must have exactly the keys {list(constants.TASKS)}")
  if any(p < 0 for p in probs.values()) or abs(sum(probs.values()) - 1.0) > 1e-6:
    _fail(f"{key}.task_probs", probs, "probabilities must be non-negative and sum to 1")
  if batch_size % len(s.sources):
    _fail("train.batch_size", batch_size, f"must split into {len(s.sources)} equal source "
          f"groups for {key}.sources={tuple(s.sources)}")


TRAIN_ENUMS = {
    "data_source": ("auto", "random", "openuni"),
    "schedule": ("cosine", "constant"),
    "nonfinite_policy": ("stop", "skip"),
    "export": ("ema", "params", "none"),
    "distributed": ("auto", "on", "off"),
}
STAGE_SCHEDULE_KEYS = ("lr", "warmup_steps", "schedule", "min_lr_ratio")
"""Optional per-stage overrides of the train.* learning-rate schedule keys."""


def _validate_schedule(key, lr, warmup_steps, schedule, min_lr_ratio):
  if not lr > 0:
    _fail(f"{key}.lr", lr, "must be > 0")
  if warmup_steps < 0:
    _fail(f"{key}.warmup_steps", warmup_steps, "must be >= 0")
  if schedule not in TRAIN_ENUMS["schedule"]:
    _fail(f"{key}.schedule", schedule, f"must be one of {list(TRAIN_ENUMS['schedule'])}")
  if not 0.0 <= min_lr_ratio <= 1.0:
    _fail(f"{key}.min_lr_ratio", min_lr_ratio, "must lie in [0, 1]")


def _validate_train(config):
  """Rules for config.train (optimizer, EMA, checkpoints, non-finite policy, data source)."""
  t = config.train
  for name, choices in TRAIN_ENUMS.items():
    if t[name] not in choices:
      _fail(f"train.{name}", t[name], f"must be one of {list(choices)}")
  if t.data_source == "openuni" and not config.data.dir:
    _fail("data.dir", config.data.dir, "train.data_source='openuni' needs the OpenUni data "
          "directory (write one with `unity-data synth --out DIR`)")
  _validate_precomputed(config)
  if t.accumulate_steps < 1 or t.batch_size % t.accumulate_steps:
    _fail("train.accumulate_steps", t.accumulate_steps,
          f"must be >= 1 and divide train.batch_size={t.batch_size}")
  _validate_schedule("train", t.lr, t.warmup_steps, t.schedule, t.min_lr_ratio)
  for i, s in enumerate(config.stages):
    _validate_schedule(f"stages[{i}]", *(s.get(k, t[k]) for k in STAGE_SCHEDULE_KEYS))
  if t.weight_decay < 0:
    _fail("train.weight_decay", t.weight_decay, "must be >= 0")
  for name in ("b1", "b2"):
    if not 0.0 <= t[name] < 1.0:
      _fail(f"train.{name}", t[name], "must lie in [0, 1)")
  if not t.eps > 0:
    _fail("train.eps", t.eps, "must be > 0")
  if t.grad_clip < 0:
    _fail("train.grad_clip", t.grad_clip, "must be >= 0 (0 disables clipping)")
  for entry in t.lr_multipliers:
    if (len(entry) != 2 or not isinstance(entry[0], str) or
        not isinstance(entry[1], (int, float)) or entry[1] < 0):
      _fail("train.lr_multipliers", tuple(t.lr_multipliers), "must be (glob pattern, "
            "multiplier >= 0) pairs, e.g. (('modality_*', 10.0),)")
  if any(not isinstance(p, str) for p in t.no_weight_decay):
    _fail("train.no_weight_decay", tuple(t.no_weight_decay), "must be glob patterns (strings)")
  if not 0.0 <= t.ema_decay < 1.0:
    _fail("train.ema_decay", t.ema_decay, "must lie in [0, 1)")
  for name in ("ema_every", "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite",
               "log_every"):
    if t[name] < 1:
      _fail(f"train.{name}", t[name], "must be >= 1")
  if any(not isinstance(s, int) or s < 0 for s in t.debug_nan_steps):
    _fail("train.debug_nan_steps", tuple(t.debug_nan_steps), "must be non-negative step numbers")


def _validate_precomputed(config):
  """data.precomputed: what latents cannot do is refused here, never silently dropped."""
  d = config.data
  if not d.precomputed:
    if config.model.text_encoder == "precomputed" and resolved_data_source(config) == "openuni":
      _fail("data.precomputed", d.precomputed, "model.text_encoder='precomputed' trains on "
            "stored text embeddings: run `unity-data precompute` and set data.precomputed to "
            "its output")
    return
  if resolved_data_source(config) != "openuni":
    _fail("data.precomputed", d.precomputed, "trains through the OpenUni pipeline: set "
          "data.dir to the data it was precomputed from (train.data_source 'auto' or 'openuni')")
  if d.flip_augment:
    # The flip needs mirrored videos and a left/right-swapped caption; neither a stored latent
    # (Wan VAE latents are not mirror-equivariant) nor a stored caption embedding can be flipped.
    _fail("data.flip_augment", d.flip_augment, f"cannot apply to precomputed latents and "
          f"embeddings (data.precomputed={d.precomputed!r}): set data.flip_augment=False, or "
          "data.precomputed='' to decode and flip the videos")


WAN_DOCS = "docs/wan.md"


def _validate_pretrained(config):
  """Weights a config needs exist before anything compiles or any process group forms.

  Only files are looked at (config.json of each directory); the geometry of a transformer
  checkpoint is checked against config.model here too, so a mismatch fails in a second.
  """
  codec, init = config.codec, config.init
  # Training on precomputed latents never runs the codec (codec.training_codec): weights are
  # then optional here, checked when given; sampling (make_codec) still needs them.
  if codec.name != "pixel" and (codec.weights or not config.data.precomputed):
    if not codec.weights:
      _fail("codec.weights", codec.weights, f"the {codec.name} codec needs the Wan VAE weights: "
            "--config.codec.weights=DIR, a diffusers AutoencoderKLWan directory (the vae/ "
            f"folder of a Wan *-Diffusers release; {WAN_DOCS})")
    _require_model_dir("codec.weights", codec.weights)
    from unity_jax.wan import geometry  # pylint: disable=g-import-not-at-top
    problem = geometry.vae_mismatch(geometry.read_config(codec.weights), codec)
    if problem:
      _fail("codec.weights", codec.weights, problem)
  if init.transformer:
    _require_model_dir("init.transformer", init.transformer)
    from unity_jax.wan import geometry  # pylint: disable=g-import-not-at-top
    problem = geometry.mismatch(geometry.read_config(init.transformer), config)
    if problem:
      _fail("init.transformer", init.transformer, problem)
  elif init.require_pretrained:
    _fail("init.transformer", init.transformer, "this config fine-tunes a pretrained Wan "
          "transformer: --config.init.transformer=DIR, a diffusers WanTransformer3DModel "
          f"directory (the transformer/ folder of a Wan *-Diffusers release; {WAN_DOCS}); "
          "set --config.init.require_pretrained=False to train from random weights")


def _require_model_dir(key, path):
  if not os.path.isfile(os.path.join(path, "config.json")):
    _fail(key, path, "must be a directory holding config.json and *.safetensors (a diffusers "
          "model directory as written by save_pretrained)")
