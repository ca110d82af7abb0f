"""diffusers WanTransformer3DModel <-> UnityDiT: parity, round trip, sharded load, errors.

References are small random WanTransformer3DModels written with save_pretrained into a temp
dir (nothing is downloaded). diffusers initialises some tensors to constants (norm weights to
one, biases of the cross-attention norm to zero), so every tensor is re-drawn at a non-trivial
scale before saving and every path of the mapping is exercised.
"""

import fnmatch
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
from flax import traverse_util  # noqa: E402

from unity_jax import model as model_lib  # noqa: E402
from unity_jax import wan  # noqa: E402
from unity_jax.parallel import mesh as mesh_lib  # noqa: E402
from unity_jax.wan import transformer as wan_tf  # noqa: E402
from unity_jax.wan.safetensors_io import SafetensorsCheckpoint, write_safetensors  # noqa: E402

ATOL, RTOL, GRAD_ATOL = 2e-5, 1e-5, 1e-4
# Wan2.1-style (16 latent channels, head_dim 12) and Wan2.2 TI2V-style (48 channels, head_dim
# 16); two layers, small FFN and text dims.
GENERATIONS = {
    "wan21": dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=12),
    "wan22": dict(in_channels=48, out_channels=48, num_attention_heads=2, attention_head_dim=16),
}
COMMON = dict(patch_size=(1, 2, 2), text_dim=32, freq_dim=256, ffn_dim=64, num_layers=2,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
LATENT_FHW = (3, 4, 6)      # 3 latent frames, non-square 4 x 6 latent frames (2 x 3 tokens)


def _reference(generation, seed=0):
  """A random WanTransformer3DModel: weights at unit-gain scale, norms 1 ± 0.2, AdaLN tables
  and biases ~ N(0, 0.3²) so that every tensor moves the output."""
  torch.manual_seed(seed)
  model = diffusers.WanTransformer3DModel(**COMMON, **GENERATIONS[generation]).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn_like(p)
      if "scale_shift_table" in name:
        p.copy_(0.3 * noise)
      elif p.ndim >= 2:
        p.copy_(noise / float(np.prod(p.shape[1:])) ** 0.5)
      elif name.endswith(("norm_q.weight", "norm_k.weight", "norm2.weight")):
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.3 * noise)
  return model


def _inputs(generation, batch=2, seed=1, text_len=7):
  rng = np.random.default_rng(seed)
  channels = GENERATIONS[generation]["in_channels"]
  latents = rng.standard_normal((batch, channels, *LATENT_FHW)).astype(np.float32)
  timestep = np.array([987.3, 431.0][:batch], np.float32)   # Wan's units, not integers
  text = rng.standard_normal((batch, text_len, COMMON["text_dim"])).astype(np.float32)
  return latents, timestep, text


