"""`jaxtrain sweep`: hyperparameter search as an Optuna study of ordinary runs.

A sweep directory holds the study (`study.db`, SQLite, unless `--storage`
names any Optuna RDB URL such as PostgreSQL, which lets workers on many
machines share one study) and one workdir per trial, `trials/<number>/`, each
with its own config, manifest and checkpoints. Intermediate eval metrics are
reported to Optuna, so a pruner can stop a poor trial early.

The search space is a Python file whose `get_space()` maps config fields to
distributions:

    from jaxtrain.tools.sweep import choice, loguniform
    def get_space():
      return {"optimizer.learning_rate": loguniform(1e-4, 1e-1),
              "optimizer.weight_decay": choice([0.0, 1e-4, 1e-3])}

A crashed worker's trial is noticed by its missed heartbeats (after
`--grace_seconds`), marked failed and retried with the same parameters in the same workdir, so it
resumes from its
last checkpoint. `--trials N` is the size of the study, not of one invocation:
running the command again finishes what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import time
import warnings
from typing import Any, Callable, Sequence

import jax

from jaxtrain import files, registry
from jaxtrain.data import store
from jaxtrain.errors import Preempted, UserError
from jaxtrain.run import early_stopping, manifest
from jaxtrain.run.hooks import Hook
from jaxtrain.run.loop import train_and_evaluate
from jaxtrain.run import workdir as wd

log = logging.getLogger("jaxtrain")

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
GRACE_SECONDS = 20  # a trial whose worker is silent this long is retried
# Config fields that cannot change a trial's result: a rerun of the sweep may change them.
NEUTRAL_FIELDS = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "async_checkpointing",
  "dataset.prefetch",
  "dataset.cache_max_mb",
  "dataset.device_cache_max_mb",
  "parallel.prefetch_to_device",
  "parallel.stall_timeout_s",
  "parallel.startup_timeout_s",
  "parallel.stop_grace_s",
  "parallel.stop_check_every_steps",
)


@dataclasses.dataclass(frozen=True)
class Distribution:
  kind: str  # uniform | loguniform | int | choice
  low: Any = None
  high: Any = None
  values: tuple = ()


def uniform(low: float, high: float) -> Distribution:
  return Distribution("uniform", float(low), float(high))


def loguniform(low: float, high: float) -> Distribution:
  return Distribution("loguniform", float(low), float(high))


def integer(low: int, high: int) -> Distribution:
  return Distribution("int", int(low), int(high))


def choice(values: Sequence) -> Distribution:
  return Distribution("choice", values=tuple(values))


def load_space(path: str) -> dict[str, Distribution]:
  """The space file's `get_space()`, checked: every value a Distribution."""
  if not os.path.isfile(path):
    raise UserError(f"--space {path} does not exist")
  spec = importlib.util.spec_from_file_location("jaxtrain_sweep_space", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    space = module.get_space()
  except Exception as e:  # the user's file: any error is theirs to fix
    raise UserError(f"--space {path} cannot be loaded: {type(e).__name__}: {e}") from None
  bad = [k for k, v in space.items() if not isinstance(v, Distribution)]
  if not space or bad:
    raise UserError(
      f"--space {path}: get_space() must map config fields to "
      f"jaxtrain.tools.sweep distributions (not {bad or 'nothing'})"
    )
  return space


def check_space(space: dict[str, Distribution], config, sampler: str) -> None:
  for field, dist in space.items():
    if _get(config, field) is _MISSING:
      raise UserError(f"--space names config.{field}, which the config does not have")
    if sampler == "grid" and dist.kind != "choice":
      raise UserError(
        f"--sampler=grid needs choice([...]) for every field; config.{field} is {dist.kind}"
      )


_MISSING = object()


def _get(config, field: str):
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


def apply_overrides(config, overrides: dict[str, Any]):
  """A copy of `config` with dotted fields set (types checked by the locked config)."""
  config = config.copy_and_resolve_references()
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def suggest(trial, space: dict[str, Distribution]) -> dict[str, Any]:
  """Optuna's pick for every field (Optuna names its parameters by the field)."""
  values = {}
  for field, d in space.items():
    if d.kind == "choice":
      values[field] = trial.suggest_categorical(field, list(d.values))
    elif d.kind == "int":
      values[field] = trial.suggest_int(field, d.low, d.high)
    else:
      values[field] = trial.suggest_float(field, d.low, d.high, log=d.kind == "loguniform")
  return values


def _sampler(name: str, space: dict[str, Distribution], seed: int):
  import optuna

  if name == "grid":
    return optuna.samplers.GridSampler({k: list(d.values) for k, d in space.items()}, seed=seed)
  if name == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed)


def _pruner(name: str):
  import optuna

  if name == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
  if name == "hyperband":
    return optuna.pruners.HyperbandPruner()
  return optuna.pruners.NopPruner()


