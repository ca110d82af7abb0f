"""Reading a Hugging Face `UMT5EncoderModel` directory into the umT5 params pytree.

The directory is what `UMT5EncoderModel.save_pretrained` writes (config.json and
model*.safetensors, sharded with model.safetensors.index.json for umT5-XXL), e.g. the
`text_encoder/` folder of a Wan `*-Diffusers` release. Tensors are read one at a time through
`wan.safetensors_io.SafetensorsCheckpoint` (memory-mapped); with `mesh=`, each parameter is built
with `jax.make_array_from_callback`, whose callback reads only the slice one device holds, so
umT5-XXL (5.7B parameters, 23 GB in float32) never sits whole on one host.

Name mapping (HF -> ours; torch Linear weights [out, in] are transposed to [in, out]; `i` is the
layer, stacked on a leading axis so the forward can scan):

  shared.weight (or encoder.embed_tokens.weight)               -> embed          [V, D]
  encoder.block.i.layer.0.layer_norm.weight                    -> layers/attn_norm[i]
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o}.weight (T)   -> layers/{q,k,v,o}[i]
  encoder.block.i.layer.0.SelfAttention.relative_attention_bias.weight -> layers/rel_bias[i]
  encoder.block.i.layer.1.layer_norm.weight                    -> layers/ffn_norm[i]
  encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight (T) -> layers/{wi_0,wi_1,wo}[i]
  encoder.final_layer_norm.weight                              -> final_norm     [D]

`shared.weight` and `encoder.embed_tokens.weight` are tied in HF; save_pretrained writes one, some
exports both. When both are present the second is read in row blocks and must equal the first
(so every stored tensor is consumed and a mismatched pair is an error, not a silent choice).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from unity_jax.umt5 import model as model_lib
from unity_jax.wan.safetensors_io import CheckpointError, SafetensorsCheckpoint

EMBED_NAMES = ("shared.weight", "encoder.embed_tokens.weight")
_ATTN = "encoder.block.{i}.layer.0.SelfAttention.{w}.weight"
_FFN = "encoder.block.{i}.layer.1.DenseReluDense.{w}.weight"
# (our path under layers/, HF name template, transposed)
LAYER_ENTRIES = (
    ("attn_norm", "encoder.block.{i}.layer.0.layer_norm.weight", False),
    ("q", _ATTN.replace("{w}", "q"), True),
    ("k", _ATTN.replace("{w}", "k"), True),
    ("v", _ATTN.replace("{w}", "v"), True),
    ("o", _ATTN.replace("{w}", "o"), True),
    ("rel_bias", _ATTN.replace("{w}", "relative_attention_bias"), False),
    ("ffn_norm", "encoder.block.{i}.layer.1.layer_norm.weight", False),
    ("wi_0", _FFN.replace("{w}", "wi_0"), True),
    ("wi_1", _FFN.replace("{w}", "wi_1"), True),
    ("wo", _FFN.replace("{w}", "wo"), True),
)
FINAL_NORM = "encoder.final_layer_norm.weight"
# Which axis of each of our leaves is the model width D (sharded over the mesh axis).
EMBED_AXIS = {"embed": 1, "final_norm": None, "layers/attn_norm": None, "layers/ffn_norm": None,
              "layers/q": 1, "layers/k": 1, "layers/v": 1, "layers/o": 2, "layers/rel_bias": None,
              "layers/wi_0": 1, "layers/wi_1": 1, "layers/wo": 2}
_EQUALITY_BLOCK = 4096   # rows of the tied embedding compared at a time


def expected_tensors(config: model_lib.UMT5Config) -> dict:
  """{HF name: (our path, layer or None, transposed, stored shape)} (embedding excluded)."""
  shapes = model_lib.param_shapes(config)
  out = {FINAL_NORM: ("final_norm", None, False, shapes["final_norm"])}
  for path, template, transposed in LAYER_ENTRIES:
    layer_shape = shapes["layers/" + path][1:]
    stored = tuple(reversed(layer_shape)) if transposed else layer_shape
    for i in range(config.num_layers):
      out[template.format(i=i)] = ("layers/" + path, i, transposed, stored)
  return out


def _check(checkpoint, config, what, allow_decoder) -> list[str]:
  """Raises CheckpointError on a missing/unexpected tensor or shape; returns the embed names."""
  expected = {k: v[3] for k, v in expected_tensors(config).items()}
  embed_shape = (config.vocab_size, config.d_model)
  found = set(checkpoint.keys())
  embeds = [n for n in EMBED_NAMES if n in found]
  if not embeds:
    raise CheckpointError(f"{what}: missing tensor 'shared.weight' (or "
                          f"'encoder.embed_tokens.weight'), expected shape {embed_shape}")
  for name in embeds:
    expected[name] = embed_shape
  missing = sorted(set(expected) - found)
  if missing:
    raise CheckpointError(f"{what}: missing tensor {missing[0]!r} (expected shape "
                          f"{expected[missing[0]]}; {len(missing)} missing in all)")
  skip = ("decoder.", "lm_head.") if allow_decoder else ()
  unexpected = sorted(n for n in found - set(expected) if not n.startswith(skip))
  if unexpected:
    hint = ("; a full UMT5 (encoder-decoder) checkpoint loads with allow_decoder=True"
            if any(n.startswith(("decoder.", "lm_head.")) for n in unexpected) else "")
    raise CheckpointError(f"{what}: unexpected tensor {unexpected[0]!r} of shape "
                          f"{checkpoint.shape(unexpected[0])} ({len(unexpected)} unexpected in "
                          f"all; the umT5 encoder has no parameter it maps to){hint}")
  for name, shape in sorted(expected.items()):
    if checkpoint.shape(name) != tuple(shape):
      raise CheckpointError(f"{what}: tensor {name!r} has shape {checkpoint.shape(name)}, "
                            f"expected {tuple(shape)}")
  return embeds


def shardings(config: model_lib.UMT5Config, mesh=None, axis: str = "fsdp") -> dict:
  """{'a/b': Sharding}: the model width D sharded over `axis` of `mesh` where it divides.

  Sharding D (not the vocabulary) keeps the embedding lookup a local gather; leaves whose D
  does not divide (or a mesh without `axis`) are replicated. None: the first device.
  """
  shapes = model_lib.param_shapes(config)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {path: device for path in shapes}
  size = mesh.shape.get(axis, 1)
  out = {}
  for path, shape in shapes.items():
    spec = [None] * len(shape)
    dim = EMBED_AXIS[path]
    if dim is not None and size > 1 and shape[dim] % size == 0:
      spec[dim] = axis
    out[path] = NamedSharding(mesh, P(*spec))
  return out


def _full_index(index, ndim):
  index = tuple(index) + (slice(None),) * (ndim - len(index))
  return index


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked, layer, i):
  return jax.lax.dynamic_update_index_in_dim(stacked, layer, i, 0)


def _leaf(checkpoint, path, names, transposed, shape, sharding, dtype):
  """One parameter as a jax.Array; `names` is one HF name, or one per layer (stacked).

  A stacked leaf is placed one layer at a time into a donated buffer, so the host holds at most
  one layer's device slices (XXL's wi_0 is 4 GB in float32 over its 24 layers).
  """

  def reader(name):   # index: slices in our (unstacked) layout
    def read(index):
      index = _full_index(index, len(shape) - (1 if path.startswith("layers/") else 0))
      stored_index = tuple(reversed(index)) if transposed else index
      array = checkpoint.read(name, stored_index)
      return (array.T if transposed else array).astype(dtype)
    return read

  if not path.startswith("layers/"):
    return jax.make_array_from_callback(shape, sharding, reader(names[0]))
  layer_sharding = sharding
  if isinstance(sharding, NamedSharding):
    layer_sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
  stacked = jnp.zeros(shape, dtype, device=sharding)
  for i, name in enumerate(names):
    layer = jax.make_array_from_callback(shape[1:], layer_sharding, reader(name))
    stacked = _set_layer(stacked, layer, i)
  return stacked


def _check_tied(checkpoint, names, what) -> None:
  """Both tied embedding tensors present: they must be equal (compared in row blocks)."""
  rows = checkpoint.shape(names[0])[0]
  for start in range(0, rows, _EQUALITY_BLOCK):
    block = slice(start, min(rows, start + _EQUALITY_BLOCK))
    if not np.array_equal(checkpoint.read(names[0], (block,)), checkpoint.read(names[1], (block,))):
      raise CheckpointError(f"{what}: {names[0]!r} and {names[1]!r} are both present but differ "
                            f"(rows {block.start}..{block.stop}); they are tied in umT5")


def load_params(model_dir: str, mesh=None, axis: str = "fsdp", dtype=jnp.float32,
                allow_decoder: bool = False):
  """(params, UMT5Config) from a UMT5EncoderModel directory.

  Args:
    model_dir: config.json + model*.safetensors (+ index).
    mesh: place each leaf on `shardings(config, mesh, axis)` (None: the first device).
    axis: the mesh axis the model width is sharded over.
    dtype: stored dtype of the params (float32, or bfloat16 to halve memory; the forward
      computes in float32 either way).
    allow_decoder: skip `decoder.*` / `lm_head.*` tensors of a full UMT5 checkpoint
      (google/umt5-*); otherwise they are unexpected.
  Raises:
    CheckpointError naming the first missing/unexpected tensor or mismatched shape;
    model.ConfigError for a config that is not a gated umT5.
  """
  checkpoint = SafetensorsCheckpoint(model_dir)
  config = model_lib.config_from_hf(checkpoint.config)
  embeds = _check(checkpoint, config, model_dir, allow_decoder)
  if len(embeds) == 2:
    _check_tied(checkpoint, embeds, model_dir)
  shapes = model_lib.param_shapes(config)
  placed = shardings(config, mesh, axis)
  grouped = {"embed": ([embeds[0]], False)}
  for name, (path, layer, transposed, _) in expected_tensors(config).items():
    names, _ = grouped.setdefault(path, ([None] * config.num_layers if layer is not None else [],
                                         transposed))
    if layer is None:
      names.append(name)
    else:
      names[layer] = name
  params = {"layers": {}}
  for path, (names, transposed) in grouped.items():
    leaf = _leaf(checkpoint, path, names, transposed, shapes[path], placed[path], dtype)
    if path.startswith("layers/"):
      params["layers"][path[len("layers/"):]] = leaf
    else:
      params[path] = leaf
  return params, config
