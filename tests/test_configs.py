"""Every config loads, validates and builds abstract params; invalid configs fail clearly."""

import json
import math
import pathlib

import jax
import pytest

from unity_jax import config as config_lib
from unity_jax.model import build_model, dummy_inputs

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py"))


def _abstract_param_count(config):
  model = build_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config, 1)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def fake_wan_dirs(config, root) -> tuple[str, str]:
  """(transformer dir, vae dir) holding only a config.json that matches `config`: enough for
  validate(), which reads config.json files and nothing else."""
  m, codec = config.model, config.codec
  transformer = dict(
      _class_name="WanTransformer3DModel", num_attention_heads=m.num_heads,
      attention_head_dim=m.dim // m.num_heads, num_layers=m.num_layers, ffn_dim=m.ffn_dim,
      patch_size=list(m.patch_size), freq_dim=m.freq_dim, text_dim=m.text_dim,
      in_channels=codec.latent_channels, out_channels=codec.latent_channels,
      cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
  vae = dict(_class_name="AutoencoderKLWan", z_dim=codec.latent_channels,
             scale_factor_spatial=codec.spatial_stride,
             scale_factor_temporal=codec.temporal_stride,
             is_residual=codec.name == "wan2.2_vae")
  dirs = []
  for name, contents in (("transformer", transformer), ("vae", vae)):
    directory = pathlib.Path(root) / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(contents))
    dirs.append(str(directory))
  return tuple(dirs)


@pytest.mark.parametrize("path", CONFIG_FILES)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_loads_validates_and_builds(path, arg, tmp_path):
  if path == "configs/wan.py" and arg is None:
    # Geometry comes from the checkpoints: point it at (fake) 1.3B-geometry directories.
    dirs = fake_wan_dirs(config_lib.load_config(str(ROOT / "configs/wan21_1_3b.py")),
                         tmp_path / "ckpt")
    arg = "transformer={},vae={}".format(*dirs)
  config = config_lib.load_config(str(ROOT / path) + (f":{arg}" if arg else ""))
  if config.codec.name != "pixel" and not config.codec.weights:
    # Wan presets name the weights they need before anything else happens.
    with pytest.raises(config_lib.ConfigError, match=r"config\.(codec\.weights|init\.transformer)"):
      config_lib.validate(config)
    transformer_dir, vae_dir = fake_wan_dirs(config, tmp_path)
    config.codec.weights = vae_dir
    if config.init.require_pretrained:
      config.init.transformer = transformer_dir
  config_lib.validate(config)
  sizes = config_lib.mesh_shape(config, 8 if config.mesh.fsdp <= 8 else config.mesh.fsdp)
  assert math.prod(sizes.values()) >= 1
  assert _abstract_param_count(config) > 0
  assert path.endswith(".py") and "get_config" in (ROOT / path).read_text()


def test_config_docstrings_hold_the_run_command():
  for path in CONFIG_FILES:
    text = (ROOT / path).read_text()
    assert "unity-train --config " + path in text or "benchmarks/" in text, path


def test_5b_preset_parameter_count():
  config = config_lib.load_config(str(ROOT / "configs/unity_5b.py"))
  count = _abstract_param_count(config)
  assert abs(count - 5.0e9) / 5.0e9 < 0.05, count


def _tiny():
  return config_lib.load_config(str(ROOT / "configs/tiny.py"))


def _set(path, value):
  def mutate(config):
    node = config
    *parents, leaf = path.split(".")
    for key in parents:
      node = node[int(key)] if key.isdigit() else node[key]
    node[leaf] = value
  return mutate


