"""Fine-tuning: start from another run's (or any Orbax checkpoint's) parameters.

`init_from` copies every parameter (and batch-norm statistic) whose path and
shape match the source checkpoint's, and leaves the rest as initialised: a new
head for new classes is initialised afresh, the body comes from the source.
What was and was not copied is logged and written to `<workdir>/init_from.json`.

Param paths are `/`-joined module names, e.g. `Conv_0/kernel`, `head/bias`
(`optimizer.freeze` and `optimizer.lr_multipliers`, regexes searched in them,
are applied by optim.py).
"""

from __future__ import annotations

import logging
import os

import jax

from jaxtrain import files
from jaxtrain.errors import UserError
from jaxtrain.optim import flat, path_str
from jaxtrain.run import checkpoint, workdir as wd

log = logging.getLogger("jaxtrain")


def read_source(workdir: str, step: int = -1, best: bool = False) -> tuple[dict, int]:
  """The source checkpoint's state arrays (host NumPy), verified, and its step."""
  if not os.path.isdir(workdir):
    raise UserError(f"init_from.workdir={workdir} does not exist")
  try:
    return checkpoint.read_arrays(workdir, step, best)
  except UserError as e:
    raise UserError(f"init_from: {e}") from None


def read_checkpoint(path: str) -> dict:
  """Any Orbax (StandardCheckpointer) pytree at `path`, read onto this host as NumPy."""
  try:
    return checkpoint.read_pytree(path)
  except UserError as e:
    raise UserError(f"init_from: {e}") from None


def merge(target, source) -> tuple[object, dict]:
  """`target` with every leaf whose path and shape match one in `source` taken from it."""
  src = flat(source)
  report = {"restored": [], "initialised": [], "unused": []}

  def take(path, leaf):
    name = path_str(path)
    old = src.get(name)
    if old is not None and old.shape == leaf.shape and old.dtype == leaf.dtype:
      report["restored"].append(name)
      return old
    why = "new" if old is None else f"was {tuple(old.shape)} {old.dtype}"
    report["initialised"].append(f"{name} {tuple(leaf.shape)} ({why})")
    return leaf

  merged = jax.tree_util.tree_map_with_path(take, target)
  used = set(report["restored"])
  report["unused"] = sorted(n for n in src if n not in used)
  return merged, report


def init_from(state, config, workdir: str):
  """`state` with params and model state from `config.init_from`, a fresh optimizer state."""
  c = config.init_from
  if c.checkpoint:  # someone else's Orbax checkpoint: {"params": ...} or the params tree itself
    source, step = read_checkpoint(c.checkpoint), None
    if "params" not in source:
      source = {"params": source}
  else:
    source, step = read_source(c.workdir, c.step, c.best)
  params, report = merge(jax.device_get(state.params), source.get("params", {}))
  model_state, state_report = merge(
    jax.device_get(state.model_state), source.get("model_state", {})
  )
  if not report["restored"]:
    raise UserError(
      f"init_from {c.checkpoint or c.workdir}: no parameter matches this model's by path "
      f"and shape (the source has {', '.join(list(flat(source['params']))[:6])}, ...)"
    )
  report.update(
    source=os.path.abspath(c.checkpoint or c.workdir),
    step=step,
    model_state_restored=state_report["restored"],
  )
  log.info(
    "init_from %s (step %s): %d of %d param arrays restored; initialised afresh: %s",
    c.checkpoint or c.workdir,
    step,
    len(report["restored"]),
    len(report["restored"]) + len(report["initialised"]),
    "; ".join(report["initialised"]) or "none",
  )
  if jax.process_index() == 0:
    files.write_json(wd.init_from_record(workdir), report)
  return state.replace(params=params, model_state=model_state, opt_state=state.tx.init(params))
