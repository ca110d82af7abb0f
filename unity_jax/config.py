"""Config schema, defaults, presets and loading for unity_jax (validation: config_rules.py).

Every `configs/*.py` builds on `base_config()` and exposes `get_config(arg=None)`; `arg` is a
comma-separated list of flags, of which `smoke` shrinks any config to a run that finishes in
under two minutes on a 2-core CPU. `validate(config)` runs before anything compiles and raises
`ConfigError` naming the key, the value and the rule that failed.
"""

import importlib.util
import os

import ml_collections

from unity_jax import constants
# Validation lives in config_rules; its public names are part of this module's interface.
from unity_jax.config_rules import (  # noqa: F401  pylint: disable=unused-import
    DOMAINS, ENUMS, MESH_AXES, STAGE_SCHEDULE_KEYS, TRAIN_ENUMS, ConfigError, mesh_shape,
    precomputed_root, resolved_data_source, validate)


def stage(name, steps, sources, modalities, modality_weights=None, max_person_count=2,
          control=0.2, estimate=0.3, joint=0.5):
  """One curriculum stage: its sources, modalities (with sampling weights), the largest person
  count of its clips, and the per-sample task probabilities of dynamic noising.

  The default task probabilities keep the paper's strict order p_cond < p_est < p_joint
  (control 0.2 < estimate 0.3 < joint 0.5): joint generation gets half the samples as in the
  release, and estimation, the harder conditional task, more than control. Other orders stay
  allowed (ablations need them); configs that pick their own say why in their docstring.
  """
  return ml_collections.ConfigDict(dict(
      name=name, steps=steps, sources=tuple(sources), modalities=tuple(modalities),
      modality_weights=tuple(modality_weights or (1.0,) * len(modalities)),
      max_person_count=max_person_count,
      task_probs=ml_collections.ConfigDict(dict(control=control, estimate=estimate, joint=joint))))


