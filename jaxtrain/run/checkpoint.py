"""Orbax checkpoints of (train state, data iterator), and digests of their bits.

The only module that reads or writes Orbax checkpoints. A workdir keeps two
sets (run/workdir.py names them): the newest N in `checkpoints/`, each with
two items, `state` (the TrainState's arrays, via StandardSave) and `data` (the
Grain iterator's position, JSON per process), so a resumed run sees the same
batches an uninterrupted one would have; and the best k in
`best_checkpoints/` (`state` alone; early_stopping.py ranks them). A loop of
one's own may save and restore a state alone (`data_iterator=None`).

Every save records, in the checkpoint's metadata, a checksum of each saved
array (computed on the devices from the values saved: a sum and a
position-weighted sum of its 32-bit words) and the data position; a restore
recomputes them from what it read and refuses a checkpoint that differs, so
bit rot is never trained on. A checkpoint is usable only if all of it reads
back and verifies, and every reader verifies: resume (`restore_latest_valid`),
the best checkpoint's test (`restore`), fine-tuning, predict and export
(`read_arrays`, `read_pytree`), `inspect` (`verify`, `load_arrays`), in both sets.

Elastic: a checkpoint written by N processes resumes on M. Orbax reads the
arrays into whatever devices the state now has; the data position, which
Grain keeps in one file per process, is the same global step in every one
of them (input_pipeline.py: element g is global step g whatever the process
count), so any of them positions all M iterators.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxtrain import files, registry
from jaxtrain.errors import UserError
from jaxtrain.run import parallel, workdir as wd
from jaxtrain.state import FROZEN

log = logging.getLogger("jaxtrain")


def checkpoint_dir(workdir: str, best: bool = False) -> str:
  """The folder of a workdir's newest checkpoints (or, `best`, of its best ones)."""
  return os.path.abspath(wd.best_checkpoints(workdir) if best else wd.checkpoints(workdir))


def make_manager(
  workdir: str, *, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=async_save,
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_names=("state", "data")
  )


def make_best_manager(workdir: str, read_only: bool = False) -> ocp.CheckpointManager:
  """The best checkpoints' manager: states alone, saved synchronously, none deleted by Orbax
  (early_stopping.py decides which are kept)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None, create=not read_only, read_only=read_only, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir, best=True), options=options, item_names=("state",)
  )


class Unusable(Exception):
  """A checkpoint that reads back but does not verify (changed since it was saved)."""


class WriteFailed(UserError):
  """A checkpoint could not be written (a full disk, a quota, a read-only file system)."""


def _words(x) -> jax.Array:
  """An array's bits as uint32 words."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = x.dtype.itemsize * 8
  unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[bits]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


@jax.jit
def _checksums(flat: dict) -> dict:
  out = {}
  for name, x in flat.items():
    w = _words(x)
    position = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
    out[name] = jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * position, dtype=jnp.uint32)])
  return out


def checksums(arrays) -> dict[str, list[int]]:
  """{"params/Dense_0/kernel": [sum, weighted sum], ...} of a pytree's arrays' 32-bit words.

  Integer sums wrap around, so they do not depend on how the devices split
  the work: the same bits give the same checksum on any layout.
  """
  sums = jax.tree.map(parallel.host_value, _checksums(_flat(arrays)))
  return {k: [int(a) for a in v] for k, v in sums.items()}


def _next_index(data_iterator) -> int | None:
  """The data position (Grain's next_index) of an iterator, if it reports one."""
  try:
    state = data_iterator.get_state()
    return json.loads(state if isinstance(state, (str, bytes)) else json.dumps(state)).get(
      "next_index"
    )
  except (AttributeError, TypeError, ValueError):
    return None


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None) -> None:
  """Starts an asynchronous save; the device arrays are copied before it returns.

  `data_iterator` (anything with Grain's get_state/set_state) is saved beside
  the state, or left out with None. The arrays' checksums and the data
  position go into the checkpoint's metadata.
  """
  arrays = state_arrays(state)
  items = {"state": ocp.args.StandardSave(arrays)}
  metadata = {"checksums": checksums(arrays)}
  if _frozen_checksums(state) is not None:
    metadata["frozen_checksums"] = _frozen_checksums(state)
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    metadata["next_index"] = _next_index(data_iterator)
  manager.save(step, args=ocp.args.Composite(**items), force=True, custom_metadata=metadata)