INVALID = [
    (_set("data.num_frames", 8), None, "config.data.num_frames=8: must be 1 + k*4"),
    (_set("data.height", 30), None, "config.data.height=30: must be divisible by"),
    (_set("data.width", 34), None, "config.data.width=34: must be divisible by"),
    (_set("model.num_heads", 5), None, "config.model.num_heads=5: must divide model.dim=192"),
    (_set("model.switcher", "film"), None, "config.model.switcher='film': must be one of"),
    (_set("model.attention", "flash"), None, "config.model.attention='flash': must be one of"),
    (_set("stages.0.modalities", ("depth", "normals")), None, "unknown modality 'normals'"),
    (_set("stages.1.sources", ("general", "youtube")), None, "unknown source 'youtube'"),
    (_set("stages.0.task_probs.joint", 0.6), None, "must be non-negative and sum to 1"),
    (_set("stages.1.task_probs.control", -0.25), None, "must be non-negative and sum to 1"),
    (_set("stages.0.modality_weights", (1.0, 2.0)), None, "must be 3 non-negative weights"),
    (_set("train.batch_size", 12), 8, "config.train.batch_size=12: must be divisible by the "
     "data-parallel size data*fsdp=8"),
    (_set("train.batch_size", 6), None, "config.train.batch_size=6: must split into 4 equal "
     "source groups"),
    (_set("mesh.fsdp", 3), 8, "fixed axes (3) must divide the 8 devices"),
    (lambda c: c.mesh.update(data=2, fsdp=2), 8, "the mesh product 4 must equal the device "
     "count 8"),
    (lambda c: c.mesh.update(data=1, tensor=8), 8, "config.mesh.tensor=8: must divide "
     "model.num_heads=4"),
    (_set("codec.latent_channels", 16), None, "the pixel codec has 3*temporal_stride*"
     "spatial_stride^2 = 48 channels"),
    (_set("objective.caption_dropout", 1.5), None, "must lie in [0, 1]"),
    (_set("data.caption_len", 400), None, "must be <= model.text_max_len=320"),
    (_set("stages.0.steps", 0), None, "config.stages[0].steps=0: must be >= 1"),
    (_set("data.source_weights", (1, 1, 1)), None, "must be 4 non-negative weights"),
    # Per-key domains: each used to pass validate() and fail later (or never). None stands for
    # a wrong type: ConfigDict's type safety rejects other types at assignment already.
    (_set("data.source_weights", (0, 0, 0, 0)), None, "config.data.source_weights=(0, 0, 0, 0): "
     "at least one source weight must be > 0"),
    (_set("model.patch_size", (1, 0, 2)), None, "config.model.patch_size=(1, 0, 2): must be 3 "
     "integers >= 1"),
    (_set("model.patch_size", (1, 2)), None, "config.model.patch_size=(1, 2): must be 3 "),
    (_set("mesh.rules", "megatron"), None, "config.mesh.rules='megatron': must be one of "
     "['fsdp_tp', 'replicated']"),
    (_set("mesh.context", 0), None, "config.mesh.context=0: mesh axis sizes must be integers"),
    (_set("model.num_layers", 0), None, "config.model.num_layers=0: must be an integer >= 1"),
    (_set("model.attention_chunk", 0), None, "config.model.attention_chunk=0: must be an "
     "integer >= 1"),
    (_set("data.worker_count", -1), None, "config.data.worker_count=-1: must be an integer >= 0"),
    (_set("data.prefetch_buffer", -2), None, "config.data.prefetch_buffer=-2: must be an "
     "integer >= 0"),
    (_set("model.dim", 0), None, "config.model.dim=0: must be an integer >= 1"),
    (_set("model.num_heads", 0), None, "config.model.num_heads=0: must be an integer >= 1"),
    (_set("model.ffn_dim", 0), None, "config.model.ffn_dim=0: must be an integer >= 1"),
    (_set("model.freq_dim", 255), None, "config.model.freq_dim=255: must be an even integer"),
    (_set("model.text_dim", 0), None, "config.model.text_dim=0: must be an integer >= 1"),
    (_set("model.text_heads", 0), None, "config.model.text_heads=0: must be an integer >= 1"),
    (_set("model.text_layers", -1), None, "config.model.text_layers=-1: must be an integer >= 0"),
    (_set("model.text_max_len", 0), None, "config.model.text_max_len=0: must be an integer"),
    (_set("model.rope_theta", 0.0), None, "config.model.rope_theta=0.0: must be a finite number "
     "> 0"),
    (_set("model.qk_norm", None), None, "config.model.qk_norm=None: must be True or False"),
    (_set("model.scan_layers", None), None, "config.model.scan_layers=None: must be True"),
    (_set("model.data_prediction_min_t", 0.0), None, "must lie in (0, 1]"),
    (_set("model.num_modality_streams", 0), None, "config.model.num_modality_streams=0: must be "
     ">= 1"),
    (_set("codec.spatial_stride", 0), None, "config.codec.spatial_stride=0: must be an integer"),
    (_set("codec.temporal_stride", 0), None, "config.codec.temporal_stride=0: must be an "
     "integer"),
    (_set("codec.latent_channels", 0), None, "config.codec.latent_channels=0: must be an "
     "integer"),
    (_set("codec.name", "vqgan"), None, "config.codec.name='vqgan': must be one of"),
    (_set("data.dir", None), None, "config.data.dir=None: must be a path string"),
    (_set("data.height", 0), None, "config.data.height=0: must be an integer >= 1"),
    (_set("data.width", -16), None, "config.data.width=-16: must be an integer >= 1"),
    (_set("data.num_frames", 0), None, "config.data.num_frames=0: must be an integer >= 1"),
    (_set("data.caption_len", 0), None, "config.data.caption_len=0: must be an integer >= 1"),
    (_set("data.prompt_len", 0), None, "config.data.prompt_len=0: must be an integer >= 1"),
    (_set("data.skip_corrupt", None), None, "config.data.skip_corrupt=None: must be True"),
    (_set("data.flip_augment", None), None, "config.data.flip_augment=None: must be True"),
    (_set("data.no_modality", "skip"), None, "config.data.no_modality='skip': must be one of"),
    (_set("objective.logit_std", 0.0), None, "config.objective.logit_std=0.0: must be a finite "
     "number > 0"),
    (_set("objective.logit_mean", float("nan")), None, "config.objective.logit_mean=nan: must be "
     "a finite number"),
    (_set("objective.shift", 0.0), None, "config.objective.shift=0.0: must be > 0"),
    (_set("objective.estimate_shift", -1.0), None, "must be >= 0"),
    (_set("objective.timestep_sampling", "beta"), None, "must be one of"),
    (_set("objective.timesteps", "mixed"), None, "must be one of"),
    (_set("seed", None), None, "config.seed=None: must be an integer"),
    (_set("train.batch_size", 0), None, "config.train.batch_size=0: must be an integer >= 1"),
    (_set("train.carry_optimizer_across_stages", None), None, "config.train."
     "carry_optimizer_across_stages=None: must be True or False"),
    (_set("train.log_every", 0), None, "config.train.log_every=0: must be >= 1"),
    (_set("train.ema_decay", 1.0), None, "config.train.ema_decay=1.0: must lie in [0, 1)"),
    (_set("train.lr", 0.0), None, "config.train.lr=0.0: must be > 0"),
    (_set("train.nonfinite_policy", "ignore"), None, "must be one of ['stop', 'skip']"),
    (_set("stages.0.name", ""), None, "config.stages[0].name='': must be a non-empty string"),
    (_set("stages.1.max_person_count", None), None, "config.stages[1].max_person_count=None: "
     "must "
     "be an integer"),
]