def _torch_forward(model, latents, timestep, text):
  with torch.no_grad():
    return model(torch.from_numpy(latents), torch.from_numpy(timestep),
                 torch.from_numpy(text)).sample.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{generation: (torch model, directory)}."""
  out = {}
  for generation in GENERATIONS:
    model = _reference(generation)
    directory = str(tmp_path_factory.mktemp(generation))
    model.save_pretrained(directory)
    out[generation] = (model, directory)
  return out


@pytest.fixture(scope="module")
def imported(checkpoints):
  """{generation: (config, params)} of the imported reference checkpoints."""
  out = {}
  for generation, (_, directory) in checkpoints.items():
    config = _config(directory)
    out[generation] = (config, wan.load_transformer(directory, config))
  return out


def _config(directory, **model):
  config = wan.config_from_diffusers(directory)
  config.model.update(dtype="float32", **model)
  return config


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_rgb_forward_and_gradient_match_diffusers(checkpoints, imported, generation):
  model, _ = checkpoints[generation]
  config, params = imported[generation]
  latents, timestep, text = _inputs(generation)
  ours = wan.rgb_forward(params, config, latents, timestep, text)
  theirs = _torch_forward(model, latents, timestep, text)
  assert ours.shape == theirs.shape == latents.shape
  np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=RTOL)
  assert np.abs(theirs).mean() > 0.1      # a non-degenerate reference

  target = np.random.default_rng(5).standard_normal(latents.shape).astype(np.float32)
  loss = lambda x: jnp.mean(jnp.square(wan.rgb_apply(params, config, x, timestep, text) -
                                       target))
  ours_grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(latents)))
  x = torch.from_numpy(latents).requires_grad_(True)
  out = model(x, torch.from_numpy(timestep), torch.from_numpy(text)).sample
  torch.mean(torch.square(out - torch.from_numpy(target))).backward()
  theirs_grad = x.grad.numpy()
  np.testing.assert_allclose(ours_grad, theirs_grad, atol=GRAD_ATOL, rtol=0)
  # The mean's gradient is small (~1e-2), so 1e-4 absolute alone would say little: the error
  # must also stay within 1e-4 of the gradient's own scale.
  scale = np.abs(theirs_grad).max()
  assert scale > 1e-3
  np.testing.assert_allclose(ours_grad, theirs_grad, atol=GRAD_ATOL * scale, rtol=0)


def test_every_diffusers_tensor_is_consumed(checkpoints, imported):
  model, directory = checkpoints["wan21"]
  config, params = imported["wan21"]
  expected = wan_tf.expected_tensors(config)
  assert set(expected) == set(model.state_dict())
  flat = traverse_util.flatten_dict(params, sep="/")
  rgb = {path for path, *_ in expected.values()}
  # Every leaf is either imported or one of UnityVideo's additions (the lr-multiplier group).
  assert set(flat) == rgb | {p for p in flat if fnmatch.fnmatchcase(p, "modality_*")}
  assert not any(fnmatch.fnmatchcase(p, "modality_*") for p in rgb)
  for name, (path, layout, stacked, _) in expected.items():
    leaf = np.asarray(flat[path])
    value = leaf[int(name.split(".")[1])] if stacked else leaf
    stored = model.state_dict()[name].numpy()
    np.testing.assert_array_equal(wan_tf.names.from_ours(layout, value, (1, 2, 2)), stored)


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_export_loads_in_diffusers_and_round_trips_bytes(checkpoints, imported, generation,
                                                         tmp_path):
  model, directory = checkpoints[generation]
  config, params = imported[generation]
  out = str(tmp_path / "export")
  wan.export_transformer(params, config, out, max_shard_size=20_000)
  index = json.load(open(os.path.join(out, wan_tf.INDEX_FILE)))
  assert len(set(index["weight_map"].values())) > 1        # really sharded
  source, exported = SafetensorsCheckpoint(directory), SafetensorsCheckpoint(
      out, exclude=(wan_tf.EXTENSION_FILE,))
  assert source.keys() == exported.keys()
  for name in source.keys():
    assert source.dtype(name) == exported.dtype(name), name
    assert source.read(name).tobytes() == exported.read(name).tobytes(), name
  reloaded = diffusers.WanTransformer3DModel.from_pretrained(out).eval()
  latents, timestep, text = _inputs(generation, seed=3)
  np.testing.assert_allclose(_torch_forward(reloaded, latents, timestep, text),
                             wan.rgb_forward(params, config, latents, timestep, text),
                             atol=ATOL, rtol=RTOL)


def test_bf16_checkpoint_round_trips_bitwise(checkpoints, tmp_path):
  """bf16 storage with fp32 AdaLN tables (diffusers' keep-in-fp32 modules) survives
  import (fp32 params) -> export exactly, tensor by tensor and dtype by dtype."""
  model, _ = checkpoints["wan21"]
  source = str(tmp_path / "bf16")
  os.makedirs(source)
  tensors = {k: (v.numpy() if "scale_shift_table" in k else
                 v.to(torch.bfloat16).float().numpy().astype(ml_dtypes.bfloat16))
             for k, v in model.state_dict().items()}
  write_safetensors(os.path.join(source, "diffusion_pytorch_model.safetensors"), tensors)
  with open(os.path.join(source, "config.json"), "w") as f:
    json.dump(dict(model.config), f)
  config = _config(source)
  assert config.wan.dtype == "BF16"
  assert ("blocks.*.scale_shift_table", "F32") in config.wan.dtype_overrides
  params = wan.load_transformer(source, config)
  out = str(tmp_path / "out")
  wan.export_transformer(params, config, out)
  src, exp = SafetensorsCheckpoint(source), SafetensorsCheckpoint(
      out, exclude=(wan_tf.EXTENSION_FILE,))
  for name in src.keys():
    assert (src.dtype(name), src.read(name).tobytes()) == (exp.dtype(name),
                                                           exp.read(name).tobytes()), name


def test_sharded_checkpoint_imports(checkpoints, imported, tmp_path):
  model, _ = checkpoints["wan22"]
  config, params = imported["wan22"]
  model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  assert os.path.isfile(tmp_path / wan_tf.INDEX_FILE)
  sharded = wan.load_transformer(str(tmp_path), config)
  jax.tree.map(np.testing.assert_array_equal, sharded, params)


def test_load_onto_fsdp_mesh(checkpoints, imported, tmp_path):
  _, directory = checkpoints["wan21"]
  _, params = imported["wan21"]
  config = _config(directory)
  config.mesh.update(data=1, fsdp=8)
  mesh = mesh_lib.make_mesh(config)
  sharded = wan.load_transformer(directory, config, mesh=mesh)
  expected = mesh_lib.logical_to_sharding(model_lib.logical_param_axes(config), mesh, config)
  flat_sharded = traverse_util.flatten_dict(sharded, sep="/")
  flat_expected = traverse_util.flatten_dict(expected, sep="/")
  assert flat_sharded["blocks/block/ffn/up/kernel"].sharding.spec[1] == "fsdp"
  for path, leaf in flat_sharded.items():
    assert leaf.sharding.is_equivalent_to(flat_expected[path], leaf.ndim), path
  jax.tree.map(np.testing.assert_array_equal, sharded, params)
  # Export gathers the sharded leaves one tensor (one layer) at a time: same bytes as the source.
  out = str(tmp_path / "from_mesh")
  wan.export_transformer(sharded, config, out)
  source, exported = SafetensorsCheckpoint(directory), SafetensorsCheckpoint(
      out, exclude=(wan_tf.EXTENSION_FILE,))
  for name in source.keys():
    assert source.read(name).tobytes() == exported.read(name).tobytes(), name


def test_unscanned_layers_import_the_same_values(checkpoints, imported):
  _, directory = checkpoints["wan21"]
  _, scanned = imported["wan21"]
  config = _config(directory, scan_layers=False)
  flat = traverse_util.flatten_dict(wan.load_transformer(directory, config), sep="/")
  stacked = traverse_util.flatten_dict(scanned, sep="/")
  for path, leaf in flat.items():
    if path.startswith("block_"):
      layer, rest = path.split("/", 1)
      np.testing.assert_array_equal(leaf, stacked["blocks/block/" + rest][int(layer[6:])])
    else:
      np.testing.assert_array_equal(leaf, stacked[path])


def _rewrite(directory, target, edit=None, config_edit=None):
  """A copy of a checkpoint with its tensors (dict name -> numpy) and config.json edited."""
  checkpoint = SafetensorsCheckpoint(directory)
  tensors = {k: checkpoint.read(k) for k in checkpoint.keys()}
  config = dict(checkpoint.config)
  (edit or (lambda t: None))(tensors)
  (config_edit or (lambda c: None))(config)
  os.makedirs(target)
  write_safetensors(os.path.join(target, "diffusion_pytorch_model.safetensors"), tensors)
  with open(os.path.join(target, "config.json"), "w") as f:
    json.dump(config, f)
  return str(target)


def test_errors_name_the_key_and_shapes(checkpoints, tmp_path):
  _, directory = checkpoints["wan21"]
  config = _config(directory)
  bad = _config(directory)
  bad.model.num_layers = 3
  with pytest.raises(wan.CheckpointError,
                     match=r"config\.model\.num_layers=3 but the checkpoint has 2"):
    wan.load_transformer(directory, bad)

  missing = _rewrite(directory, tmp_path / "missing",
                     lambda t: t.pop("blocks.1.attn2.to_k.weight"))
  with pytest.raises(wan.CheckpointError, match=r"missing tensor 'blocks\.1\.attn2\.to_k\."
                     r"weight' \(expected shape \(24, 24\)"):
    wan.load_transformer(missing, config)

  extra = _rewrite(directory, tmp_path / "extra", lambda t: t.update(
      {"blocks.0.attn2.add_k_proj.weight": np.zeros((24, 8), np.float32)}))
  with pytest.raises(wan.CheckpointError, match=r"unexpected tensor 'blocks\.0\.attn2\."
                     r"add_k_proj\.weight' of shape \(24, 8\)"):
    wan.load_transformer(extra, config)

  shape = _rewrite(directory, tmp_path / "shape", lambda t: t.update(
      {"blocks.0.ffn.net.2.weight": np.zeros((24, 32), np.float32)}))
  with pytest.raises(wan.CheckpointError, match=r"'blocks\.0\.ffn\.net\.2\.weight' has shape "
                     r"\(24, 32\), expected \(24, 64\)"):
    wan.load_transformer(shape, config)

  i2v = _rewrite(directory, tmp_path / "i2v", config_edit=lambda c: c.update(image_dim=1280))
  with pytest.raises(wan.CheckpointError, match=r"image_dim=1280, expected None"):
    wan.config_from_diffusers(i2v)
  with pytest.raises(wan.CheckpointError, match=r"image_dim=1280, expected None"):
    wan.load_transformer(i2v, config)


def test_modality_stream_starts_as_wan_on_the_width_concatenated_video(checkpoints, imported):
  """With switcher_residual and head copies, the joint RGB + modality forward of an imported
  model is Wan's forward on [rgb | modality] concatenated along width: the joint RoPE grid puts
  the stream at width columns [w, 2w), its AdaLN condition is t_emb(t_m) and its head is a
  copy of the RGB head (the prompt is the caption here, as Wan has one text)."""
  model, _ = checkpoints["wan22"]
  config, params = imported["wan22"]
  assert config.model.switcher_residual and config.model.head_mode == "per_modality"
  rgb, timestep, text = _inputs("wan22", batch=2, seed=7)
  modality = _inputs("wan22", batch=2, seed=8)[0]
  joint = _torch_forward(model, np.concatenate([rgb, modality], axis=-1), timestep, text)
  channels_last = lambda x: jnp.moveaxis(jnp.asarray(x), 1, -1)
  t = jnp.asarray(timestep)
  mask = jnp.ones(text.shape[:2], bool)
  v_rgb, v_mod = wan_tf.wan_time_model(config).apply(
      {"params": params}, channels_last(rgb), t, {"embedding": jnp.asarray(text), "mask": mask},
      modality=channels_last(modality)[:, None], modality_id=jnp.array([[1], [4]]),
      t_modality=t[:, None], prompt={"embedding": jnp.asarray(text)[:, None],
                                     "mask": mask[:, None]})
  width = rgb.shape[-1]
  np.testing.assert_allclose(np.moveaxis(np.asarray(v_rgb), -1, 1), joint[..., :width],
                             atol=ATOL, rtol=RTOL)
  np.testing.assert_allclose(np.moveaxis(np.asarray(v_mod[:, 0]), -1, 1), joint[..., width:],
                             atol=ATOL, rtol=RTOL)


def test_extension_initialisation_lr_group_and_round_trip(checkpoints, imported, tmp_path):
  from unity_jax.train import optim  # pylint: disable=g-import-not-at-top
  _, directory = checkpoints["wan21"]
  # The separate modality patch embedding, and the CPU smoke mode's builtin text encoder
  # (initialised, and carried through export in the extension file like modality_*).
  config = _config(directory, modality_embed="separate", text_encoder="builtin")
  params = wan.load_transformer(directory, config, rng=jax.random.key(3))
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  assert any(k.startswith("text_encoder/") for k in flat)
  np.testing.assert_array_equal(flat["modality_patch_embed/kernel"], flat["patch_embed/kernel"])
  assert not flat["modality_zero_linear/kernel"].any()
  assert not flat["modality_switcher/fc2/kernel"].any()
  assert 0.01 < flat["modality_embed"].std() < 0.03
  for name in ("modulation", "kernel", "bias"):
    head = flat[f"modality_head/{name}"]
    assert head.shape[0] == 5
    np.testing.assert_array_equal(head, np.broadcast_to(flat[f"rgb_head/{name}"], head.shape))
  # The presets' lr-multiplier glob selects exactly the added parameters.
  multipliers = traverse_util.flatten_dict(optim.lr_multipliers(config, params), sep="/")
  assert {k for k, m in multipliers.items() if m == 10.0} == {
      k for k in flat if k.startswith("modality_")}

  # A trained model (extension moved away from its initialisation) survives export -> import.
  trained = jax.tree.map(lambda x: x + 0.01, params)
  out = str(tmp_path / "trained")
  wan.export_transformer(trained, config, out)
  jax.tree.map(np.testing.assert_array_equal, wan.load_transformer(out, config), trained)
