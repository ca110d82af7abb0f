"""Training-step speed and memory for tiny and small, with the machine's matmul rate measured in
the same run.

  python benchmarks/train_step.py [--configs tiny,small] [--steps 10] [--out RESULT.json]

For each config (full geometry, its global batch, fp32, one CPU device):
  step time       median wall time of the AOT-compiled train step (state donated; batches
                  already on the device, so input generation is excluded), after 2 warm-up steps;
  tokens/s        joint tokens (RGB + modality streams) per sample x batch / step time;
  model FLOPs     XLA cost analysis of the compiled step (forward, backward, optimizer, EMA);
                  layers are unrolled (model.scan_layers=False) because XLA counts a loop body
                  once — the unrolled step is also the one timed; with chunked attention the
                  FLOPs are counted on the same step with dot-product attention;
  matmul FLOP/s   best of 3 dense fp32 2048x2048 matmuls, measured right after every timed step
                  (the machine is shared: each step and its matmul figure see the same load),
                  compiled both with XLA's defaults and with the step's compiler options
                  (unity_jax/xla_options.py: dots to Eigen on CPU); the faster one counts;
  MFU-proxy       (model FLOPs / step time) / matmul FLOP/s per step, the median over steps
                  (and the range);
  memory          per-device bytes from memory_analysis() of the compiled step on 1 device and
                  on 8 fake devices with 8-way FSDP (mesh fsdp=8; batch raised to 8 if smaller),
                  the 8-device part in a subprocess (XLA_FLAGS must be set before jax starts),
                  plus the train state bytes held per device vs total / 8 (target <= 1.1);
  allocator       the script re-executes itself with the tuned glibc malloc of the unity-*
                  commands (unity_jax/host_allocator.py: no per-step page faults on XLA:CPU's
                  temporaries); UNITY_JAX_MALLOC_TUNING=0 measures the default allocator.
--out writes {"tiny": {"step_time_s": ..., ...}, "small": {...}}, the --step-times input of
benchmarks/data.py.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

from unity_jax import host_allocator

if __name__ == "__main__":
  host_allocator.maybe_reexec()
# One device in this process (any inherited fake-device flag is replaced); see --memory-worker.
if "--memory-worker" not in sys.argv:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unity_jax import config as config_lib  # noqa: E402
from unity_jax import model as model_lib  # noqa: E402
from unity_jax import xla_options  # noqa: E402
from unity_jax.model import codec as codec_lib  # noqa: E402
from unity_jax.parallel import mesh as mesh_lib  # noqa: E402
from unity_jax.train import monitor  # noqa: E402
from unity_jax.train import optim  # noqa: E402
from unity_jax.train import sources  # noqa: E402
from unity_jax.train import state as state_lib  # noqa: E402
from unity_jax.train import step as step_lib  # noqa: E402

MEMORY_KEYS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
               "alias_size_in_bytes")


def benchmark_config(name: str, *, fsdp: int = 1):
  config = config_lib.load_config(str(ROOT / "configs" / f"{name}.py"))
  config.model.update(dtype="float32", scan_layers=False)
  config.train.update(accumulate_steps=1, debug_nan_steps=())
  config.mesh.update(data=1, fsdp=fsdp, tensor=1, context=1)
  if config.train.batch_size % fsdp:
    config.train.batch_size = fsdp
  config_lib.validate(config, fsdp)
  return config


def compile_step(config):
  """(compiled step, compile report, abstract state, shardings, mesh, optimizer)."""
  mesh = mesh_lib.make_mesh(config)
  abstract_params = state_lib.abstract_params(config)
  optimizer = optim.make_optimizer(config, abstract_params)
  abstract, shardings = state_lib.abstract_state(config, mesh, optimizer)
  train_step = step_lib.make_train_step(
      config, model_lib.build_model(config), optimizer,
      optim.lr_multipliers(config, abstract_params))
  jitted = step_lib.jit_train_step(train_step, shardings, mesh)
  batch = step_lib.abstract_batch(sources.batch_shapes(config, config.train.batch_size), mesh)
  codec = codec_lib.training_codec(config)
  compiled, report = step_lib.compile_train_step(jitted, abstract, batch, codec, mesh)
  bound = lambda state, batch: compiled(state, batch, codec)
  return bound, report, abstract, shardings, mesh, optimizer


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Best-of-`repeats` fp32 n x n matmul rate, compiled with XLA's defaults ("default") and with
  the options the train step is compiled with ("step_options"; xla_options: dots to Eigen on
  CPU). The MFU-proxy divides by the faster of the two, so the step's options cannot flatter it.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  rates = {}
  step_options = xla_options.compiler_options(jax.devices()[0].platform)
  for name, options in (("default", {}), ("step_options", step_options)):
    matmul = jax.jit(jnp.dot, compiler_options=options)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a, b).block_until_ready()
      best = min(best, time.perf_counter() - start)
    rates[name] = 2 * n ** 3 / best
  return rates


def tokens_per_sample(config) -> int:
  f, h, w, _ = model_lib.latent_grid(config)
  pt, ph, pw = config.model.patch_size
  return (1 + config.model.num_modality_streams) * (f // pt) * (h // ph) * (w // pw)


def time_steps(config, compiled, shardings, mesh, optimizer, steps: int):
  """Per-step wall times of `steps` train steps after 2 warm-up steps, each followed by a
  dense-matmul rate measurement: ([seconds], [{name: FLOP/s}]), pairs taken under the same
  load."""
  state = state_lib.create_state(config, mesh, optimizer, shardings)
  source = sources.RandomSource(config, 0)
  batches = [mesh_lib.shard_batch(source.next_batch(i), mesh) for i in range(2)]
  for i in range(2):                                                  # warm-up
    state, metrics = compiled(state, batches[i % 2])
  jax.block_until_ready(metrics)
  step_times, matmul_rates = [], []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready((state, metrics))
    step_times.append(time.perf_counter() - start)
    matmul_rates.append(matmul_flops_per_second(repeats=3))
  return step_times, matmul_rates


def memory_worker(name: str) -> None:
  """Runs in a subprocess with 8 fake devices: prints the 8-way FSDP memory figures as JSON."""
  config = benchmark_config(name, fsdp=8)
  _, report, abstract, _, _, _ = compile_step(config)
  state_bytes = state_lib.state_bytes_per_device(abstract)
  per_device = state_bytes["params"] + state_bytes["opt_state"] + state_bytes["ema_params"]
  print(json.dumps({
      "devices": jax.device_count(), "batch_size": config.train.batch_size,
      "memory": {k: report.get(k, 0) for k in MEMORY_KEYS},
      "state_bytes_per_device": per_device, "state_bytes_total": state_bytes["total"],
      "state_ratio_vs_ideal": per_device / (state_bytes["total"] / 8)}))


def fsdp8_memory(name: str) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, __file__, "--memory-worker", name], env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
  if result.returncode:
    raise RuntimeError(f"8-device memory analysis of {name} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def run(name: str, steps: int, with_fsdp: bool) -> dict:
  config = benchmark_config(name)
  compiled, report, abstract, shardings, mesh, optimizer = compile_step(config)
  step_times, matmul_rates = time_steps(config, compiled, shardings, mesh, optimizer, steps)
  flops = report["flops"]
  if config.model.attention == "chunked":
    # The chunked kernel loops over key/query blocks and XLA counts a loop body once: count the
    # same step with dot-product attention (identical arithmetic) instead.
    counting = config.copy_and_resolve_references()
    counting.model.attention = "xla"
    flops = compile_step(counting)[1]["flops"]
  best_rates = [max(rates.values()) for rates in matmul_rates]
  step_time, matmul = float(np.median(step_times)), float(np.median(best_rates))
  ratios = [flops / t / m for t, m in zip(step_times, best_rates)]
  result = {
      "batch_size": int(config.train.batch_size), "tokens_per_sample": tokens_per_sample(config),
      "step_time_s": step_time, "step_times_s": step_times,
      "tokens_per_s": tokens_per_sample(config) * config.train.batch_size / step_time,
      "model_flops_per_step": flops, "model_flops_per_s": flops / step_time,
      "matmul_flops_per_s": matmul, "mfu_proxy": float(np.median(ratios)),
      "matmul_flops_per_s_by_options": {k: float(np.median([r[k] for r in matmul_rates]))
                                        for k in matmul_rates[0]},
      "mfu_proxy_range": [min(ratios), max(ratios)],
      "memory_1_device": {k: report.get(k, 0) for k in MEMORY_KEYS},
      "state_bytes_total": state_lib.state_bytes_per_device(abstract)["total"],
  }
  if with_fsdp:
    result["memory_8_devices_fsdp"] = fsdp8_memory(name)
  return result


def print_result(name: str, r: dict) -> None:
  fmt = monitor.format_bytes
  print(f"== {name} (batch {r['batch_size']}, {r['tokens_per_sample']} joint tokens/sample) ==")
  print(f"  step time          {r['step_time_s'] * 1e3:9.1f} ms (median of "
        f"{len(r['step_times_s'])})")
  print(f"  tokens/s           {r['tokens_per_s']:9.0f}")
  print(f"  model FLOPs/step   {r['model_flops_per_step'] / 1e9:9.2f} GFLOP (XLA cost analysis)")
  print(f"  achieved           {r['model_flops_per_s'] / 1e9:9.1f} GFLOP/s")
  by_options = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in
                         r["matmul_flops_per_s_by_options"].items())
  print(f"  dense matmul       {r['matmul_flops_per_s'] / 1e9:9.1f} GFLOP/s (fp32, median after "
        f"each step of the faster compile; {by_options})")
  low, high = r["mfu_proxy_range"]
  print(f"  MFU-proxy          {r['mfu_proxy']:9.1%} (median of per-step ratios; range "
        f"{low:.1%}-{high:.1%})")
  m1 = r["memory_1_device"]
  print(f"  1 device:  arguments {fmt(m1['argument_size_in_bytes'])}, temporaries "
        f"{fmt(m1['temp_size_in_bytes'])}, outputs {fmt(m1['output_size_in_bytes'])}; "
        f"train state {fmt(r['state_bytes_total'])}")
  if "memory_8_devices_fsdp" in r:
    m8 = r["memory_8_devices_fsdp"]
    mem = m8["memory"]
    print(f"  8 devices, FSDP=8 (batch {m8['batch_size']}), per device: arguments "
          f"{fmt(mem['argument_size_in_bytes'])}, temporaries {fmt(mem['temp_size_in_bytes'])}, "
          f"outputs {fmt(mem['output_size_in_bytes'])}; train state "
          f"{fmt(m8['state_bytes_per_device'])} = {m8['state_ratio_vs_ideal']:.3f} x total/8")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny,small")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", default=None, help="write the results as JSON")
  parser.add_argument("--no-fsdp", action="store_true", help="skip the 8-device memory part")
  parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_worker:
    memory_worker(args.memory_worker)
    return
  options = xla_options.compiler_options(jax.devices()[0].platform)
  print(f"allocator: {host_allocator.describe()}")
  print(f"train-step compiler options: {options or 'XLA defaults'}")
  results = {"allocator": host_allocator.describe(), "compiler_options": options}
  for name in args.configs.split(","):
    results[name] = run(name, args.steps, not args.no_fsdp)
    print_result(name, results[name])
    sys.stdout.flush()
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