@pytest.mark.parametrize("mutate,devices,message", INVALID)
def test_invalid_configs_are_rejected_with_clear_messages(mutate, devices, message):
  config = _tiny()
  mutate(config)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config, devices)
  assert message in str(error.value)


def test_missing_config_file_and_function():
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load_config("configs/nope.py")
  with pytest.raises(config_lib.ConfigError, match="has no get_config"):
    config_lib.load_config(str(ROOT / "tests" / "conftest.py"))


def test_base_task_probabilities_keep_the_paper_order():
  # Paper §3.1: p_cond < p_est < p_joint. Presets built on base_config inherit it.
  for config in (config_lib.base_config(), config_lib.load_config(str(ROOT / "configs/small.py")),
                 config_lib.preset_config("unity_5b")):
    for s in config.stages:
      p = s.task_probs
      assert p.control < p.estimate < p.joint, (s.name, dict(p))
  tiny = config_lib.load_config(str(ROOT / "configs/tiny.py"))
  probs = dict(tiny.stages[0].task_probs)
  doc = (ROOT / "configs/tiny.py").read_text().split('"""')[1]
  assert all(f"{name} {value}" in doc for name, value in probs.items()), probs


def test_wan_presets_need_their_weights_before_anything_starts(tmp_path):
  config = config_lib.load_config(str(ROOT / "configs/unity_5b.py"))
  transformer_dir, vae_dir = fake_wan_dirs(config, tmp_path)
  with pytest.raises(config_lib.ConfigError, match=r"config\.codec\.weights='': the wan2\.2_vae "
                     r"codec needs the Wan VAE weights: --config\.codec\.weights=DIR"):
    config_lib.validate(config)
  config.codec.weights = vae_dir
  with pytest.raises(config_lib.ConfigError, match=r"config\.init\.transformer='': this config "
                     r"fine-tunes a pretrained Wan transformer: --config\.init\.transformer=DIR"):
    config_lib.validate(config)
  config.init.transformer = str(tmp_path / "missing")
  with pytest.raises(config_lib.ConfigError, match="must be a directory holding config.json"):
    config_lib.validate(config)
  config.init.transformer = transformer_dir
  config_lib.validate(config)


def test_checkpoint_geometry_mismatch_names_both_values(tmp_path):
  config = config_lib.load_config(str(ROOT / "configs/wan21_1_3b.py"))
  transformer_dir, vae_dir = fake_wan_dirs(config, tmp_path)
  config.update_from_flattened_dict({"codec.weights": vae_dir,
                                     "init.transformer": transformer_dir})
  config.model.num_layers = 20
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.model\.num_layers=20 but the checkpoint has 30"):
    config_lib.validate(config)
  config.model.num_layers = 30
  config.codec.latent_channels = 48
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.codec\.latent_channels=48 but the VAE has 16"):
    config_lib.validate(config)
  config.codec.latent_channels = 16
  config.codec.name = "wan2.2_vae"
  with pytest.raises(config_lib.ConfigError, match="but the VAE is a wan2.1_vae"):
    config_lib.validate(config)