def paper_stages(stage1_steps, stage2_steps, **task_probs):
  """The paper's two-stage curriculum: pixel-aligned modalities on single-person data, then all."""
  return [
      stage("stage1_pixel_aligned", stage1_steps, ("single_person",),
            constants.PIXEL_ALIGNED_MODALITIES, max_person_count=1, **task_probs),
      stage("stage2_all", stage2_steps, constants.SOURCES, constants.MODALITIES, **task_probs),
  ]


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config; presets override geometry, data and schedule."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(
      dim=64, num_layers=2, num_heads=4, ffn_dim=256, patch_size=(1, 2, 2), freq_dim=256,
      text_encoder="builtin", text_dim=64, text_layers=2, text_heads=4, text_max_len=320,
      switcher="adaptive", switcher_residual=False, modality_embed="shared",
      head_mode="per_modality", qk_norm=True,
      prediction="velocity", data_prediction_min_t=0.05, rope_theta=10000.0, attention="xla",
      attention_chunk=512, remat="none", scan_layers=True,
      dtype="bfloat16", param_dtype="float32", num_modality_streams=1)
  # codec.weights: the diffusers AutoencoderKLWan directory of a Wan VAE codec (docs/wan.md).
  c.codec = dict(name="pixel", spatial_stride=2, temporal_stride=4, latent_channels=48,
                 weights="")
  # init.transformer: a diffusers WanTransformer3DModel directory whose weights start the RGB
  # path (docs/wan.md); require_pretrained: the config is a fine-tune and refuses to start
  # from random weights.
  c.init = dict(transformer="", require_pretrained=False)
  # text: the encoder `unity-data precompute` runs when model.text_encoder="precomputed"
  # (unity_jax/data/text_encoders.py): "umt5" from encoder_dir + tokenizer_path, or "fake"
  # (deterministic byte-token embeddings, tests). precompute: stored dtype of latents and text
  # embeddings (float32 keeps pixel-codec latents bitwise equal to encoding on the fly), and
  # videos per local device per encode call (fixed, so results do not depend on the process count).
  c.text = dict(encoder="umt5", encoder_dir="", tokenizer_path="")
  c.precompute = dict(dtype="float32", batch_per_device=1)
  # Byte-token lengths (BOS + UTF-8 bytes + EOS) that fit the synthetic world's texts with a
  # margin: captions are <= 302 tokens (median ~174), segmentation prompts naming their targets
  # <= 145 (`unity-data inspect` reports the distribution; longer texts are truncated, counted).
  # data.precomputed: train on `unity-data precompute` output (latents, and text embeddings with
  # model.text_encoder="precomputed") instead of decoding videos; a directory or URL, relative
  # paths taken from data.dir like the data manifest's "precomputed" keys ("" = off).
  c.data = dict(dir="", num_frames=9, height=32, width=32, caption_len=320, prompt_len=160,
                source_weights=(1, 1, 1, 1), worker_count=0, prefetch_buffer=2,
                skip_corrupt=False, flip_augment=False, no_modality="rgb_only",
                precomputed="")
  c.objective = dict(timestep_sampling="logit_normal", logit_mean=0.0, logit_std=1.0, shift=1.0,
                     estimate_shift=0.0, caption_dropout=0.1, timesteps="independent")
  c.mesh = dict(data=-1, fsdp=1, tensor=1, context=1, rules="fsdp_tp")
  c.train = dict(
      batch_size=8, accumulate_steps=1, data_source="auto",
      # AdamW; lr/warmup_steps/schedule/min_lr_ratio may be overridden per stage (stage.lr, ...).
      lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01,
      b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0,
      # ((glob over 'a/b/c' param paths, multiplier), ...); first match wins, default 1.
      lr_multipliers=(), no_weight_decay=("*bias", "*scale", "*norm*"),
      ema_decay=0.999, ema_every=1, carry_optimizer_across_stages=True,
      checkpoint_every=100, keep_checkpoints=3, nonfinite_policy="stop",
      max_consecutive_nonfinite=3, log_every=10, export="ema", distributed="auto",
      debug_nan_steps=())
  c.stages = paper_stages(100, 100)
  return ml_collections.ConfigDict(c)


def parse_args(arg):
  """'smoke,foo' -> {'smoke', 'foo'}; None -> empty set."""
  return {a.strip() for a in (arg or "").split(",") if a.strip()}


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads 'configs/NAME.py[:ARGS]' by path and calls its get_config(ARGS)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "unity_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config(arg=None) function")
  return module.get_config(arg or None)


WAN_CODECS = {
    "wan2.1_vae": dict(name="wan2.1_vae", spatial_stride=8, temporal_stride=4, latent_channels=16,
                       weights=""),
    "wan2.2_vae": dict(name="wan2.2_vae", spatial_stride=16, temporal_stride=4, latent_channels=48,
                       weights=""),
}


PRESETS = {
    # name: geometry (see docs/configs.md; parameter counts in benchmarks/model_flops.py).
    "wan21_1_3b": dict(dim=1536, num_layers=30, num_heads=12, ffn_dim=8960, codec="wan2.1_vae"),
    "unity_5b": dict(dim=3072, num_layers=30, num_heads=24, ffn_dim=14336, codec="wan2.2_vae"),
    "unity_10b": dict(dim=4096, num_layers=40, num_heads=32, ffn_dim=14336, codec="wan2.2_vae"),
    "wan21_14b": dict(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824, codec="wan2.1_vae"),
}


PRETRAINED_PRESETS = ("wan21_1_3b", "unity_5b", "wan21_14b")
"""Presets whose geometry is a public Wan checkpoint's: they start from its weights."""


