"""UnityDiT forward behaviour: shapes, AdaLN-Zero init, variants, RGB-only, codec, tokenizer."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unity_jax import config as config_lib
from unity_jax import constants
from unity_jax.model import build_model, dummy_inputs, init_params, latent_grid, text
from unity_jax.model.codec import PixelCodec


def _config(**model_overrides):
  config = config_lib.load_config("configs/tiny.py:smoke")
  config.model.update(**model_overrides)
  return config


def _random_inputs(config, batch_size, modality_ids, seed=0):
  """Random latents, timesteps and texts; modality_ids: int [B, S] (or None for RGB-only)."""
  inputs = dummy_inputs(config, batch_size, 0 if modality_ids is None else len(modality_ids[0]))
  keys = iter(jax.random.split(jax.random.key(seed), 8))
  inputs["rgb"] = jax.random.normal(next(keys), inputs["rgb"].shape)
  inputs["t_rgb"] = jax.random.uniform(next(keys), (batch_size,))
  tokens, mask = text.tokenize([f"caption {i}" for i in range(batch_size)],
                               config.data.caption_len)
  inputs["caption"] = {"tokens": tokens, "mask": mask}
  if modality_ids is not None:
    ids = jnp.asarray(modality_ids, jnp.int32)
    inputs["modality"] = jax.random.normal(next(keys), inputs["modality"].shape)
    inputs["modality_id"] = ids
    inputs["t_modality"] = jax.random.uniform(next(keys), ids.shape)
    tokens, mask = text.tokenize(["depth map"] * ids.size, config.data.prompt_len)
    inputs["prompt"] = {"tokens": tokens.reshape(*ids.shape, -1),
                        "mask": mask.reshape(*ids.shape, -1)}
  return inputs


def _perturb(params, seed=1, scale=0.05):
  """Random non-zero params (init zeroes the gates and heads, which hides most bugs)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("head_mode", ["per_modality", "shared"])
def test_forward_shapes_every_modality_and_rgb_only(head_mode):
  config = _config(head_mode=head_mode)
  model = build_model(config)
  params = _perturb(init_params(config, jax.random.key(0)))
  ids = [[m] for m in range(len(constants.MODALITIES))] + [[constants.NO_MODALITY]]
  inputs = _random_inputs(config, len(ids), ids)
  rgb_v, mod_v = model.apply({"params": params}, **inputs)
  assert rgb_v.shape == inputs["rgb"].shape and rgb_v.dtype == jnp.float32
  assert mod_v.shape == inputs["modality"].shape
  assert bool(jnp.all(jnp.isfinite(rgb_v))) and bool(jnp.all(jnp.isfinite(mod_v)))
  rgb_only, none = model.apply({"params": params}, **_random_inputs(config, 2, None))
  assert rgb_only.shape == (2, *inputs["rgb"].shape[1:]) and none is None


def test_multiple_modality_streams():
  config = _config()
  model = build_model(config)
  params = _perturb(init_params(config, jax.random.key(0)))
  inputs = _random_inputs(config, 2, [[0, 1, 2], [3, 4, -1]])
  rgb_v, mod_v = model.apply({"params": params}, **inputs)
  assert mod_v.shape == inputs["modality"].shape and mod_v.shape[1] == 3


@pytest.mark.parametrize("overrides", [
    {}, {"switcher": "token_add"}, {"modality_embed": "separate"}, {"head_mode": "shared"}])
def test_output_is_exactly_zero_at_init(overrides):
  config = _config(**overrides)
  params = init_params(config, jax.random.key(0))
  rgb_v, mod_v = build_model(config).apply({"params": params},
                                           **_random_inputs(config, 3, [[0], [2], [-1]]))
  assert float(jnp.abs(rgb_v).max()) == 0.0 and float(jnp.abs(mod_v).max()) == 0.0


