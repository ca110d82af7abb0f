"""One AdamW training step of unity_jax's `small` config against diffusers' Wan transformer under
PyTorch, timed in the same run on the same CPU cores, so the ratio between them stays visible.

  python benchmarks/peer.py [--quick] [--repeats 4] [--threads 2] [--out RESULT.json]

Needs the `parity` extra (torch, diffusers): pip install -e ".[parity]".

Both sides train at the same geometry: `configs/small.py` (d 256, 6 layers, 4 heads, ffn 1024,
48-channel latents of 5 x 32 x 32 per stream, RGB and one modality stream side by side, batch 4 =
10,240 tokens per step, fp32, one CPU device):
  unity_jax   the AOT-compiled train step of benchmarks/train_step.py (objective, DiT forward and
              backward, AdamW, EMA; layers unrolled; batches already on the device), with the
              unity-* commands' CPU settings (tuned glibc malloc, dots to Eigen);
  peer        diffusers `WanTransformer3DModel` with the same patch size, width, depth, heads,
              ffn and latent channels on the joint [B, 48, 5, 32, 2 x 32] latent, an MSE loss
              against a random target, backward and `torch.optim.AdamW`; torch with --threads
              intra-op threads (XLA:CPU uses one thread per core) and glibc's default malloc.
What only unity_jax's step does (none of it large at this size): the byte-level text encoder (2
layers, d 128) trained with the DiT, the second cross-attention branch (modality prompt), the
modality switcher MLP, the objective's noising and EMA.

Each side runs in its own worker process, so each keeps its own allocator (glibc reads its
tunables at start-up; the tuned one made torch slower here). After one warm-up step each, this
process asks the two workers for a step in turn, --repeats times, so both see the same load on a
shared machine (an idle worker blocks on its pipe). It prints the medians and their ratio
(unity_jax / peer, above 1 = unity_jax slower). --quick shrinks both to 2 layers and 5-frame
clips (2 latent frames, 4,096 tokens per step) for a check in a few minutes.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
PREFIX = "@peer-bench "  # marks the workers' protocol lines on their stdout


def small_config(quick: bool):
  """configs/small.py as benchmarks/train_step.py times it (imports jax via train_step)."""
  sys.path.insert(0, str(ROOT))
  import train_step as jax_bench  # noqa: PLC0415  (sets the one-device XLA_FLAGS first)
  from unity_jax import config as config_lib  # noqa: PLC0415
  config = jax_bench.benchmark_config("small")
  if quick:
    config.model.update(num_layers=2, attention_chunk=512)
    config.data.num_frames = 5
  config_lib.validate(config, 1)
  return config, jax_bench


def unity_worker(quick: bool):
  """(one-step function, description) for unity_jax's train step."""
  config, jax_bench = small_config(quick)
  import jax  # noqa: PLC0415

  from unity_jax import host_allocator  # noqa: PLC0415
  from unity_jax import model as model_lib  # noqa: PLC0415
  from unity_jax.parallel import mesh as mesh_lib  # noqa: PLC0415
  from unity_jax.train import sources  # noqa: PLC0415
  from unity_jax.train import state as state_lib  # noqa: PLC0415
  compiled, _, _, shardings, mesh, optimizer = jax_bench.compile_step(config)
  holder = {"state": state_lib.create_state(config, mesh, optimizer, shardings), "i": 0}
  source = sources.RandomSource(config, 0)
  batches = [mesh_lib.shard_batch(source.next_batch(i), mesh) for i in range(2)]

  def step():
    holder["state"], metrics = compiled(holder["state"], batches[holder["i"] % 2])
    holder["i"] += 1
    jax.block_until_ready((holder["state"], metrics))

  f, h, w, c = model_lib.latent_grid(config)
  m = config.model
  tokens = jax_bench.tokens_per_sample(config) * config.train.batch_size
  params = sum(x.size for x in jax.tree.leaves(holder["state"].params))
  return step, {
      "geometry": f"d {m.dim}, {m.num_layers} layers, {m.num_heads} heads, ffn {m.ffn_dim}, "
                  f"latents {c} x {f} x {h} x (2 x {w}), batch {config.train.batch_size} = "
                  f"{tokens} tokens/step, fp32",
      "tokens": int(tokens), "params": int(params),
      "runtime": f"jax {jax.__version__} on {jax.devices()[0].platform}, "
                 f"{host_allocator.describe()}"}


