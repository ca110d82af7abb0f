"""Device mesh and shardings from config (logical axis names -> NamedSharding)."""

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unity_jax import config as config_lib
from unity_jax.parallel import rules as rules_lib

AXES = config_lib.MESH_AXES


def make_mesh(config, devices=None) -> Mesh:
  """A (data, fsdp, tensor, context) mesh over `devices` (default: all) with Auto axes."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = config_lib.mesh_shape(config, devices.size)
  return Mesh(devices.reshape([sizes[a] for a in AXES]), AXES)


def logical_to_sharding(logical_specs, mesh: Mesh, config):
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_lib.rules_for(config.mesh.rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over data × fsdp; other axes replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def shard_batch(batch, mesh: Mesh):
  """Places a host pytree of arrays with the batch axis sharded over data × fsdp."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
