"""Orbax checkpoints of (train state, data iterator), and digests of their bits.

A checkpoint at step s is a directory `<workdir>/checkpoints/s/` with two
items: `state` (the TrainState's arrays, via StandardSave) and `data` (the
Grain iterator's position, JSON per process). Saving both together is what
makes a resumed run see the same batches an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtrain.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
  """Starts an asynchronous save; the device arrays are copied before it returns."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_arrays(state)),
      data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)


def restore(manager: ocp.CheckpointManager, step: int, state, data_iterator):
  """`state` with its arrays read from checkpoint `step`; moves `data_iterator` there too.

  `state` gives the structure, dtypes and shardings to restore into.
  """
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return state.replace(**restored.state)


def _arrays(state) -> dict[str, Any]:
  """The TrainState's array fields as a plain dict (what a checkpoint holds)."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "model_state": state.model_state, "rng": state.rng}


def load_arrays(workdir: str, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, arrays) of a checkpoint, read without the model's code (for `inspect`)."""
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise UserError(f"{checkpoint_dir(workdir)} holds no checkpoint")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, jax.tree.map(np.asarray, restored.state)


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_digest(tree) -> str:
  """SHA-256 of a pytree's leaves in canonical path order: path, dtype, shape, raw bytes.

  Paths are '/'-joined key names, so a live state and the same state read back
  from a checkpoint (as plain dicts) give the same digest.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  named = sorted(("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves)
  h = hashlib.sha256()
  for name, leaf in named:
    array = np.ascontiguousarray(jax.device_get(leaf))
    h.update(f"{name}:{array.dtype.str}:{array.shape}\n".encode())
    h.update(array.tobytes())
  return h.hexdigest()
