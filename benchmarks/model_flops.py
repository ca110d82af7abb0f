"""Model FLOPs: XLA's cost analysis next to the analytic estimate, and every preset's size.

  python benchmarks/model_flops.py            # tiny + small FLOPs, parameter counts of all configs

For tiny and small it compiles the forward+backward of the flow loss for one training batch and
prints XLA's FLOP count next to the analytic count (6 · matmul FLOPs per token plus attention,
3× the forward). For every config it prints the parameter count from abstract shapes; the 5B
preset should be within 5% of 5.0B transformer parameters.
"""

import math
import pathlib
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unity_jax import config as config_lib  # noqa: E402
from unity_jax.flow import batch as batch_lib  # noqa: E402
from unity_jax.flow import objective  # noqa: E402
from unity_jax.model import build_model, dummy_inputs, init_params, latent_grid  # noqa: E402
from unity_jax.model.codec import make_codec  # noqa: E402


def analytic_forward_flops(config, batch_size: int, num_streams: int = 1) -> float:
  """Matmul FLOPs of one forward pass (2 per multiply-add), transformer blocks + text + heads."""
  m, d = config.model, config.model.dim
  f, h, w, c = latent_grid(config)
  pt, ph, pw = m.patch_size
  tokens_per_stream = (f // pt) * (h // ph) * (w // pw)
  groups = 1 + num_streams
  n = groups * tokens_per_stream                       # joint sequence length
  text_len = max(config.data.caption_len, config.data.prompt_len)
  patch_dim = c * pt * ph * pw
  per_layer = (
      n * 2 * 4 * d * d                                # self-attention q, k, v, o
      + 2 * 2 * n * n * d                              # scores and weighted sum
      + n * 2 * 2 * d * d                              # cross-attention q, o
      + groups * text_len * 2 * 2 * d * d              # cross-attention k, v on each context
      + 2 * 2 * n * text_len * d                       # cross-attention scores and sum
      + n * 2 * 2 * d * m.ffn_dim)                     # feed-forward
  embed_and_heads = n * 2 * patch_dim * d * 2          # patch embedding + output heads
  text = 0.0
  if m.text_encoder == "builtin":
    td = m.text_dim
    text = groups * (m.text_layers * (text_len * 2 * (4 * td * td + 8 * td * td)
                                      + 4 * text_len * text_len * td))
  text += groups * text_len * 2 * (m.text_dim * d + d * d)   # text projection MLP
  return batch_size * (m.num_layers * per_layer + embed_and_heads + text)


def xla_train_flops(config, batch_size: int) -> float:
  """FLOPs XLA counts for value_and_grad of the flow loss on one batch."""
  model, codec = build_model(config), make_codec(config)
  params = init_params(config, jax.random.key(0))
  batch = batch_lib.random_pipeline_batch(config, batch_size, seed=0)

  def loss(params, batch, rng):
    return objective.loss_fn(params, model.apply, batch_lib.to_latent_batch(batch, codec), rng,
                             config.objective)[0]
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, batch, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def parameter_count(config) -> int:
  model = build_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config, 1)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def main():
  print("== forward+backward FLOPs per training batch (fp32) ==")
  print(f"{'config':<8} {'batch':>5} {'XLA GFLOP':>10} {'analytic GFLOP':>15} {'ratio':>6}")
  for name in ("tiny", "small"):
    config = config_lib.load_config(str(ROOT / "configs" / f"{name}.py"))
    config.model.update(dtype="float32", scan_layers=False)  # XLA counts a loop body once.
    batch = config.train.batch_size
    xla = xla_train_flops(config, batch)
    analytic = 3 * analytic_forward_flops(config, batch)
    print(f"{name:<8} {batch:>5} {xla / 1e9:>10.2f} {analytic / 1e9:>15.2f} "
          f"{xla / analytic:>6.2f}")
  print("\n== parameter counts ==")
  for path in sorted((ROOT / "configs").rglob("*.py")):
    config = config_lib.load_config(str(path))
    count = parameter_count(config)
    note = ""
    if path.stem == "unity_5b":
      note = f"  ({(count - 5e9) / 5e9:+.2%} vs 5.0B target)"
    print(f"{path.stem:<14} {count:>16,}{note}")


if __name__ == "__main__":
  main()
