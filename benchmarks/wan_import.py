"""Import speed and host memory of `wan.load_transformer` at the Wan2.1-T2V-1.3B geometry.

  python benchmarks/wan_import.py [--dir /tmp/wan13b] [--keep] [--param-dtype float32]

Writes a random bf16 checkpoint in the diffusers layout (config.json, two safetensors shards
and their index; written tensor by tensor with unity_jax's own writer, so the benchmark needs
neither torch nor 3 GB of host memory to create it), then imports it in a fresh subprocess
and prints the import time and the peak resident set size (`ru_maxrss`) beside the fp32 size
of the model. On a CPU backend the imported parameters themselves live in host memory, so the
peak includes them; what the import adds on top is the staging: a naive import (a full state
dict, converted) would add about one more copy of the model, the sliced import adds about one
tensor.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

# The parent only writes the checkpoint; the import is measured in a fresh child process.
from unity_jax.wan.safetensors_io import write_safetensors_streaming

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers' transformer/config.json (geometry keys).
WAN21_1_3B = dict(
    _class_name="WanTransformer3DModel", _diffusers_version="0.33.0", patch_size=[1, 2, 2],
    num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
    rope_max_seq_len=1024, pos_embed_seq_len=None)


def _stored_shapes(c):
  """{diffusers name: shape} of a WanTransformer3DModel config (T2V, no image branch)."""
  dim = c["num_attention_heads"] * c["attention_head_dim"]
  out = c["out_channels"] * int(np.prod(c["patch_size"]))
  shapes = {
      "patch_embedding.weight": (dim, c["in_channels"], *c["patch_size"]),
      "patch_embedding.bias": (dim,),
      "condition_embedder.time_embedder.linear_1.weight": (dim, c["freq_dim"]),
      "condition_embedder.time_embedder.linear_1.bias": (dim,),
      "condition_embedder.time_embedder.linear_2.weight": (dim, dim),
      "condition_embedder.time_embedder.linear_2.bias": (dim,),
      "condition_embedder.time_proj.weight": (6 * dim, dim),
      "condition_embedder.time_proj.bias": (6 * dim,),
      "condition_embedder.text_embedder.linear_1.weight": (dim, c["text_dim"]),
      "condition_embedder.text_embedder.linear_1.bias": (dim,),
      "condition_embedder.text_embedder.linear_2.weight": (dim, dim),
      "condition_embedder.text_embedder.linear_2.bias": (dim,),
      "scale_shift_table": (1, 2, dim), "proj_out.weight": (out, dim), "proj_out.bias": (out,),
  }
  for i in range(c["num_layers"]):
    b = f"blocks.{i}."
    shapes[b + "scale_shift_table"] = (1, 6, dim)
    for attn in ("attn1", "attn2"):
      for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        shapes[f"{b}{attn}.{proj}.weight"] = (dim, dim)
        shapes[f"{b}{attn}.{proj}.bias"] = (dim,)
      shapes[f"{b}{attn}.norm_q.weight"] = (dim,)
      shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
    shapes[b + "norm2.weight"] = (dim,)
    shapes[b + "norm2.bias"] = (dim,)
    shapes[b + "ffn.net.0.proj.weight"] = (c["ffn_dim"], dim)
    shapes[b + "ffn.net.0.proj.bias"] = (c["ffn_dim"],)
    shapes[b + "ffn.net.2.weight"] = (dim, c["ffn_dim"])
    shapes[b + "ffn.net.2.bias"] = (dim,)
  return shapes


def write_random_checkpoint(directory, config=WAN21_1_3B, shards=2, seed=0):
  """A random bf16 diffusers transformer directory; returns the parameter count."""
  os.makedirs(directory, exist_ok=True)
  shapes = _stored_shapes(config)
  names = sorted(shapes, key=lambda n: (int(n.split(".")[1]) if n.startswith("blocks.") else -1,
                                        n))
  rng = np.random.default_rng(seed)

  def produce(name):
    shape = shapes[name]
    scale = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 0.1
    return (rng.standard_normal(shape, np.float32) * scale).astype(ml_dtypes.bfloat16)

  weight_map = {}
  per = -(-len(names) // shards)
  for k in range(shards):
    file = f"diffusion_pytorch_model-{k + 1:05d}-of-{shards:05d}.safetensors"
    part = names[k * per:(k + 1) * per]
    write_safetensors_streaming(os.path.join(directory, file),
                                {n: ("BF16", shapes[n]) for n in part}, produce,
                                metadata={"format": "pt"})
    weight_map.update({n: file for n in part})
  count = sum(int(np.prod(s)) for s in shapes.values())
  with open(os.path.join(directory, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 2 * count}, "weight_map": weight_map}, f)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return count


def _peak_rss_bytes():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def run_import(directory, param_dtype):
  """In this (fresh) process: import and report time and peak RSS as one JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  from unity_jax import wan  # pylint: disable=g-import-not-at-top
  config = wan.config_from_diffusers(directory)
  config.model.param_dtype = param_dtype
  jax.devices()
  baseline = _peak_rss_bytes()
  start = time.perf_counter()
  params = wan.load_transformer(directory, config)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  leaves = jax.tree.leaves(params)
  print(json.dumps(dict(
      seconds=seconds, peak_rss=_peak_rss_bytes(), baseline_rss=baseline,
      params_bytes=sum(x.nbytes for x in leaves),
      fp32_bytes=4 * sum(x.size for x in leaves))))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default="/tmp/unity_jax_wan21_1_3b_random")
  parser.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
  parser.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--import-only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.import_only:
    run_import(args.dir, args.param_dtype)
    return
  if not os.path.isfile(os.path.join(args.dir, "config.json")):
    start = time.perf_counter()
    count = write_random_checkpoint(args.dir)
    print(f"wrote {count / 1e9:.2f}B parameters (bf16) to {args.dir} in "
          f"{time.perf_counter() - start:.0f} s")
  try:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--import-only",
                          "--dir", args.dir, "--param-dtype", args.param_dtype],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
  finally:
    if not args.keep:
      shutil.rmtree(args.dir, ignore_errors=True)
  gib = 2.0 ** 30
  staging = r["peak_rss"] - r["baseline_rss"] - r["params_bytes"]
  print(f"import: {r['seconds']:.1f} s; peak RSS {r['peak_rss'] / gib:.2f} GiB "
        f"(process before the import {r['baseline_rss'] / gib:.2f} GiB); imported params "
        f"({args.param_dtype}) {r['params_bytes'] / gib:.2f} GiB; fp32 model "
        f"{r['fp32_bytes'] / gib:.2f} GiB; peak / fp32 model = "
        f"{r['peak_rss'] / r['fp32_bytes']:.2f}; staging above baseline + params "
        f"{staging / gib:.2f} GiB")


if __name__ == "__main__":
  main()
