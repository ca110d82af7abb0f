"""Human-readable dump of every parameter's layout: path, shape, logical axes, mesh spec.

The committed dumps under docs/sharding/ are regenerated and compared by a test, so a reader
sees exactly how each preset is laid out on a (data=2, fsdp=2, tensor=2) mesh:
  python -m unity_jax.parallel.dump --config configs/unity_5b.py > docs/sharding/unity_5b.txt
"""

import argparse
import math

import flax.linen as nn
import jax

from unity_jax import config as config_lib
from unity_jax.model import build_model, dummy_inputs
from unity_jax.parallel import rules as rules_lib

DUMP_MESH = {"data": 2, "fsdp": 2, "tensor": 2, "context": 1}


def partition_dump(config, mesh_axes=None) -> str:
  """One line per parameter: `path  shape  logical=(…)  mesh=PartitionSpec(…)`.

  Uses abstract shapes only (jax.eval_shape), so it is cheap even for the largest presets.
  """
  mesh_axes = dict(DUMP_MESH if mesh_axes is None else mesh_axes)
  model = build_model(config)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config, 1)))
  logical = nn.get_partition_spec(boxed)["params"]
  shapes = nn.unbox(boxed)["params"]
  rules = rules_lib.rules_for(config.mesh.rules)
  lines = [f"# config mesh rules: {config.mesh.rules}; mesh {mesh_axes}"]
  total = 0
  flat_specs = jax.tree_util.tree_flatten_with_path(logical)[0]
  flat_shapes = jax.tree_util.tree_leaves(shapes)
  for (path, spec), leaf in zip(flat_specs, flat_shapes):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules)
    lines.append(f"{name}  {tuple(leaf.shape)}  logical={tuple(spec)}  mesh={mesh_spec}")
    total += math.prod(leaf.shape)
  lines.append(f"# total parameters: {total:,}")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="configs/NAME.py[:ARGS]")
  args = parser.parse_args(argv)
  print(partition_dump(config_lib.load_config(args.config)), end="")


if __name__ == "__main__":
  main()