def preset_config(name, arg=None):
  """A large-model config: preset geometry, precomputed umT5 captions, Wan VAE latents, bf16,
  FSDP, Wan TI2V's timestep shift 5 and the paper's two stages (16K + 40K steps)."""
  geometry = dict(PRESETS[name])
  config = base_config()
  config.model.update(text_encoder="precomputed", text_dim=4096, text_max_len=512, remat="full",
                      attention="chunked", dtype="bfloat16", **{
                          k: v for k, v in geometry.items() if k != "codec"})
  config.codec = ml_collections.ConfigDict(WAN_CODECS[geometry["codec"]])
  config.data.update(num_frames=33, height=256, width=256, caption_len=512, prompt_len=64)
  config.mesh.update(data=-1, fsdp=8, tensor=1, context=1)
  config.objective.shift = 5.0
  # Paper: batch 32, lr 5e-5. Release: warmup 200, clip 1.5, EMA 0.9999, 10x lr on the new
  # modality parameters when fine-tuning from a pretrained backbone.
  config.train.update(batch_size=32, lr=5e-5, warmup_steps=200, grad_clip=1.5,
                      ema_decay=0.9999, lr_multipliers=(("modality_*", 10.0),))
  config.stages = paper_stages(16_000, 40_000)
  # A fine-tune of a pretrained Wan backbone: --config.init.transformer=DIR and
  # --config.codec.weights=DIR are required (validate() names them when missing). The 10B
  # geometry has no public checkpoint: it trains from random weights (still through the VAE).
  config.init.require_pretrained = name in PRETRAINED_PRESETS
  # Fine-tunes start the modality stream conditioned exactly as the backbone (a zero-initialised
  # residual switcher, docs/wan.md); the from-scratch 10B geometry keeps the paper's form.
  config.model.switcher_residual = name in PRETRAINED_PRESETS
  if "smoke" in parse_args(arg):
    apply_smoke(config)
  elif "mini" in parse_args(arg):
    apply_mini(config)
  return config


def apply_mini(config):
  """The preset's own layer types (its Wan VAE codec, precomputed umT5 text, chunked attention,
  full remat, switches) at CPU widths: the large recipe end to end (synth -> precompute ->
  train -> sample -> eval) on random weights. Needs codec.weights (a random VAE of the preset's
  generation: `python -m unity_jax.wan.random_checkpoint`) and text.encoder_dir/tokenizer_path
  (a tiny UMT5EncoderModel with d_model 32) for precompute and sampling."""
  config.model.update(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32,
                      attention_chunk=16, dtype="float32")
  config.init.update(transformer="", require_pretrained=False)
  # 5 frames -> 2 latent frames; 64x64 pixels -> 4x4 latents through a stride-16 VAE (32x32
  # through stride 8). SentencePiece ids are ~3x fewer than byte tokens: shorter text lengths.
  size = 64 if config.codec.spatial_stride == 16 else 32
  config.data.update(num_frames=5, height=size, width=size, caption_len=64, prompt_len=32)
  config.mesh.update(data=-1, fsdp=1, tensor=1, context=1)
  config.train.update(batch_size=4, lr=3e-3, warmup_steps=2, log_every=2, ema_decay=0.9)
  for s in config.stages:
    s.steps = 4
  return config


def apply_smoke(config):
  """Shrinks any config to a 2-minute CPU run, keeping its architectural switches."""
  config.model.update(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_encoder="builtin",
                      text_dim=32, text_layers=1, text_heads=2, text_max_len=320, remat="none",
                      attention="xla", dtype="float32")
  config.codec = ml_collections.ConfigDict(dict(name="pixel", spatial_stride=2,
                                                temporal_stride=4, latent_channels=48,
                                                weights=""))
  # Smoke geometry cannot hold pretrained weights: it trains from random initialisation.
  config.init.update(transformer="", require_pretrained=False)
  # Text lengths stay the base's: the smoke run reads the same synthetic captions and prompts.
  config.data.update(num_frames=5, height=16, width=16, caption_len=320, prompt_len=160)
  config.mesh.update(data=-1, fsdp=1, tensor=1, context=1)
  config.train.batch_size = 8
  for s in config.stages:
    s.steps = 10
  return config
