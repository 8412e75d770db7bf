"""Placing state and batches on devices: one `Mesh` with a `data` axis.

The training state is replicated over the mesh; a batch is sharded along its
first dimension on the `data` axis. Each process passes only the rows it
read (`make_array_from_process_local_data`), so the same code serves one
device, all devices of a host, and many hosts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtrain.errors import UserError

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  devices, processes = mesh.devices.size, jax.process_count()
  if batch_size % devices or batch_size % processes:
    raise UserError(f"batch_size={batch_size} must be divisible by the device count "
                    f"({devices}) and the process count ({processes})")


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` on all devices of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def put_batch(local_batch, mesh: Mesh):
  """A global batch sharded on `data`, built from this process's rows."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)
