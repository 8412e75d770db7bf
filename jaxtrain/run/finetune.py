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
import numpy as np

from jaxtrain import files, lora
from jaxtrain.errors import UserError
from jaxtrain.models import hf
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
    if old is not None and old.shape == leaf.shape and _both_floats(old.dtype, leaf.dtype):
      report["restored"].append(name)  # float16/bfloat16 weights into a float32 model
      key = f"{np.dtype(old.dtype)}->{np.dtype(leaf.dtype)}"
      report.setdefault("cast", {})[key] = report.get("cast", {}).get(key, 0) + 1
      return np.asarray(old).astype(leaf.dtype)
    why = "new" if old is None else f"was {tuple(old.shape)} {old.dtype}"
    report["initialised"].append(f"{name} {tuple(leaf.shape)} ({why})")
    return leaf

  merged = jax.tree_util.tree_map_with_path(take, target)
  used = set(report["restored"])
  report["unused"] = sorted(n for n in src if n not in used)
  return merged, report


def _both_floats(a, b) -> bool:
  return bool(
    jax.numpy.issubdtype(a, jax.numpy.floating) and jax.numpy.issubdtype(b, jax.numpy.floating)
  )


# A checkpoint of someone else's Linen variables: {"params": ..., "batch_stats": ...}.
_NOT_COLLECTIONS = ("params", "opt_state", "step", "rng", "model_state")


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
  collections = source.get("model_state") or {
    k: v for k, v in source.items() if k not in _NOT_COLLECTIONS and isinstance(v, dict)
  }  # a jaxtrain run's model_state, or Linen's batch_stats saved beside the params
  model_state, state_report = merge(jax.device_get(state.model_state), collections)
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


# -- Pretrained folders (model.pretrained) and LoRA (config.lora) ----------------------


def load_pretrained(variables: dict, model) -> tuple[dict, dict]:
  """`variables` with every param the pretrained folder `model.pretrained` holds, checked.

  Strict: each of the model's params comes from a tensor of the folder (by the
  model's `hf_layout`, models/hf.py), in its shape, cast to the param's dtype,
  except the task head (`Layout.heads`), which may be new or of another width
  and is then initialised. Anything else missing or misshapen is one UserError
  naming the first tensor, before any training. Source tensors the model does
  not use are listed. Returns the variables and that report (`write_record`
  puts it in the workdir once every check of the run has passed).
  """
  folder, layout = model.pretrained, getattr(model.loaded.obj, "hf_layout", None)
  source = checkpoint.read_pretrained(folder)
  targets = dict(flat(variables["params"]))
  mapping: dict[str, str] = {}
  for name in source.shapes:
    path = hf.target_path(name, set(targets), layout)
    if path is not None and path not in mapping:
      mapping[path] = name
  report = {"restored": [], "initialised": [], "unused": [], "cast": {}}
  loaded = {}
  for path, leaf in targets.items():
    name = mapping.get(path)
    if name is None:
      if not layout.is_head(path):
        raise UserError(
          f"model.pretrained={folder} has no tensor {hf.source_name(path)} for the model's "
          f"{path} (is it a {model.loaded.name} folder? its model_type is "
          f"{source.config.get('model_type')!r})"
        )
      report["initialised"].append(f"{path} {tuple(leaf.shape)} (new)")
      continue
    shape, dtype = source.shapes[name]
    leaf_name = path.rsplit("/", 1)[-1] if source.layout == "torch" else ""  # "": as it is
    want = hf.from_flax(leaf_name, np.empty(leaf.shape, np.uint8)).shape  # the source's layout
    if tuple(shape) != tuple(want):
      if layout.is_head(path):  # another task's head: this task's starts afresh
        report["initialised"].append(f"{path} {tuple(leaf.shape)} (the folder's is {list(shape)})")
        mapping.pop(path)
        continue
      raise UserError(
        f"model.pretrained={folder}: {name} is {list(shape)}, the model's {path} takes "
        f"{list(want)}: the model's fields and the folder's config.json disagree"
      )
    array = hf.to_flax(leaf_name, source.read(name))
    if array.dtype != leaf.dtype:
      key = f"{array.dtype}->{np.dtype(leaf.dtype)}"
      report["cast"][key] = report["cast"].get(key, 0) + 1
    loaded[path] = jax.device_put(array.astype(leaf.dtype), getattr(leaf, "sharding", None))
    report["restored"].append(path)
  used = set(mapping.values())
  report["unused"] = sorted(n for n in source.shapes if n not in used and not layout.is_unused(n))
  params = jax.tree_util.tree_map_with_path(
    lambda p, leaf: loaded.get(path_str(p), leaf), variables["params"]
  )
  log.info(
    "model.pretrained %s: %d of %d params loaded (cast: %s); initialised: %s; unused: %s",
    folder,
    len(report["restored"]),
    len(targets),
    ", ".join(f"{n} {k}" for k, n in report["cast"].items()) or "none",
    "; ".join(report["initialised"]) or "none",
    ", ".join(report["unused"][:8]) or "none",
  )
  report.update(
    source=os.path.abspath(folder),
    format=source.files[0].rsplit(".", 1)[-1],
    layout=source.layout,
    files=source.sha256(),
    mapping=dict(sorted(mapping.items())),
    dtypes={n: str(np.dtype(source.shapes[n][1])) for n in sorted(used)},
  )
  return {**variables, "params": params}, report