def peer_worker(quick: bool, threads: int):
  """(one-step function, description) for diffusers' WanTransformer3DModel + torch AdamW."""
  import torch  # noqa: PLC0415
  from diffusers import WanTransformer3DModel  # noqa: PLC0415

  config, _ = small_config(quick)
  from unity_jax import host_allocator  # noqa: PLC0415
  from unity_jax import model as model_lib  # noqa: PLC0415
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  m = config.model
  frames, height, width, channels = model_lib.latent_grid(config)
  streams = 1 + m.num_modality_streams
  model = WanTransformer3DModel(
      patch_size=tuple(m.patch_size), num_attention_heads=m.num_heads,
      attention_head_dim=m.dim // m.num_heads, in_channels=channels, out_channels=channels,
      text_dim=m.text_dim, freq_dim=m.freq_dim, ffn_dim=m.ffn_dim, num_layers=m.num_layers)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  batch = int(config.train.batch_size)
  latents = torch.randn(batch, channels, frames, height, streams * width)
  target = torch.randn_like(latents)
  timestep = torch.randint(0, 1000, (batch,))
  text = torch.randn(batch, config.data.caption_len, m.text_dim)

  def step():
    optimizer.zero_grad(set_to_none=True)
    out = model(latents, timestep, text, return_dict=False)[0]
    torch.nn.functional.mse_loss(out, target).backward()
    optimizer.step()

  params = sum(p.numel() for p in model.parameters())
  return step, {"params": int(params),
                "runtime": f"torch {torch.__version__} with {threads} threads, "
                           f"{host_allocator.describe()}"}


def serve(step, description: dict) -> None:
  """Worker loop: one warm-up step, then a timed step per line read from stdin."""
  step()
  print(PREFIX + json.dumps(description), flush=True)
  for _ in sys.stdin:
    start = time.perf_counter()
    step()
    print(PREFIX + str(time.perf_counter() - start), flush=True)


class Worker:
  def __init__(self, side: str, args, env: dict):
    command = [sys.executable, __file__, "--worker", side, "--threads", str(args.threads)]
    self.process = subprocess.Popen(command + (["--quick"] if args.quick else []), env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.side = side

  def read(self) -> str:
    """The worker's next protocol line (other output, e.g. a library's, is passed through)."""
    while line := self.process.stdout.readline():
      if line.startswith(PREFIX):
        return line[len(PREFIX):]
      print(line, end="")
    raise RuntimeError(f"the {self.side} worker exited ({self.process.wait()})")

  def step(self) -> float:
    self.process.stdin.write("step\n")
    self.process.stdin.flush()
    return float(self.read())

  def close(self):
    self.process.stdin.close()
    self.process.wait(timeout=60)


def median(values: list[float]) -> float:
  ordered = sorted(values)
  mid = len(ordered) // 2
  return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="2 layers, 4,096 tokens per step")
  parser.add_argument("--repeats", type=int, default=4, help="timed steps per side, alternated")
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--out", default=None, help="write the results as JSON")
  parser.add_argument("--worker", choices=("unity", "peer"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == "unity":
    from unity_jax import host_allocator  # noqa: PLC0415
    host_allocator.maybe_reexec()  # the unity-* commands' allocator, as unity-train runs
    serve(*unity_worker(args.quick))
    return
  if args.worker == "peer":
    serve(*peer_worker(args.quick, args.threads))
    return
  try:
    import torch  # noqa: F401, PLC0415
    import diffusers  # noqa: F401, PLC0415
  except ImportError as e:
    sys.exit(f"benchmarks/peer.py needs torch and diffusers ({e}); install the parity extra: "
             f"pip install -e \".[parity]\"")

  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  # Built one after the other (compiles and model set-up do not overlap), then alternated.
  unity = Worker("unity", args, env)
  unity_info = json.loads(unity.read())
  peer = Worker("peer", args, env)
  peer_info = json.loads(peer.read())
  print(f"geometry: {unity_info['geometry']}")
  print(f"unity_jax: {unity_info['runtime']}; {unity_info['params'] / 1e6:.2f}M parameters")
  print(f"peer:      diffusers WanTransformer3DModel, {peer_info['runtime']}; "
        f"{peer_info['params'] / 1e6:.2f}M parameters")
  unity_times, peer_times = [], []
  try:
    for i in range(args.repeats):
      unity_times.append(unity.step())
      peer_times.append(peer.step())
      print(f"  repeat {i + 1}: unity_jax {unity_times[-1]:.3f} s, peer {peer_times[-1]:.3f} s",
            flush=True)
  finally:
    unity.close()
    peer.close()
  unity_s, peer_s = median(unity_times), median(peer_times)
  name = "quick" if args.quick else "small"
  print(f"unity_jax {name} step:    {unity_s:.3f} s (median of {args.repeats})")
  print(f"diffusers Wan + torch:  {peer_s:.3f} s (median of {args.repeats})")
  print(f"ratio unity_jax / peer: {unity_s / peer_s:.3f} (above 1: unity_jax slower)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"quick": args.quick, "tokens_per_step": unity_info["tokens"],
                 "unity_jax_step_s": unity_s, "peer_step_s": peer_s, "ratio": unity_s / peer_s,
                 "unity_jax_step_times_s": unity_times, "peer_step_times_s": peer_times,
                 "unity_jax_params": unity_info["params"], "peer_params": peer_info["params"]},
                f, indent=1)


if __name__ == "__main__":
  main()