def _verify(manager, step: int, arrays, data_iterator=None) -> None:
  """Raises Unusable if what was read differs from what the save recorded."""
  recorded = manager.metadata(step).custom_metadata or {}
  _verify_checksums(recorded.get("checksums"), arrays)
  if data_iterator is not None and recorded.get("next_index") is not None:
    position = _next_index(data_iterator)
    if position != recorded["next_index"]:
      raise Unusable(
        f"the data position reads {position}, the save recorded {recorded['next_index']}"
      )


def _verify_checksums(expected: dict | None, arrays) -> None:
  if expected is not None:  # checkpoints from before checksums existed are taken as they read
    got = checksums(arrays)
    changed = sorted(
      (k for k in set(expected) | set(got) if expected.get(k) != got.get(k)),
      key=lambda k: (not k.startswith("params/"), k),
    )  # the weights first
    if changed:
      raise Unusable(
        f"checksum of {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''} "
        "differs from the one saved: the files changed since"
      )


def restore(manager: ocp.CheckpointManager, step: int, state, data_iterator=None):
  """`state` with its arrays read from checkpoint `step`; moves `data_iterator` there too.

  `state` gives the structure, dtypes and shardings to restore into; with no
  `data_iterator` only the state is read. Raises if the checkpoint does not
  verify (`Unusable`) or does not read.
  """
  items = {"state": ocp.args.StandardRestore(state_target(state))}
  other_count = data_iterator is not None and _data_position_elsewhere(manager, step)
  if data_iterator is not None and not other_count:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if other_count:  # what Grain's handler would pass: a dict to its own iterators, else bytes
    position = _shared_data_position(manager, step)
    data_iterator.set_state(
      json.loads(position) if isinstance(data_iterator, grain.DatasetIterator) else position
    )
  _verify(manager, step, restored.state, data_iterator)
  arrays = dict(restored.state)
  if FROZEN in state.model_state:
    arrays["model_state"] = {**arrays["model_state"], FROZEN: state.model_state[FROZEN]}
  return state.replace(**arrays)


def _data_files(manager, step: int) -> list[str]:
  """The paths of `step`'s data position files, one per process of the job that saved it."""
  folder = os.path.join(str(manager.directory), str(step), "data")
  names = (
    sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
  )
  return [os.path.join(folder, n) for n in names]


def _data_position_elsewhere(manager, step: int) -> bool:
  """The data position of `step` was saved by another number of processes than this job's."""
  names = [os.path.basename(p) for p in _data_files(manager, step)]
  return bool(names) and f"process_{jax.process_index()}-of-{jax.process_count()}.json" not in names


def _shared_data_position(manager, step: int) -> bytes:
  """The one data position every process of the saving job recorded (they must agree)."""
  positions = {}
  for path in _data_files(manager, step):
    with open(path, "rb") as f:
      positions[path] = json.dumps(json.loads(f.read()), sort_keys=True)
  if len(set(positions.values())) != 1:
    raise Unusable(
      f"its {len(positions)} processes saved different data positions "
      f"({', '.join(sorted(set(positions.values())))}): it resumes only on as many "
      "processes as wrote it"
    )
  return next(iter(positions.values())).encode()