def open_study(
  sweep_dir: str,
  storage: str | None,
  *,
  direction: str = "minimize",
  sampler=None,
  pruner=None,
  create: bool = True,
  grace_seconds: int = GRACE_SECONDS,
):
  """The sweep's study (made on first use); heartbeats let crashed trials be retried."""
  import optuna

  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  import sqlalchemy.exc

  url = storage or f"sqlite:///{os.path.abspath(os.path.join(sweep_dir, 'study.db'))}"
  retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
  retry = (
    {"heartbeat_stale_trial_callback": retry(max_retry=3)}
    if retry
    else {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
  )
  name = os.path.basename(os.path.abspath(sweep_dir))
  # Workers starting together race to create Optuna's tables and the study: on one machine
  # (SQLite, a shared sweep directory) they take turns; across machines the loser retries.
  with store.lock(sweep_dir, "sweep") if create else contextlib.nullcontext():
    for attempt in range(5):
      try:
        rdb = optuna.storages.RDBStorage(
          url,
          heartbeat_interval=max(1, grace_seconds // 4),
          grace_period=grace_seconds,
          **retry,
          engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )
        break
      except Exception as e:  # SQLAlchemy: a bad URL, a server that is down, a missing driver
        # Another worker created a table or the study first: a constraint it broke
        # (IntegrityError) or a table that exists now (ProgrammingError); once more.
        if attempt < 4 and isinstance(
          e, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
        ):
          time.sleep(0.5 + attempt)
          continue
        raise UserError(f"--storage {url} cannot be opened: {str(e).splitlines()[0]}") from None
    if not create:
      try:
        return optuna.load_study(study_name=name, storage=rdb)
      except KeyError:
        raise UserError(f"no sweep named {name!r} in {url}") from None
    return optuna.create_study(
      study_name=name,
      storage=rdb,
      direction=direction,
      sampler=sampler,
      pruner=pruner,
      load_if_exists=True,
    )


def trial_workdir(sweep_dir: str, trial) -> str:
  """Trial n's workdir; a retried trial reuses its original's, so it resumes."""
  frozen = trial.study._storage.get_trial(trial._trial_id)  # Optuna keeps retry info there
  original = frozen.system_attrs.get("failed_trial")
  return os.path.join(sweep_dir, "trials", str(trial.number if original is None else original))


def _metric(events: dict, metric: str):
  split, name = metric.split("/", 1)
  return events.get(split, {}).get(name)


def trial_value(events: list[dict], metric: str, early_stop_config=None, best: dict | None = None):
  """A finished trial's `metric`: its last report, or with early stopping on, the evaluation
  of the checkpoint it would deploy (and test): the best by the early-stopping metric."""
  split, name = metric.split("/", 1)
  evals = [e for e in events if e["split"] == "eval"]
  if split == "eval" and early_stop_config is not None and early_stop_config.metric and evals:
    at = {e["step"]: e for e in evals}
    if best and best.get("best_step") in at:  # the best checkpoint early stopping kept
      return at[best["best_step"]].get(name)
    scored = [e for e in evals if early_stop_config.metric in e]
    if scored:  # no checkpoints kept: the best evaluation, the earliest of equals
      sign = 1 if early_stop_config.mode == "min" else -1
      return min(scored, key=lambda e: (sign * e[early_stop_config.metric], e["step"])).get(name)
  return _metric({e["split"]: e for e in events}, metric)  # resumed segments included


def run_sweep(
  config,
  space: dict[str, Distribution],
  sweep_dir: str,
  *,
  trials: int,
  metric: str = "eval/loss",
  direction: str = "minimize",
  sampler: str = "tpe",
  pruner: str = "median",
  storage: str | None = None,
  grace_seconds: int = GRACE_SECONDS,
  train: Callable | None = None,
  config_dir: str | None = None,
) -> dict[str, Any]:
  """Runs trials until the study holds `trials` finished ones; returns `summary()`.

  `config_dir` anchors the config's relative file paths (the config file's directory).
  """
  import optuna

  train = train or train_and_evaluate
  if "/" not in metric or metric.split("/")[0] not in ("train", "eval", "test"):
    raise UserError(f"--metric={metric!r} must be split/name, e.g. eval/accuracy or eval/loss")
  check_space(space, config, sampler)
  _check_same_sweep(sweep_dir, config, space, metric, direction)
  os.makedirs(os.path.join(sweep_dir, "trials"), exist_ok=True)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = open_study(
    sweep_dir,
    storage,
    direction=direction,
    pruner=_pruner(pruner),
    sampler=_sampler(sampler, space, config.seed),
    grace_seconds=grace_seconds,
  )
  _record_sweep(sweep_dir, config, space, metric, direction, storage, config_dir)

  def objective(trial):
    if _surplus(trial, trials):
      trial.set_user_attr("surplus", True)
      raise _Surplus(f"trial {trial.number} would exceed --trials {trials}: not run")
    if sampler != "grid":  # each trial its own seed: two workers never propose the same point
      trial.study.sampler = _sampler(sampler, space, _trial_seed(config.seed, trial.number))
    overrides = suggest(trial, space)
    workdir = trial_workdir(sweep_dir, trial)
    trial.set_user_attr("workdir", os.path.relpath(workdir, sweep_dir))
    log.info("trial %d: %s", trial.number, _describe(overrides))
    try:
      train(
        apply_overrides(config, overrides),
        workdir,
        hooks=[Pruning(trial, metric)],
        config_dir=config_dir,
      )
    except Preempted as e:
      _hand_back(trial)
      raise _Interrupted(e.signal_name) from None
    finally:
      jax.clear_caches()  # each trial compiles its own steps: without this, memory grows per trial
    value = trial_value(
      wd.read_events(workdir), metric, config.early_stopping, early_stopping.read_best(workdir)
    )
    if value is None:
      raise UserError(
        f"--metric={metric} was never reported: the config has no {metric.split('/')[0]} split"
      )
    return value

  finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
  if remaining > 0:
    try:
      study.optimize(
        objective,
        n_trials=remaining,
        catch=(_Surplus,),
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
      )
    except _Interrupted as e:
      raise Preempted(
        None, e.args[0], "the sweep; its trial will run again, resuming from its checkpoint"
      ) from None
  result = summary(sweep_dir, storage)
  if result["best"] is not None:
    write_best_config(sweep_dir, result["best"])
  return result


class _Surplus(Exception):
  """A trial started by one worker while others' running trials already make up --trials."""


class _Interrupted(BaseException):
  """A preempted trial: leaves Optuna's loop without Optuna marking it (it is handed back)."""


def _surplus(trial, trials: int) -> bool:
  """Whether this trial would exceed the study's size: finished ones, plus older running ones."""
  import optuna

  states = optuna.trial.TrialState
  others = trial.study.get_trials(deepcopy=False)
  done = sum(t.state in (states.COMPLETE, states.PRUNED) for t in others)
  ahead = sum(t.state == states.RUNNING and t.number < trial.number for t in others)
  return done + ahead >= trials


def _hand_back(trial) -> None:
  """A trial its worker was stopped in: failed now and queued again with its parameters, so the
  next worker (or the same command) resumes it from its checkpoint."""
  import optuna

  storage = trial.study._storage
  storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
  find = getattr(storage, "get_heartbeat_stale_trial_callback", None) or getattr(
    storage, "get_failed_trial_callback", None
  )
  retry = find() if find is not None else None
  if retry is not None:
    retry(trial.study, storage.get_trial(trial._trial_id))


def _trial_seed(seed: int, number: int) -> int:
  """Trial `number`'s sampler seed: reproducible from scratch, different for every trial.

  Trial numbers are handed out once per study by its storage, so workers
  sharing a study never draw with the same seed.
  """
  key = f"{seed}/{number}".encode()
  return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def _describe(overrides: dict) -> str:
  return ", ".join(
    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items()
  )


class Pruning(Hook):
  """Reports each evaluation of the objective to the trial; raises TrialPruned when told to."""

  def __init__(self, trial, metric: str):
    super().__init__(1)
    self.trial, self.metric = trial, metric

  def due(self, loop) -> bool:
    return self.metric.split("/")[0] in loop.events

  def run(self, loop) -> None:
    import optuna

    value = _metric(loop.events, self.metric)
    if value is not None:
      self.trial.report(value, loop.step)
      if self.trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {loop.step}: {self.metric}={value:.4g}")


def _space_record(space: dict[str, Distribution]) -> dict:
  return json.loads(json.dumps({k: dataclasses.asdict(v) for k, v in space.items()}))


def _check_same_sweep(sweep_dir: str, config, space, metric: str, direction: str) -> None:
  """A sweep directory holds one study: running it again must ask the same question.

  Another objective, direction, space or trial config (its length included)
  would mix incomparable trials in one ranking; `--trials` may grow.
  """
  path = os.path.join(sweep_dir, "sweep.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  config_changes = {
    k: v
    for k, v in manifest.differences(
      old["config"], json.loads(config.to_json_best_effort())
    ).items()
    if k not in NEUTRAL_FIELDS and k not in space
  }
  changes = [
    f"--metric {old['metric']} -> {metric}" if old["metric"] != metric else "",
    f"--direction {old['direction']} -> {direction}" if old["direction"] != direction else "",
    "--space changed" if old["space"] != _space_record(space) else "",
    "config " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in config_changes.items())
    if config_changes
    else "",
  ]
  changes = [c for c in changes if c]
  if changes:
    raise UserError(
      f"{sweep_dir} holds a sweep of {old['metric']} ({old['direction']}) that differs "
      f"from this one ({', '.join(changes)}): use a new sweep directory"
    )


def _record_sweep(sweep_dir, config, space, metric, direction, storage, config_dir=None) -> None:
  if storage:  # for `jaxtrain report`; a password in the URL is not written down
    from sqlalchemy.engine import make_url

    storage = (
      make_url(storage).render_as_string(hide_password=False)
      if make_url(storage).password is None
      else None
    )
  files.write_json(
    os.path.join(sweep_dir, "sweep.json"),
    {
      "metric": metric,
      "direction": direction,
      "storage": storage,
      "space": _space_record(space),
      "config": json.loads(config.to_json_best_effort()),
      "config_dir": os.path.abspath(config_dir) if config_dir else None,
    },
  )


def summary(sweep_dir: str, storage: str | None = None) -> dict[str, Any]:
  """Every trial (number, state, params, value, workdir) and the best complete one."""
  import optuna

  study = open_study(sweep_dir, storage, create=False)
  rows = [
    {
      "number": t.number,
      "state": t.state.name,
      "params": t.params,
      "value": t.value,
      "last_step": t.last_step,
      "workdir": t.user_attrs.get("workdir"),
    }
    for t in study.get_trials(deepcopy=False)
    if not t.user_attrs.get("surplus")
  ]
  complete = [
    t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
  ]
  best = None
  if complete:
    t = study.best_trial
    best = {
      "number": t.number,
      "value": t.value,
      "params": t.params,
      "workdir": t.user_attrs.get("workdir"),
    }
  return {"trials": rows, "best": best, "direction": study.direction.name.lower()}


def write_best_config(sweep_dir: str, best: dict) -> str:
  """`best_config.py`: the best trial's resolved config, trainable as it is.

  Read from the trial's workdir; when another machine's worker ran it, made
  from the sweep's base config and the trial's parameters.
  """
  config = wd.read_config(os.path.join(sweep_dir, best["workdir"])) if best["workdir"] else None
  if config is None:
    import ml_collections

    with open(os.path.join(sweep_dir, "sweep.json")) as f:
      base = ml_collections.ConfigDict(json.load(f)["config"])
    config = json.loads(apply_overrides(base, best["params"]).to_json_best_effort())
  with open(os.path.join(sweep_dir, "sweep.json")) as f:
    config_dir = json.load(f).get("config_dir")
  config = _absolute_code_paths(config, config_dir)
  path = os.path.join(sweep_dir, "best_config.py")
  with files.replacing(path) as f:
    doc = (
      f"The best trial (#{best['number']}, value {best['value']!r}) of the sweep in "
      f"{os.path.abspath(sweep_dir)}.\n\nIts parameters: {_describe(best['params'])}.\n"
      "Training it in a fresh workdir gives the trial's bits.\n"
    )
    f.write(
      f"{doc!r}\n\n"
      "import json\n\nfrom ml_collections import ConfigDict\n\n"
      # repr() of a str is a Python literal whatever the str holds: no value of the config
      # (a trial's parameter from a shared study included) can become code here.
      f"CONFIG = json.loads({json.dumps(config, sort_keys=True)!r})\n\n\n"
      "def get_config():\n  return ConfigDict(CONFIG)\n"
    )
  return path


def _absolute_code_paths(config: dict, config_dir: str | None) -> dict:
  """The config with relative `file.py:Name` paths made absolute: best_config.py lives elsewhere."""
  config = json.loads(json.dumps(config))
  for section, field in (("model", "name"), (None, "task"), ("dataset", "name")):
    holder = config.get(section, {}) if section else config
    name = holder.get(field) if isinstance(holder, dict) else None
    if isinstance(name, str) and registry.is_import_path(name) and ".py:" in name:
      where, _, attr = name.rpartition(":")
      if not os.path.isabs(where):
        holder[field] = f"{os.path.join(config_dir or os.getcwd(), where)}:{attr}"
  return config


def format_table(result: dict) -> str:
  trials = result["trials"]
  names = sorted({k for t in trials for k in t["params"]})
  header = ["trial", "state", *names, "value", "step"]
  rows = [
    [
      str(t["number"]),
      t["state"],
      *[
        f"{t['params'].get(n, ''):.4g}"
        if isinstance(t["params"].get(n), float)
        else str(t["params"].get(n, ""))
        for n in names
      ],
      "" if t["value"] is None else f"{t['value']:.5g}",
      "" if t["last_step"] is None else str(t["last_step"]),
    ]
    for t in trials
  ]
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
  if result["best"]:
    lines.append(f"best: trial {result['best']['number']} ({result['best']['value']:.5g})")
  return "\n".join(lines)