def write_record(workdir: str, report: dict | None) -> None:
  """The report of where a run's weights came from, as its init_from.json."""
  if report is not None and jax.process_index() == 0:
    files.write_json(wd.init_from_record(workdir), report)


def with_lora(variables: dict, apply_fn, config, model) -> tuple[dict, object]:
  """(variables, apply_fn) with LoRA adapters on `config.lora.targets` (the model's default:
  its layout's `lora_targets`); the head (`lora.train`, default the layout's heads) trains in
  full; everything else is held fixed (lora.py)."""
  c = config.lora
  layout = getattr(model.loaded.obj, "hf_layout", None)
  pattern = c.targets or (layout.lora_targets if layout else "")
  if not pattern:
    raise UserError(
      f"lora.targets is empty and {model.loaded.name} names no default: set a regex over its "
      "kernel paths (e.g. 'attention|mlp')"
    )
  found = lora.targets(variables["params"], pattern)
  if not found:
    kernels = [p for p in flat(variables["params"]) if p.endswith("kernel")]
    raise UserError(
      f"lora.targets={pattern!r} matches no 2-D kernel of the model (its kernels: "
      f"{', '.join(kernels[:6])}{', ...' if len(kernels) > 6 else ''})"
    )
  train = c.train if c.train else "|".join(layout.heads) if layout else ""
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x10AA)
  variables, apply_fn = lora.adapt(
    apply_fn, variables, pattern=pattern, rank=c.rank, alpha=c.alpha, rng=rng, train=train
  )
  log.info(
    "LoRA rank %d on %d kernels (%s); trained in full: %s",
    c.rank,
    len(found),
    ", ".join(found[:4]) + (", ..." if len(found) > 4 else ""),
    train or "nothing",
  )
  return variables, apply_fn


def model_variables(config, model, example_batch, apply_fn):
  """(variables, apply_fn, the state's rng, the pretrained report or None) of a run's model at
  step 0: initialised from the seed, then the weights of `model.pretrained`, then LoRA
  (`config.lora.rank` > 0).

  A pure function of the config and the folder, so a resumed run and `predict` rebuild the
  same fixed base weights the checkpoints leave out.
  """
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  variables, report = model.init(init_rng, example_batch), None
  if model.pretrained:
    variables, report = load_pretrained(variables, model)
  if config.get("lora") and config.lora.rank:
    variables, apply_fn = with_lora(variables, apply_fn, config, model)
  return variables, apply_fn, state_rng, report