def save_state(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` alone (a best checkpoint), with its checksums, and waits for it."""
  arrays = state_arrays(state)
  metadata = {"checksums": checksums(arrays)}
  if _frozen_checksums(state) is not None:
    metadata["frozen_checksums"] = _frozen_checksums(state)
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(arrays)),
    force=True,
    custom_metadata=metadata,
  )
  manager.wait_until_finished()


def saved_steps(workdir: str, best: bool = False) -> list[int]:
  """The steps with a checkpoint directory in `workdir` (read or not), oldest first."""
  root = checkpoint_dir(workdir, best)
  return sorted(int(s) for s in os.listdir(root) if s.isdigit()) if os.path.isdir(root) else []


def on_disk(workdir: str) -> tuple[int | None, bool]:
  """(the newest complete checkpoint's step or None, whether a save is being written): from
  the directory alone, without Orbax or a device, so a thread may ask while the loop is stuck.
  Orbax writes a checkpoint under a temporary name and renames it when it is whole."""
  root = checkpoint_dir(workdir)
  names = os.listdir(root) if os.path.isdir(root) else []
  steps = [int(n) for n in names if n.isdigit()]
  return (max(steps) if steps else None), any("orbax-checkpoint-tmp" in n for n in names)


def state_target(state):
  """The shapes, dtypes and shardings of `state`'s arrays: what a restore reads into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state_arrays(state))


def quarantine_dir(workdir: str) -> str:
  return os.path.abspath(wd.corrupt_checkpoints(workdir))


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


def _shape_changes(workdir: str, steps: list[int], state) -> list[str]:
  """How the checkpoints' arrays differ in shape or kind from `state`'s, if all of them do.

  One checkpoint that fits means the others' differences are damage, for the
  restore to judge; a config change of shape makes every one differ.
  """
  want = {k: (tuple(v.shape), str(v.dtype)) for k, v in _flat(state_target(state)).items()}
  newest = None
  for step in steps:
    try:
      saved = {
        k: (tuple(v.shape), str(v.dtype)) for k, v in _flat(_local_target(workdir, step)).items()
      }
    except Exception:  # unreadable metadata: that checkpoint is for the restore to judge
      continue
    changes = [
      f"{k}: {saved.get(k, 'absent')} -> {want.get(k, 'absent')}"
      for k in sorted(set(want) | set(saved), key=lambda k: (not k.startswith("params/"), k))
      if want.get(k) != saved.get(k)
    ]
    if not changes:
      return []
    newest = newest or changes
  return newest or []


def _flat(tree) -> dict:
  return {
    "/".join(_key_name(k) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def restore_latest_valid(workdir: str, state, data_iterator, **manager_options):
  """(manager, state) from the newest usable checkpoint; older ones are tried in turn.

  A checkpoint that fails to read or verify (a missing item, a truncated
  array file, a flipped bit) gets a warning naming its step and is moved to
  `corrupt_checkpoints/` once an older one has restored; a usable
  checkpoint is never touched. When none is usable, nothing is moved and a
  UserError says so (the run never silently starts over). A state of other
  shapes than the checkpoints' (a config change of shape) is refused, not
  taken for corruption. Returns `state` unchanged when there is no checkpoint.
  """
  manager = make_manager(workdir, **manager_options)
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return manager, state
  changes = _shape_changes(workdir, steps, state)
  if changes:
    manager.close()
    raise UserError(
      f"{workdir} holds checkpoints of other shapes than this config's model "
      f"({'; '.join(changes[:4])}{'; ...' if len(changes) > 4 else ''}): a change of "
      "shape cannot resume; use a new workdir (init_from.workdir fine-tunes from this one)"
    )
  try:
    recorded = manager.metadata(steps[0]).custom_metadata or {}
  except Exception:  # unreadable metadata: that checkpoint is for the restore to judge
    recorded = None
  if recorded is not None:
    try:
      _check_frozen(recorded, state)
    except UserError:
      manager.close()
      raise
  failures = {}
  for step in steps:
    try:
      restored = restore(manager, step, state, data_iterator)
    except Exception as e:  # Orbax, TensorStore and JSON raise many types here
      failures[step] = _reason(e)
      continue
    if failures:
      manager.close()
      for bad, reason in failures.items():
        log.warning(
          "checkpoint at step %d is unusable (%s); moved it to %s",
          bad,
          reason,
          _quarantine(workdir, bad),
        )
      manager = make_manager(workdir, **manager_options)
    return manager, restored
  manager.close()
  listed = "; ".join(f"step {s}: {r}" for s, r in list(failures.items())[:3])
  raise UserError(
    f"no checkpoint in {checkpoint_dir(workdir)} is usable ({listed}); nothing was "
    "moved or trained: restore them from a backup, or pass --start_over to set them "
    "aside and train from step 0"
  )


set_aside = wd.set_aside  # where code written against this module finds it


def _local_target(workdir: str, step: int, best: bool = False):
  return local_target(os.path.join(checkpoint_dir(workdir, best), str(step), "state"))


def local_target(path: str):
  """Shapes and dtypes of the pytree saved at `path`, to read onto this process's first device.

  Orbax refuses a target-less restore of arrays saved from other devices (a
  GPU box's run inspected on a laptop); this target works whatever saved it.
  """
  metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)


def _restore_local(manager, workdir: str, step: int, best: bool = False):
  return manager.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(_local_target(workdir, step, best))),
  ).state


def _read_verified(manager, workdir: str, step: int, best: bool = False):
  """Checkpoint `step`'s state arrays on this host's first device, verified (or raises)."""
  arrays = _restore_local(manager, workdir, step, best)
  _verify(manager, step, arrays)
  return arrays


def _read_only(workdir: str, best: bool) -> ocp.CheckpointManager:
  return (
    make_best_manager(workdir, read_only=True) if best else make_manager(workdir, read_only=True)
  )


def verify(workdir: str, best: bool = False) -> dict[int, str]:
  """{step: reason} for every checkpoint in `workdir` (in its best set, `best`) that does not
  read back whole and verify."""
  if not os.path.isdir(checkpoint_dir(workdir, best)):
    return {}
  manager = _read_only(workdir, best)
  bad = {}
  for step in manager.all_steps():
    folder = os.path.join(checkpoint_dir(workdir, best), str(step))
    if not os.path.isdir(folder):
      continue  # deleted by a running job's rotation since it was listed
    try:
      _read_verified(manager, workdir, step, best)
      with open(os.path.join(folder, "_CHECKPOINT_METADATA")) as f:
        saved_items = json.load(f)["item_handlers"]  # a state-only save has no "data"
      data = os.path.join(folder, "data")
      for name in os.listdir(data) if "data" in saved_items else ():
        if name.endswith(".json"):
          with open(os.path.join(data, name)) as f:
            json.load(f)
    except Exception as e:  # Orbax, TensorStore and JSON raise many types here
      bad[step] = _reason(e)
  return bad


def state_arrays(state) -> dict[str, Any]:
  """The TrainState's array fields as a plain dict (what a checkpoint holds): all but the
  weights held fixed (`FROZEN`, a LoRA run's base), which the run rebuilds from their source."""
  return {
    "step": state.step,
    "params": state.params,
    "opt_state": state.opt_state,
    "model_state": {k: v for k, v in state.model_state.items() if k != FROZEN},
    "rng": state.rng,
  }


def _frozen_checksums(state) -> dict | None:
  frozen = getattr(state, "model_state", {}).get(FROZEN)
  return None if frozen is None else checksums(frozen)


def _check_frozen(recorded: dict, state) -> None:
  """A checkpoint of a run with fixed weights resumes (or predicts) only with the very same."""
  expected, got = recorded.get("frozen_checksums"), _frozen_checksums(state)
  if expected is None and got is None:
    return
  if expected != got:
    differ = sorted(
      k
      for k in set(expected or {}) | set(got or {})
      if (expected or {}).get(k) != (got or {}).get(k)
    )
    raise UserError(
      f"the fixed base weights are not the ones this checkpoint was trained on "
      f"({differ[0] if differ else 'none recorded'} differs): point model.pretrained at the "
      "folder the run started from"
    )


def load_arrays(
  workdir: str, step: int | None = None, best: bool = False
) -> tuple[int, dict[str, Any]]:
  """(step, arrays) of a checkpoint, read without the model's code (for `inspect`).

  With no `step`, the newest checkpoint that reads back whole and verifies
  (one that a running job deletes meanwhile is passed over).
  """
  manager = _read_only(workdir, best)
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise UserError(f"{checkpoint_dir(workdir, best)} holds no checkpoint")
  error = None
  for candidate in steps:
    try:
      return candidate, jax.tree.map(np.asarray, _read_verified(manager, workdir, candidate, best))
    except Exception as e:  # Orbax and TensorStore raise many types here
      error = e
  raise UserError(
    f"no checkpoint in {checkpoint_dir(workdir, best)} reads back whole "
    f"(step {steps[-1]}: {_reason(error)})"
  )


def check_frozen_at(workdir: str, step: int, best: bool, state) -> None:
  """Refuses `state`'s fixed weights (rebuilt by the reader) unless checkpoint `step`, of
  `workdir`'s newest (or best) set, was trained with them."""
  manager = _read_only(workdir, best)
  try:
    _check_frozen(manager.metadata(step).custom_metadata or {}, state)
  finally:
    manager.close()


def source_step(workdir: str, step: int = -1, best: bool = False) -> int:
  """The step a reader of `workdir` means: `step`, or the newest (`best`: the best, by
  best.json)."""
  if not os.path.isdir(workdir):
    raise UserError(f"{workdir} does not exist")
  root = checkpoint_dir(workdir, best)
  steps = saved_steps(workdir, best)
  if not steps:
    raise UserError(f"{workdir} has no {'best ' if best else ''}checkpoints in {root}")
  if best and step < 0:
    step = int(wd.read_best(workdir).get("best_step", -1))
  step = steps[-1] if step < 0 else step
  if step not in steps:
    raise UserError(f"step {step}: {root} has checkpoints at steps {steps}")
  return step


def read_arrays(workdir: str, step: int = -1, best: bool = False) -> tuple[dict[str, Any], int]:
  """A run's checkpoint (`source_step`) as host NumPy arrays, verified, and its step.

  For fine-tuning, predict and export: a checkpoint that does not read back or
  verify is refused in one line naming its step and what differs; the reader
  never falls back to another one (that would be other weights than asked for).
  """
  step = source_step(workdir, step, best)
  manager = _read_only(workdir, best)
  try:
    arrays = _read_verified(manager, workdir, step, best)
  except Exception as e:  # Orbax and TensorStore raise many types here
    raise UserError(
      f"the checkpoint of step {step} in {checkpoint_dir(workdir, best)} is unusable "
      f"({_reason(e)}): restore it from a backup, or remove it to read another"
    ) from None
  finally:
    manager.close()
  return jax.tree.map(np.asarray, arrays), step


def read_pytree(path: str) -> dict[str, Any]:
  """Any Orbax (StandardCheckpointer) pytree at `path`, read onto this host as NumPy.

  Where `path` is an item of a jaxtrain checkpoint (`.../<step>/state`), the
  checksums its save recorded are verified too.
  """
  if not os.path.isdir(path):
    raise UserError(f"{path} is not a directory")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      arrays = checkpointer.restore(path, local_target(path))
    _verify_checksums(_recorded_checksums(path), arrays)
  except Exception as e:  # Orbax and TensorStore raise many types here
    raise UserError(f"cannot read {path}: {_reason(e)}") from None
  return jax.tree.map(np.asarray, arrays)


def _recorded_checksums(path: str) -> dict | None:
  """The checksums a jaxtrain save recorded for the `state` item at `path`, if it is one."""
  if os.path.basename(os.path.normpath(path)) != "state":
    return None
  try:
    with open(os.path.join(os.path.dirname(os.path.normpath(path)), "_CHECKPOINT_METADATA")) as f:
      recorded = json.load(f).get("custom_metadata") or {}
  except (OSError, ValueError, AttributeError):
    return None
  return recorded.get("checksums") if isinstance(recorded, dict) else None


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


# Orbax reports an asynchronous write's failure at the next save or wait, often as a
# ValueError from TensorStore: its text is all that identifies it, so it is read here, once,
# and becomes a WriteFailed for everything above.
_WRITE_FAILURES = (
  "No space left on device",
  "RESOURCE_EXHAUSTED",
  "Disk quota exceeded",
  "Read-only file system",
  "Failed writing",
)


def write_failure(error: Exception, manager, workdir: str, step: int) -> WriteFailed | None:
  """`error` as a one-line WriteFailed naming the intact checkpoint, if it is a failed write."""
  text = str(error)
  reason = next((r for r in _WRITE_FAILURES if r in text), None)
  if reason is None and not isinstance(error, OSError):
    return None
  in_checkpoint = re.search(re.escape(os.path.basename(checkpoint_dir(workdir))) + r"/(\d+)", text)
  failed = int(in_checkpoint[1]) if in_checkpoint else step
  with contextlib.suppress(Exception):
    manager.reload()  # a failed asynchronous save must not count as a step
  intact = [s for s in manager.all_steps() if s < failed or (s == failed and not in_checkpoint)]
  kept = (
    f"the checkpoint of step {max(intact)} is intact" if intact else "no earlier checkpoint exists"
  )
  why = getattr(error, "strerror", None) or reason or text.splitlines()[0]
  target = (
    f"the checkpoint of step {failed} to {checkpoint_dir(workdir)}"
    if in_checkpoint or not getattr(error, "filename", None)
    else error.filename
  )
  return WriteFailed(f"could not write {target}: {why}; {kept}")


def finish_saves(manager, workdir: str, step: int) -> None:
  """Waits for asynchronous saves and closes `manager`; a write that failed is a WriteFailed."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    failure = write_failure(e, manager, workdir, step)
    if failure is None:
      raise
    raise failure from None
  finally:
    manager.close()


# -- Other people's weights ----------------------------------------------------------
# A pretrained model arrives as a Hugging Face folder: config.json, weights as safetensors
# (one file, or shards named by model.safetensors.index.json) or Flax msgpack, and its
# tokenizer. Safetensors is read here, lazily: a header of JSON (each tensor's dtype, shape
# and byte range), then the bytes, mapped from the file one tensor at a time, so a model
# larger than the host's memory loads. Every byte range is checked against the file and the
# header before anything is read (a truncated or overlapping file is refused, naming it), and
# each file's SHA-256 is recorded by whoever reads it (init_from.json), as for a user's code.

SAFETENSORS_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": jnp.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "U16": np.uint16,
  "U32": np.uint32,
  "U64": np.uint64,
  "BOOL": np.bool_,
  "F8_E4M3": jnp.float8_e4m3fn,
  "F8_E5M2": jnp.float8_e5m2,
}
_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


class Safetensors:
  """One safetensors file: its tensors' names, shapes and dtypes, each read when asked."""

  def __init__(self, path: str):
    self.path = path
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(_MAX_HEADER, size - 8):
          raise ValueError(f"its header length ({length}) does not fit a file of {size} bytes")
        header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as e:
      raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    self.metadata = header.pop("__metadata__", None) or {}
    self._start = 8 + length
    self.entries = {}
    end = 0
    for name, entry in sorted(header.items(), key=lambda kv: kv[1].get("data_offsets", [0])[0]):
      dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
      begin, stop = entry.get("data_offsets", (-1, -1))
      shape = tuple(entry.get("shape", ()))
      expected = int(np.prod(shape, dtype=np.int64)) * (np.dtype(dtype).itemsize if dtype else 0)
      if dtype is None or begin != end or stop - begin != expected:
        raise UserError(
          f"{path}: tensor {name} ({entry.get('dtype')}, shape {list(shape)}, bytes "
          f"{begin}..{stop}) does not match the header: the file is damaged or not safetensors"
        )
      end = stop
      self.entries[name] = (np.dtype(dtype), shape, begin)
    if self._start + end != size:
      raise UserError(
        f"{path} holds {size} bytes, its header describes {self._start + end}: the file is "
        "truncated or damaged (download it again)"
      )

  def read(self, name: str) -> np.ndarray:
    dtype, shape, begin = self.entries[name]
    data = np.memmap(
      self.path,
      dtype=np.uint8,
      mode="r",
      offset=self._start + begin,
      shape=(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,),
    )
    return np.array(data.view(dtype).reshape(shape))  # a copy: the mapping is closed with it


def write_safetensors(path: str, tensors: dict[str, Any], metadata: dict | None = None) -> None:
  """`tensors` (name -> array, read one at a time) as a safetensors file, whole or not at all."""
  header, offset = {}, 0
  arrays = {}
  for name, array in tensors.items():
    shape = tuple(np.shape(array))
    dtype = np.dtype(array.dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {
      "dtype": _SAFETENSORS_NAMES[dtype],
      "shape": list(shape),
      "data_offsets": [offset, offset + size],
    }
    arrays[name] = array
    offset += size
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the data starts 8-aligned
  with files.replacing(path, "wb") as f:
    f.write(len(encoded).to_bytes(8, "little"))
    f.write(encoded)
    for array in arrays.values():
      f.write(np.ascontiguousarray(np.asarray(array)).tobytes())


HF_CONFIG, SAFETENSORS_INDEX, SAFETENSORS_FILE, FLAX_FILE = (
  "config.json",
  "model.safetensors.index.json",
  "model.safetensors",
  "flax_model.msgpack",
)


@dataclasses.dataclass
class Pretrained:
  """A pretrained folder's config and tensors (read on demand), and the files they came from."""

  path: str
  config: dict
  shapes: dict[str, tuple[tuple[int, ...], np.dtype]]
  files: list[str]  # the weight files, relative to `path`
  _read: Any = None
  layout: str = "torch"  # torch: Linear weights [out, in], convs OIHW; flax: Flax's own (msgpack)

  def read(self, name: str) -> np.ndarray:
    return self._read(name)

  def sha256(self) -> dict[str, str]:
    """{file: SHA-256} of config.json and every weight file (read in full: minutes for 10 GB)."""
    return {n: registry.sha256_of(os.path.join(self.path, n)) for n in [HF_CONFIG, *self.files]}


def read_pretrained(path: str) -> Pretrained:
  """A Hugging Face model folder (config.json with safetensors, sharded or not, or Flax msgpack)."""
  if not os.path.isdir(path):
    raise UserError(f"model.pretrained={path} is not a directory")
  try:
    with open(os.path.join(path, HF_CONFIG)) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} has no {HF_CONFIG}: not a Hugging Face model folder") from None
  except ValueError as e:
    raise UserError(f"{os.path.join(path, HF_CONFIG)} is not JSON: {e}") from None
  index = os.path.join(path, SAFETENSORS_INDEX)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map") or {}
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not os.path.exists(os.path.join(path, n))]
    if missing:
      raise UserError(
        f"{path}: shard {missing[0]} named by {SAFETENSORS_INDEX} is missing "
        f"({len(missing)} of {len(names)} shards missing)"
      )
    shards = {n: Safetensors(os.path.join(path, n)) for n in names}
    for tensor, shard in weight_map.items():
      if tensor not in shards[shard].entries:
        raise UserError(f"{path}: {SAFETENSORS_INDEX} puts {tensor} in {shard}, which lacks it")
    where = {t: shards[s] for t, s in weight_map.items()}
    return Pretrained(path, config, _shapes(where), names, lambda t: where[t].read(t))
  if os.path.exists(os.path.join(path, SAFETENSORS_FILE)):
    single = Safetensors(os.path.join(path, SAFETENSORS_FILE))
    where = dict.fromkeys(single.entries, single)
    return Pretrained(path, config, _shapes(where), [SAFETENSORS_FILE], single.read)
  if os.path.exists(os.path.join(path, FLAX_FILE)):
    from flax import serialization  # msgpack: arrays and dicts only, never code

    with open(os.path.join(path, FLAX_FILE), "rb") as f:
      try:
        flat = {k: np.asarray(v) for k, v in _flat(serialization.msgpack_restore(f.read())).items()}
      except Exception as e:  # msgpack raises its own types for damaged bytes
        raise UserError(f"{os.path.join(path, FLAX_FILE)} does not read: {_reason(e)}") from None
    flat = {k.replace("/", "."): v for k, v in flat.items()}
    shapes = {k: (v.shape, v.dtype) for k, v in flat.items()}
    return Pretrained(path, config, shapes, [FLAX_FILE], flat.__getitem__, layout="flax")
  raise UserError(
    f"{path} has no weights: {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} (shards) or {FLAX_FILE}"
  )


def _shapes(where: dict[str, Safetensors]) -> dict:
  return {t: (f.entries[t][1], f.entries[t][0]) for t, f in where.items()}


def write_pretrained(
  path: str, config: dict, tensors: dict[str, Any], max_shard_bytes: int = 5 << 30
) -> list[str]:
  """An HF folder's config.json and weights (sharded past `max_shard_bytes`, with the index)."""
  os.makedirs(path, exist_ok=True)
  shards: list[dict] = [{}]
  size = 0
  for name, array in tensors.items():
    nbytes = int(np.prod(np.shape(array), dtype=np.int64)) * np.dtype(array.dtype).itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = array
    size += nbytes
  names = (
    [SAFETENSORS_FILE]
    if len(shards) == 1
    else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  )
  for name, shard in zip(names, shards):
    write_safetensors(os.path.join(path, name), shard, {"format": "pt"})
  if len(shards) > 1:
    weight_map = {t: n for n, shard in zip(names, shards) for t in shard}
    files.write_json(
      os.path.join(path, SAFETENSORS_INDEX), {"metadata": {}, "weight_map": weight_map}
    )
  files.write_json(os.path.join(path, HF_CONFIG), config)
  return names
