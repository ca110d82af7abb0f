"""The umT5 encoder stack as pure functions over a params pytree.

This mirrors transformers' `UMT5EncoderModel` (models/umt5/modeling_umt5.py) in inference mode:

  x = embed[ids]
  for each layer l:        (scanned over stacked per-layer params)
    x += o(attention(q(n), k(n), v(n)) + bias_l)       n = rms_norm(x, attn_norm_l)
    x += wo(act(wi_0(n)) * wi_1(n))                    n = rms_norm(x, ffn_norm_l)
  out = rms_norm(x, final_norm)

umT5 differs from T5 in one place that matters here: *every* layer has its own relative attention
bias table ([num_buckets, heads]); T5 computes the bias in layer 0 and reuses it. Attention scores
are not scaled by 1/sqrt(d_kv) (T5 folds that into the initialisation of q). The RMS norm takes
the mean of squares in float32, has no bias and subtracts no mean.

Padding: padded keys are excluded from every softmax, exactly as HF's bidirectional mask does.
Padded *queries* are computed like any other row (HF zeroes nothing); `wan_text_embeddings`
zeroes them afterwards the way Wan's pipeline does.

The relative-position buckets depend only on the (static) sequence length, so they are computed
on the host in numpy with the same float32 operations as torch (the log-spaced bucket edges are
sensitive to rounding: e.g. log(4)/log(16)*8 must truncate to the same integer torch gets).

Params layout ({"embed", "layers": {...}, "final_norm"}), with torch Linear weights transposed
to [in, out] so every projection is `x @ w`:
  embed [V, D]; final_norm [D];
  layers/attn_norm [N, D], q/k/v [N, D, H*K], o [N, H*K, D], rel_bias [N, buckets, H],
  layers/ffn_norm [N, D], wi_0/wi_1 [N, D, F], wo [N, F, D].
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# HF dense_act_fn names -> activation (gelu_new / gelu_pytorch_tanh are the tanh approximation).
ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """Encoder geometry (hashable: it is a static argument of the jitted forward)."""
  vocab_size: int
  d_model: int
  d_kv: int
  num_heads: int
  num_layers: int
  d_ff: int
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  act: str = "gelu_new"

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv


class ConfigError(ValueError):
  """A config.json that does not describe a supported umT5 encoder."""


def config_from_hf(hf: dict) -> UMT5Config:
  """UMT5Config from a transformers UMT5Config dict (config.json of UMT5EncoderModel)."""
  if hf.get("model_type") != "umt5":
    # T5 shares layer 0's position bias across layers; loading it as umT5 would be silently wrong.
    raise ConfigError(f"config.json has model_type {hf.get('model_type')!r}; expected 'umt5'")
  ffp = hf.get("feed_forward_proj", "gated-gelu")
  if not ffp.startswith("gated-"):
    raise ConfigError(f"feed_forward_proj {ffp!r} is not gated; only gated FFNs (wi_0, wi_1, "
                      "wo, as in every umT5 release) are supported")
  # HF maps "gated-gelu" to gelu_new for backwards compatibility; otherwise the suffix is the act.
  act = hf.get("dense_act_fn") or ("gelu_new" if ffp == "gated-gelu" else ffp[len("gated-"):])
  if act not in ACTIVATIONS:
    raise ConfigError(f"dense_act_fn {act!r} is not one of {sorted(ACTIVATIONS)}")
  return UMT5Config(
      vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), d_kv=int(hf["d_kv"]),
      num_heads=int(hf["num_heads"]), num_layers=int(hf["num_layers"]), d_ff=int(hf["d_ff"]),
      num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
      max_distance=int(hf.get("relative_attention_max_distance", 128)),
      eps=float(hf.get("layer_norm_epsilon", 1e-6)), act=act)


def param_shapes(config: UMT5Config) -> dict:
  """{'a/b': shape} of every parameter (the flattened params pytree)."""
  n, d, hk, f = config.num_layers, config.d_model, config.inner_dim, config.d_ff
  return {
      "embed": (config.vocab_size, d),
      "final_norm": (d,),
      "layers/attn_norm": (n, d),
      "layers/q": (n, d, hk), "layers/k": (n, d, hk), "layers/v": (n, d, hk),
      "layers/o": (n, hk, d),
      "layers/rel_bias": (n, config.num_buckets, config.num_heads),
      "layers/ffn_norm": (n, d),
      "layers/wi_0": (n, d, f), "layers/wi_1": (n, d, f), "layers/wo": (n, f, d),
  }


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """int32 [L, L]: bidirectional T5 bucket of (key position - query position).

  Half the buckets are for keys after the query. Within each half, distances below
  num_buckets/4 get one bucket each, larger ones log-spaced buckets up to max_distance (all
  further distances share the last one). Same float32 arithmetic as HF's
  `_relative_position_bucket` so the log-spaced edges round identically.
  """
  position = np.arange(length, dtype=np.int64)
  relative = position[None, :] - position[:, None]
  half = num_buckets // 2
  buckets = (relative > 0).astype(np.int64) * half
  distance = np.abs(relative)
  max_exact = half // 2
  with np.errstate(divide="ignore"):   # log(0) for the diagonal, which `is_small` covers
    log_ratio = (np.log(distance.astype(np.float32) / np.float32(max_exact))
                 / np.float32(math.log(max_distance / max_exact)))
    log_ratio = log_ratio * np.float32(half - max_exact)
    large = max_exact + np.where(distance < max_exact, 0, log_ratio).astype(np.int64)
  large = np.minimum(large, half - 1)
  buckets += np.where(distance < max_exact, distance, large)
  return buckets.astype(np.int32)


def rms_norm(x, weight, eps):
  """T5LayerNorm: x / sqrt(mean(x^2) + eps) * weight, statistics in float32. x [..., D]."""
  x = x.astype(jnp.float32)
  variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(variance + eps) * weight.astype(jnp.float32)


def attention(x, layer, buckets, key_mask, config: UMT5Config):
  """Unscaled multi-head self-attention with this layer's relative position bias.

  Args:
    x: float32 [B, L, D] (already normed).
    layer: one layer's params (q, k, v [D, H*K], o [H*K, D], rel_bias [buckets, H]).
    buckets: int32 [L, L] relative position buckets.
    key_mask: bool [B, L], False for padded keys.
  Returns:
    float32 [B, L, D].
  """
  b, length, _ = x.shape
  h, dk = config.num_heads, config.d_kv
  f32 = lambda w: w.astype(jnp.float32)
  q = (x @ f32(layer["q"])).reshape(b, length, h, dk)
  k = (x @ f32(layer["k"])).reshape(b, length, h, dk)
  v = (x @ f32(layer["v"])).reshape(b, length, h, dk)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)                       # no 1/sqrt(d_kv)
  bias = jnp.transpose(f32(layer["rel_bias"])[buckets], (2, 0, 1))   # [H, Lq, Lk]
  scores = scores + bias[None]
  # Like HF's additive mask: padded keys get the most negative float, not -inf, so a row whose
  # keys are all padding stays finite (uniform) instead of NaN.
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, h * dk)
  return out @ f32(layer["o"])


def feed_forward(x, layer, config: UMT5Config):
  """Gated FFN: (act(x @ wi_0) * (x @ wi_1)) @ wo. x float32 [B, L, D] -> [B, L, D]."""
  act = ACTIVATIONS[config.act]
  f32 = lambda w: w.astype(jnp.float32)
  return (act(x @ f32(layer["wi_0"])) * (x @ f32(layer["wi_1"]))) @ f32(layer["wo"])


def encode(params, config: UMT5Config, token_ids, mask):
  """The encoder's last hidden state.

  Args:
    params: the pytree of `param_shapes` (any float dtype; computed in float32).
    config: geometry.
    token_ids: int [B, L].
    mask: {0, 1} [B, L], 1 for real tokens.
  Returns:
    float32 [B, L, D], like HF's `last_hidden_state` (padded rows computed, not zeroed).
  """
  length = token_ids.shape[1]
  buckets = jnp.asarray(relative_position_buckets(length, config.num_buckets,
                                                   config.max_distance))
  key_mask = mask.astype(bool)
  x = params["embed"][token_ids].astype(jnp.float32)

  def layer_step(x, layer):
    x = x + attention(rms_norm(x, layer["attn_norm"], config.eps), layer, buckets, key_mask,
                      config)
    x = x + feed_forward(rms_norm(x, layer["ffn_norm"], config.eps), layer, config)
    return x, None

  x, _ = jax.lax.scan(layer_step, x, params["layers"])
  return rms_norm(x, params["final_norm"], config.eps)


@functools.partial(jax.jit, static_argnums=1)
def encode_jit(params, config, token_ids, mask):
  """`encode` under jit: compiled once per (config, B, L)."""
  return encode(params, config, token_ids, mask)


def init_params(config: UMT5Config, rng) -> dict:
  """Random float32 params with HF's initialiser scales (for tests and benchmarks)."""
  shapes = param_shapes(config)
  d, hk, f = config.d_model, config.inner_dim, config.d_ff
  scales = {"embed": 1.0, "layers/q": (d * config.d_kv) ** -0.5, "layers/k": d ** -0.5,
            "layers/v": d ** -0.5, "layers/o": hk ** -0.5, "layers/rel_bias": d ** -0.5,
            "layers/wi_0": d ** -0.5, "layers/wi_1": d ** -0.5, "layers/wo": f ** -0.5}
  keys = jax.random.split(rng, len(shapes))
  flat = {}
  for key, (path, shape) in zip(keys, sorted(shapes.items())):
    if path in scales:
      flat[path] = scales[path] * jax.random.normal(key, shape, jnp.float32)
    else:   # norms
      flat[path] = jnp.ones(shape, jnp.float32)
  out = {"layers": {}}
  for path, value in flat.items():
    if path.startswith("layers/"):
      out["layers"][path[len("layers/"):]] = value
    else:
      out[path] = value
  return out


def wan_text_embeddings(hidden, mask, length: int = 512):
  """Wan's text conditioning: rows past each sequence's length zeroed, padded/cut to `length`.

  As diffusers' WanPipeline._get_t5_prompt_embeds: keep `hidden[i, :n_i]` with
  n_i = sum(mask[i]) (the mask is a prefix: real tokens, then padding), zeros after, and the
  sequence axis padded with zeros or cut to `length` (Wan uses 512).
  Args:
    hidden: float [B, L, D]; mask: {0, 1} [B, L].
  Returns:
    [B, length, D] of hidden's dtype.
  """
  hidden = jnp.asarray(hidden)
  lengths = jnp.sum(jnp.asarray(mask) > 0, axis=1)
  keep = jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]
  hidden = jnp.where(keep[..., None], hidden, jnp.zeros((), hidden.dtype))
  if hidden.shape[1] >= length:
    return hidden[:, :length]
  return jnp.pad(hidden, ((0, 0), (0, length - hidden.shape[1]), (0, 0)))