def test_separate_modality_embedding_starts_as_copy_of_rgb_embedding():
  params = init_params(_config(modality_embed="separate"), jax.random.key(0))
  np.testing.assert_array_equal(params["modality_patch_embed"]["kernel"],
                                params["patch_embed"]["kernel"])
  assert float(jnp.abs(params["modality_zero_linear"]["kernel"]).max()) == 0.0


def test_rgb_only_sample_in_mixed_batch_equals_rgb_only_forward():
  """A sample whose stream is absent (id -1) must see nothing of that stream."""
  config = _config()
  model = build_model(config)
  params = _perturb(init_params(config, jax.random.key(0)))
  mixed = _random_inputs(config, 2, [[-1], [1]])
  rgb_mixed, _ = model.apply({"params": params}, **mixed)
  alone = {k: mixed[k] for k in ("rgb", "t_rgb", "caption")}
  rgb_alone, _ = model.apply({"params": params}, **alone)
  np.testing.assert_allclose(rgb_mixed[0], rgb_alone[0], atol=1e-5)
  assert float(jnp.abs(rgb_mixed[1] - rgb_alone[1]).max()) > 1e-4  # Sample 1 uses its stream.


def test_per_modality_heads_and_switcher_depend_on_modality_id():
  for overrides in ({"head_mode": "per_modality"}, {"switcher": "token_add"}):
    config = _config(**overrides)
    model = build_model(config)
    params = _perturb(init_params(config, jax.random.key(0)))
    inputs = _random_inputs(config, 1, [[0]])
    _, depth_v = model.apply({"params": params}, **inputs)
    _, flow_v = model.apply({"params": params}, **{**inputs, "modality_id": jnp.array([[1]])})
    assert float(jnp.abs(depth_v - flow_v).max()) > 1e-4


@pytest.mark.parametrize("overrides", [{"remat": "full"}, {"attention": "chunked",
                                                            "attention_chunk": 16}])
