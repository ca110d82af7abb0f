"""wan: fine-tune any diffusers Wan checkpoint; its geometry is read from the checkpoint.

Fine-tune (the transformer's config.json sets dim / layers / heads / ffn / channels, the VAE's
sets the codec; docs/wan.md says where the weights come from):
  unity-train --config configs/wan.py:transformer=/ckpt/Wan2.2-TI2V-5B/transformer,vae=/ckpt/Wan2.2-TI2V-5B/vae \
      --workdir /shared/runs/wan_ft
Everything else is the large presets' recipe (precomputed umT5 captions, bf16, FSDP, shift 5,
lr 5e-5 with 10x on the modality parameters, EMA 0.9999, the paper's two stages).

Smoke (about 2 minutes on a CPU): a tiny DiT from random weights trained 20 steps on 5-frame
32x32 synthetic clips through a real Wan VAE architecture (random weights, made locally with
diffusers: the `parity` extra). The loss falls, and `unity-sample` decodes through the VAE:
  python -m unity_jax.wan.random_checkpoint --out /tmp/wan_random --vae 2.1
  unity-data synth --config configs/wan.py:smoke --out /tmp/wan_data --clips 32
  unity-train --config configs/wan.py:smoke --workdir /tmp/wan_smoke \
      --config.codec.weights=/tmp/wan_random/vae --config.data.dir=/tmp/wan_data
`smoke,vae=2.2` does the same with the Wan2.2 VAE (48 channels, stride 4x16x16, 64x64 clips;
random_checkpoint --vae 2.2). Adding --config.init.transformer=/tmp/wan_random/transformer
starts the DiT from the random Wan transformer instead (its geometry is the smoke DiT's).
"""

import ml_collections

from unity_jax import config as config_lib


def _options(arg):
  """'smoke,vae=2.2,transformer=DIR' -> ({'smoke'}, {'vae': '2.2', 'transformer': 'DIR'})."""
  flags, values = set(), {}
  for part in config_lib.parse_args(arg):
    key, sep, value = part.partition("=")
    if sep:
      values[key.strip()] = value.strip()
    else:
      flags.add(key)
  return flags, values


def smoke_config(generation: str):
  """The tiny smoke run through a Wan VAE of `generation` ("2.1" | "2.2")."""
  config = config_lib.base_config()
  config.stages = config_lib.paper_stages(10, 10)
  config_lib.apply_smoke(config)
  codec = f"wan{generation}_vae"
  if codec not in config_lib.WAN_CODECS:
    raise config_lib.ConfigError(f"configs/wan.py: vae={generation!r}; expected 2.1 or 2.2")
  config.codec = ml_collections.ConfigDict(config_lib.WAN_CODECS[codec])
  # 5 frames -> 2 latent frames; 32x32 (2.1) or 64x64 (2.2) pixels -> 4x4 latents. The VAE
  # encodes every clip inside the train step, and on a CPU that is most of the step's time.
  size = 32 if generation == "2.1" else 64
  config.data.update(num_frames=5, height=size, width=size)
  config.train.batch_size = 4
  config.train.update(lr=3e-3, warmup_steps=2, log_every=5)
  return config


def finetune_config(transformer_dir: str, vae_dir: str):
  """The large presets' recipe with the geometry of the checkpoints in the two directories."""
  from unity_jax.wan import geometry  # pylint: disable=g-import-not-at-top
  checkpoint = geometry.read_config(transformer_dir)
  problem = geometry.unsupported(checkpoint)
  if problem:
    raise config_lib.ConfigError(f"configs/wan.py: {transformer_dir}: {problem}")
  model = {k.split(".")[1]: v for k, v in geometry.model_geometry(checkpoint).items()
           if k.startswith("model.")}
  codec = "wan2.2_vae" if geometry.read_config(vae_dir).get("is_residual") else "wan2.1_vae"
  config = config_lib.preset_config("wan21_1_3b")
  config.model.update(switcher_residual=True, **model)
  config.codec = ml_collections.ConfigDict(dict(config_lib.WAN_CODECS[codec], weights=vae_dir))
  config.init.update(transformer=transformer_dir, require_pretrained=True)
  return config


def get_config(arg=None):
  flags, values = _options(arg)
  if "smoke" in flags:
    return smoke_config(values.get("vae", "2.1"))
  if "transformer" not in values or "vae" not in values:
    raise config_lib.ConfigError(
        "configs/wan.py needs the checkpoint directories: configs/wan.py:transformer=DIR,vae=DIR "
        "(or configs/wan.py:smoke[,vae=2.2] for the random-weight smoke run)")
  return finetune_config(values["transformer"], values["vae"])
