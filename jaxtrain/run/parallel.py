"""Data parallelism over every device of every process: one `Mesh` with a `data` axis.

A `Layout` says where a run's arrays live and how its steps compile:
- mode "jit" (default): the global batch is sharded along its first
  dimension on `data`; the state is replicated, or with `fsdp` its large
  arrays (params and the optimizer moments shaped like them) are sharded along
  `data` too, and XLA inserts the gathers. The step is `jax.jit`ted as is.
- mode "pmap": every array has a leading device axis; the step runs per
  device under `jax.pmap` with `axis_name="data"`, so `train_step` reduces
  gradients, metrics and batch statistics with collectives.

Either way each process passes only the rows it read
(`make_array_from_process_local_data`), so the same code serves one device,
every device of a host and many hosts. Checkpoints always hold the state
without a device axis, so a run saved under one mode reads back under the other.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtrain.errors import UserError

DATA_AXIS = "data"
MODES = ("jit", "pmap")


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  devices, processes = mesh.devices.size, jax.process_count()
  if batch_size % devices or batch_size % processes:
    raise UserError(
      f"batch_size={batch_size} must be divisible by the device count "
      f"({devices}) and the process count ({processes})"
    )


def replicate(tree, mesh: Mesh):
  """Places every array of `tree` on all devices of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def put_batch(local_batch, mesh: Mesh, batch_axis: int = 0):
  """A global batch sharded on `data` (along `batch_axis`), built from this process's rows."""
  sharding = NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))
  if jax.process_count() == 1:  # the local rows are the global batch: a plain (cheaper) put
    return jax.device_put(local_batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int) -> P:
  """Shards the largest dimension divisible by `num_shards`; small arrays stay whole."""
  if int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [d for d in range(len(shape)) if shape[d] % num_shards == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda d: (shape[d], -d))
  return P(*([None] * dim + [DATA_AXIS]))


def host_value(x) -> np.ndarray:
  """A replicated array's value, read from this process's first device (no cross-host fetch)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      from jax.experimental import multihost_utils

      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a run's state, batches and running totals live, and how its steps compile."""

  mesh: Mesh
  mode: str = "jit"
  fsdp: bool = False
  fsdp_min_size: int = 1 << 14

  @classmethod
  def from_config(cls, parallel_config, devices=None) -> "Layout":
    if parallel_config.mode not in MODES:
      raise UserError(f"config.parallel.mode={parallel_config.mode!r} must be one of {MODES}")
    if parallel_config.fsdp and parallel_config.mode != "jit":
      raise UserError(
        "config.parallel.fsdp=True needs config.parallel.mode='jit' "
        "(pmap keeps a whole copy of the state on every device)"
      )
    return cls(
      make_mesh(devices),
      parallel_config.mode,
      bool(parallel_config.fsdp),
      int(parallel_config.fsdp_min_size),
    )

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @functools.cached_property
  def num_local_devices(self) -> int:
    return sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)

  def check_batch_size(self, batch_size: int) -> None:
    check_batch_size(batch_size, self.mesh)

  # -- state -----------------------------------------------------------------
  def state_shardings(self, state):
    """Per-leaf shardings of the state as checkpoints hold it (no device axis)."""
    if not self.fsdp:
      return jax.tree.map(lambda _: replicated(self.mesh), state)
    return jax.tree.map(
      lambda x: NamedSharding(
        self.mesh, fsdp_spec(np.shape(x), self.num_devices, self.fsdp_min_size)
      ),
      state,
    )

  def place_state(self, state):
    """The state placed as checkpoints hold it: replicated, or fsdp-sharded."""
    return jax.device_put(state, self.state_shardings(state))

  def to_step(self, placed_state):
    """From `place_state`'s layout to the step's (pmap: a copy per device)."""
    return self.stack(placed_state) if self.mode == "pmap" else placed_state

  def from_step(self, state):
    """Back from the step's layout to `place_state`'s (pmap: device 0's copy)."""
    return self._unstack(state) if self.mode == "pmap" else state

  def stack(self, tree):
    """pmap's layout: a leading axis of one copy per device, sharded over the devices."""
    return self._stack(tree)

  # Built once per layout: a fresh jit per call would compile again at every save.
  @functools.cached_property
  def _unstack(self):
    return jax.jit(lambda t: jax.tree.map(lambda x: x[0], t), out_shardings=replicated(self.mesh))

  @functools.cached_property
  def _stack(self):
    n = self.num_devices
    return jax.jit(
      lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), t),
      out_shardings=data_sharded(self.mesh),
    )

  # -- batches and small per-run values ----------------------------------------
  def put_batch(self, local_batch):
    """This process's rows of a global batch, as the step takes them."""
    if self.mode == "pmap":
      n = self.num_local_devices
      local_batch = jax.tree.map(
        lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), local_batch
      )
    return put_batch(local_batch, self.mesh)

  def put_batches(self, local_batches):
    """k global batches stacked on a leading axis ([k, B, ...]), for a step that scans them.

    jit: sharded on the batch axis (1); pmap: each device gets its [k, B/n, ...].
    """
    if self.mode == "pmap":
      n = self.num_local_devices
      local_batches = jax.tree.map(
        lambda x: x.reshape((x.shape[0], n, x.shape[1] // n) + x.shape[2:]).swapaxes(0, 1),
        local_batches,
      )
      return put_batch(local_batches, self.mesh)
    return put_batch(local_batches, self.mesh, batch_axis=1)

  def put_replicated(self, tree):
    """Small values every device keeps a copy of (metric totals, the NaN guard's record)."""
    tree = replicate(tree, self.mesh)
    return self.stack(tree) if self.mode == "pmap" else tree

  def zeros_like(self, shapes):
    """Zeros placed like the step's replicated outputs of these shapes (metric totals)."""
    drop = 1 if self.mode == "pmap" else 0
    return self.put_replicated(jax.tree.map(lambda s: np.zeros(s.shape[drop:], s.dtype), shapes))

  def fetch(self, tree):
    """Host numpy values of a `put_replicated` tree (pmap: device 0's copy)."""
    values = jax.tree.map(host_value, tree)
    return jax.tree.map(lambda x: x[0], values) if self.mode == "pmap" else values

  # -- steps -------------------------------------------------------------------
  def compile(self, fn, *, donate_argnums=(), out_shardings=None):
    """`fn(*args, axis_name=None)` compiled for this layout.

    jit: `jax.jit(fn)`, its outputs placed by `out_shardings` (pass the
    state's, so an fsdp state stays sharded). pmap: `fn(..., axis_name="data")`
    mapped over the devices, where `train_step` and `eval_step` reduce across them.
    """
    if self.mode == "pmap":
      return jax.pmap(
        functools.partial(fn, axis_name=DATA_AXIS),
        axis_name=DATA_AXIS,
        donate_argnums=donate_argnums,
      )
    return jax.jit(fn, donate_argnums=donate_argnums, out_shardings=out_shardings)