def test_remat_and_chunked_attention_do_not_change_outputs(overrides):
  base = _config()
  params = _perturb(init_params(base, jax.random.key(0)))
  inputs = _random_inputs(base, 2, [[0], [3]])
  ref = build_model(base).apply({"params": params}, **inputs)
  out = build_model(_config(**overrides)).apply({"params": params}, **inputs)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_unscanned_layers_match_scanned():
  scanned_cfg, unrolled_cfg = _config(), _config(scan_layers=False)
  params = _perturb(init_params(scanned_cfg, jax.random.key(0)))
  unrolled = dict(params)
  blocks = unrolled.pop("blocks")["block"]
  for i in range(scanned_cfg.model.num_layers):
    unrolled[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], blocks)
  inputs = _random_inputs(scanned_cfg, 2, [[0], [4]])
  ref = build_model(scanned_cfg).apply({"params": params}, **inputs)
  out = build_model(unrolled_cfg).apply({"params": unrolled}, **inputs)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_rope_tables_are_program_constants(scan_layers):
  """No sin / cos over the token grid in the compiled forward (scanned or not): XLA:CPU fuses
  them into every consumer and evaluates them per batch element and head."""
  config = _config(scan_layers=scan_layers)
  params = init_params(config, jax.random.key(0))
  inputs = _random_inputs(config, 2, [[0], [3]])
  apply = lambda p, x: build_model(config).apply({"params": p}, **x)
  text = jax.jit(apply).lower(params, inputs).compile().as_text()
  sizes = [math.prod(int(d) for d in dims.split(",") if d)
           for dims in re.findall(r"= f32\[([\d,]*)\][^=]* (?:sine|cosine)\(", text)]
  f, h, w, _ = latent_grid(config)
  pt, ph, pw = config.model.patch_size
  joint_tokens = 2 * (f // pt) * (h // ph) * (w // pw)              # RGB + one modality stream
  angles_size = joint_tokens * config.model.dim // config.model.num_heads // 2
  assert sizes, "the timestep embedding's sinusoids should still be there"
  assert max(sizes) < angles_size, (sizes, angles_size)


def test_precomputed_text_embeddings():
  config = _config(text_encoder="precomputed", text_dim=24)
  model = build_model(config)
  inputs = dummy_inputs(config, 2)
  assert inputs["caption"]["embedding"].shape == (2, config.data.caption_len, 24)
  params = nn.unbox(model.init(jax.random.key(0), **inputs))["params"]
  assert "text_encoder" not in params
  rgb_v, _ = model.apply({"params": params}, **inputs)
  assert rgb_v.shape == inputs["rgb"].shape
  tokens = {"tokens": jnp.zeros((2, 4), int), "mask": jnp.ones((2, 4), bool)}
  with pytest.raises(ValueError, match="prompt must hold 'tokens'"):
    model.apply({"params": params}, **{**inputs, "caption": tokens})
  prompt_tokens = jax.tree.map(lambda x: x[:, None], tokens)
  with pytest.raises(ValueError, match="embeddings under 'embedding'"):
    model.apply({"params": params}, **{**inputs, "caption": tokens, "prompt": prompt_tokens})


def test_pixel_codec_is_exact():
  codec = PixelCodec(spatial_stride=2, temporal_stride=4)
  video = np.random.default_rng(0).integers(0, 256, (2, 9, 8, 12, 3), dtype=np.uint8)
  latents = codec.encode(video)
  assert latents.shape == (2, 3, 4, 6, 48) == (2, *codec.latent_shape(9, 8, 12))
  np.testing.assert_array_equal(codec.to_uint8(codec.decode(latents)), video)
  jax_latents = codec.encode(jnp.asarray(video))
  np.testing.assert_allclose(np.asarray(jax_latents), latents, atol=1e-6)
  with pytest.raises(ValueError, match="frames=8 must be 1 \\+ k\\*4"):
    codec.encode(video[:, :8])


def test_tokenizer_round_trip_and_empty_caption():
  tokens, mask = text.tokenize(["a red ball rolls left", "", "ünïcode"], 32)
  assert tokens.shape == (3, 32) and mask.dtype == bool
  assert text.detokenize(tokens) == ["a red ball rolls left", "", "ünïcode"]
  assert mask[1].sum() == 2  # BOS + EOS: the empty caption for classifier-free guidance.
  truncated, _ = text.tokenize(["x" * 100], 10)
  assert truncated[0, -1] == text.EOS_ID


def test_data_prediction_returns_the_velocity_of_its_clean_estimate():
  """x-prediction: exact v = ε − x_0 when the heads output x_0; zero heads give v = x_t / t."""
  from unity_jax.model.dit import data_to_velocity  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(3), 3)
  x0 = jax.random.normal(keys[0], (2, 3, 4, 4, 6))
  noise = jax.random.normal(keys[1], (2, 3, 4, 4, 6))
  t = jnp.array([0.3, 1.0])
  noisy = (1 - t)[:, None, None, None, None] * x0 + t[:, None, None, None, None] * noise
  np.testing.assert_allclose(data_to_velocity(x0, noisy, t), noise - x0, atol=1e-5)
  # Below min_t the division is clipped (bounded loss weight near clean data).
  np.testing.assert_allclose(data_to_velocity(x0, x0 + 0.01, jnp.array([0.0, 0.001]), 0.05),
                             jnp.full(x0.shape, 0.01 / 0.05), atol=1e-5)

  config = _config(prediction="data")
  inputs = _random_inputs(config, 2, [[0], [1]])
  rgb_v, mod_v = build_model(config).apply({"params": init_params(config, jax.random.key(0))},
                                           **inputs)
  t_rgb = jnp.maximum(inputs["t_rgb"], 0.05)[:, None, None, None, None]
  np.testing.assert_allclose(rgb_v, inputs["rgb"] / t_rgb, rtol=1e-5, atol=1e-5)
  t_mod = jnp.maximum(inputs["t_modality"], 0.05)[:, :, None, None, None, None]
  np.testing.assert_allclose(mod_v, inputs["modality"] / t_mod, rtol=1e-5, atol=1e-5)
