"""Orbax checkpoints of (train state, data iterator), and digests of their bits.

A checkpoint at step s is a directory `<workdir>/checkpoints/s/` with two
items: `state` (the TrainState's arrays, via StandardSave) and `data` (the
Grain iterator's position, JSON per process). Saving both together is what
makes a resumed run see the same batches an uninterrupted one would have.
A loop of one's own may save and restore a state alone (`data_iterator=None`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtrain.run import parallel
from jaxtrain.errors import UserError

log = logging.getLogger("jaxtrain")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
  """Starts an asynchronous save; the device arrays are copied before it returns.

  `data_iterator` (anything with Grain's get_state/set_state) is saved beside
  the state, or left out with None.
  """
  items = {"state": ocp.args.StandardSave(state_arrays(state))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, step: int, state, data_iterator=None):
  """`state` with its arrays read from checkpoint `step`; moves `data_iterator` there too.

  `state` gives the structure, dtypes and shardings to restore into; with no
  `data_iterator` only the state is read.
  """
  items = {"state": ocp.args.StandardRestore(state_target(state))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return state.replace(**restored.state)


def saved_steps(workdir: str) -> list[int]:
  """The steps with a checkpoint directory in `workdir` (read or not), oldest first."""
  root = checkpoint_dir(workdir)
  return sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []


def state_target(state):
  """The shapes, dtypes and shardings of `state`'s arrays: what a restore reads into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state_arrays(state))


def quarantine_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "corrupt_checkpoints")


def _quarantine(workdir: str, step: int) -> str:
  """Moves an unreadable checkpoint aside (never deletes it) so a new save can take its step."""
  target = os.path.join(quarantine_dir(workdir), str(step))
  suffix = 0
  while os.path.exists(target):
    suffix += 1
    target = os.path.join(quarantine_dir(workdir), f"{step}.{suffix}")
  os.makedirs(quarantine_dir(workdir), exist_ok=True)
  shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), target)
  return target


def _reason(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def restore_latest_valid(workdir: str, state, data_iterator, **manager_options):
  """(manager, state) from the newest checkpoint that restores; older ones are tried in turn.

  A checkpoint that fails to restore (a missing item, a truncated array
  file, garbage metadata) gets a warning naming its step and is moved to
  `corrupt_checkpoints/`; no readable checkpoint is ever touched. Returns
  the input `state` unchanged when no checkpoint restores.
  """
  while True:
    manager = make_manager(workdir, **manager_options)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      return manager, state
    try:
      return manager, restore(manager, steps[0], state, data_iterator)
    except Exception as e:  # Orbax, TensorStore and JSON raise many types here
      manager.close()
      moved = _quarantine(workdir, steps[0])
      log.warning("checkpoint at step %d is unreadable (%s); moved it to %s and "
                  "trying the next newest", steps[0], _reason(e), moved)


def _local_target(workdir: str, step: int):
  return local_target(os.path.join(checkpoint_dir(workdir), str(step), "state"))


def local_target(path: str):
  """Shapes and dtypes of the pytree saved at `path`, to read onto this process's first device.

  Orbax refuses a target-less restore of arrays saved from other devices (a
  GPU box's run inspected on a laptop); this target works whatever saved it.
  """
  metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)


def _restore_local(manager, workdir: str, step: int):
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_local_target(workdir, step)))).state


def verify(workdir: str) -> dict[int, str]:
  """{step: reason} for every checkpoint in `workdir` that does not read back whole."""
  manager = make_manager(workdir, read_only=True)
  bad = {}
  for step in manager.all_steps():
    try:
      _restore_local(manager, workdir, step)
      with open(os.path.join(checkpoint_dir(workdir), str(step), "_CHECKPOINT_METADATA")) as f:
        saved_items = json.load(f)["item_handlers"]  # a state-only save has no "data"
      data = os.path.join(checkpoint_dir(workdir), str(step), "data")
      for name in os.listdir(data) if "data" in saved_items else ():
        if name.endswith(".json"):
          with open(os.path.join(data, name)) as f:
            json.load(f)
    except Exception as e:
      bad[step] = _reason(e)
  return bad


def state_arrays(state) -> dict[str, Any]:
  """The TrainState's array fields as a plain dict (what a checkpoint holds)."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "model_state": state.model_state, "rng": state.rng}


def load_arrays(workdir: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, arrays) of a checkpoint, read without the model's code (for `inspect`).

  With no `step`, the newest checkpoint that reads back whole.
  """
  manager = make_manager(workdir, read_only=True)
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise UserError(f"{checkpoint_dir(workdir)} holds no checkpoint")
  for candidate in steps:
    try:
      return candidate, jax.tree.map(np.asarray, _restore_local(manager, workdir, candidate))
    except Exception as e:  # Orbax and TensorStore raise many types here
      error = e
  raise UserError(f"no checkpoint in {checkpoint_dir(workdir)} reads back whole "
                  f"(step {steps[-1]}: {_reason(error)})")


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_digest(tree) -> str:
  """SHA-256 of a pytree's leaves in canonical path order: path, dtype, shape, raw bytes.

  Paths are '/'-joined key names, so a live state and the same state read back
  from a checkpoint (as plain dicts) give the same digest. Arrays sharded
  across processes are gathered: every process must call it.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  named = sorted(("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves)
  h = hashlib.sha256()
  for name, leaf in named:
    array = np.ascontiguousarray(parallel.host_value(leaf))
    h.update(f"{name}:{array.dtype.str}:{array.shape}\n".encode())
    h.update(array.tobytes())
  return h.hexdigest()
