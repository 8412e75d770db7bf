"""The `jaxtrain` command: import data, train a config in a workdir, predict, export, inspect.

    jaxtrain train --config configs/digits.py --workdir runs/digits \\
        [--config.optimizer.learning_rate=0.05 ...] [--stop_at_step N]
        [--allow_config_change] [--debug]
        [--coordinator HOST:PORT --num_processes N --process_id I]
    jaxtrain sweep --config C --space S.py --trials N --workdir SWEEP_DIR
        [--storage URL] [--metric eval/accuracy --direction maximize]
        [--sampler tpe|random|grid] [--pruner median|hyperband|none]
    jaxtrain report DIRS... --out DIR
    jaxtrain inspect WORKDIR [--json]
    jaxtrain rerun WORKDIR --into NEWDIR [--json]
    jaxtrain data import FILES... --name NAME [--label COL --split time:COL ...] | --config C
    jaxtrain predict --workdir W --input rows.csv --output predictions.csv [--best]
    jaxtrain export --workdir W [--output DIR] [--best]

Exit status: 0 done; 1 a mistake found while running (config value, data,
checkpoint, non-finite loss) or a rerun whose bits differ; 2 a bad command
line; 75 preempted (SIGTERM, SIGINT, SIGHUP, SIGUSR1) with the newest
checkpoint complete: run the same command again to resume; 76 stalled, or
stopped while a save was being written: the newest complete checkpoint
resumes it. Errors are one line, `jaxtrain: error: ...`; `--debug` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import signal
import sys
from inspect import signature

from jaxtrain import __version__
from jaxtrain.errors import PREEMPTED, RUN_ERROR, STOP_SIGNALS, USAGE_ERROR, Preempted
from jaxtrain.run import preemption

COMMAND_SUMMARIES = {
  "train": "train a config in a workdir (the same command resumes it)",
  "sweep": "an Optuna study of runs of a config over a search space",
  "report": "curves and sweep plots of workdirs and sweeps as HTML",
  "inspect": "a workdir's latest step, metrics, digests and bad checkpoints",
  "rerun": "train a workdir's manifest again and compare the bits",
  "data": "`data import`: files as a versioned TFDS dataset",
  "predict": "predictions of a trained run for the rows of a file",
  "export": "a trained run's inference function, weights inside (jax.export)",
}


class _Fail(Exception):
  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.status = status


def _usage() -> str:
  commands = "\n".join(f"  {name:<9}{summary}" for name, summary in COMMAND_SUMMARIES.items())
  return (
    f"usage: jaxtrain COMMAND [options]    (jaxtrain COMMAND --help for its options)\n\n"
    f"commands:\n{commands}\n\nExit status:{__doc__.split('Exit status:')[1]}"
  )


def load_config_file(value: str):
  """(the ConfigDict that `--config FILE[:ARG]`'s get_config([ARG]) returns, FILE[:ARG]).

  Each file is executed as a module of its own (named by its path), so configs
  loaded one after another in a process never share a get_config. Every
  failure is one line saying what to fix in the file.
  """
  at = value.rfind(".py:")  # configs/spam.py:transformer; a folder's name may hold a colon
  path, colon, arg = (value[: at + 3], ":", value[at + 4 :]) if at >= 0 else (value, "", "")
  module_name = "jaxtrain_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  try:
    loader = importlib.machinery.SourceFileLoader(module_name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(module_name, loader))
    loader.exec_module(module)
  except Exception as e:  # the file's own code may raise anything
    raise _Fail(f"--config: cannot load the config file: {e}", USAGE_ERROR) from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise _Fail("--config: the config file has no get_config() function", USAGE_ERROR)
  args = (arg,) if colon else ()
  try:
    signature(get_config).bind(*args)
  except TypeError as e:
    raise _Fail(
      f"--config: its get_config() failed: TypeError: get_config() {e}", USAGE_ERROR
    ) from None
  except ValueError:  # a callable without a signature Python can read: called as it is
    pass
  try:
    config = get_config(*args)
  except Exception as e:  # the file's own code may raise anything
    text = str(e)
    raise _Fail(
      f"--config: its get_config() raised {type(e).__name__}: "
      f"{text.splitlines()[0] if text else ''}",
      USAGE_ERROR,
    ) from None
  return config, path + colon + arg


def _check_fields_exist(config, argv: list[str]) -> None:
  """Every `--config.a.b=v` names a field the config has: else one line naming it (and the
  closest field there is)."""
  from ml_collections import ConfigDict

  for arg in argv:
    m = re.match(r"--config\.([\w.]+)(=|$)", arg)
    if not m or not isinstance(config, ConfigDict):
      continue
    node = config
    for key in m[1].split("."):
      if not isinstance(node, ConfigDict):
        break  # a field inside a value: ml_collections says what is wrong with it
      if key not in node:
        close = difflib.get_close_matches(key, list(node.keys()), n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        raise _Fail(f"config has no field '{m[1]}' (from {arg}){suggestion}", USAGE_ERROR)
      node = node[key]


def _check_config_is_a_config(config, name: str) -> None:
  """A config file's get_config() must return a ConfigDict built on base_config()."""
  from ml_collections import ConfigDict
  from jaxtrain.config import base_config

  if not isinstance(config, ConfigDict):
    raise _Fail(
      f"--config {name}: get_config() returned {type(config).__name__}, not the "
      "ml_collections ConfigDict of jaxtrain.config.base_config() (did it `return config`?)",
      USAGE_ERROR,
    )

  def missing(base, given, prefix=""):
    for key, value in base.items():
      if key not in given:
        yield prefix + key
      elif (
        isinstance(value, ConfigDict)
        and isinstance(given[key], ConfigDict)
        and key not in ("model", "loss")
      ):  # a model's arguments, a task's options: free
        yield from missing(value, given[key], f"{prefix}{key}.")

  lacks = list(missing(base_config(), config))
  if lacks:
    raise _Fail(
      f"--config {name}: get_config() must start from jaxtrain.config.base_config(); "
      f"its config lacks {', '.join(lacks[:6])}{', ...' if len(lacks) > 6 else ''}",
      USAGE_ERROR,
    )


TRAIN_FLAGS = (
  ("workdir", "string", "Directory for checkpoints, metrics, config and manifest (required)."),
  (
    "stop_at_step",
    "integer",
    "Stop (with a checkpoint) after this global step; the run itself "
    "is unchanged and resumes later.",
  ),
  (
    "allow_config_change",
    "bool",
    "Resume a run under a config or user code that differs in what "
    "changes training (recorded in manifest.json).",
  ),
  (
    "start_over",
    "bool",
    "When no checkpoint of the workdir is usable: set them and their metrics "
    "aside (<workdir>/abandoned/) and train from step 0.",
  ),
  ("debug", "bool", "Show tracebacks."),
  ("quiet", "bool", "No live progress bar: plain log lines only."),
  (
    "coordinator",
    "string",
    "Multi-process: HOST:PORT of process 0's coordination service (not "
    "needed under SLURM or Open MPI).",
  ),
  ("num_processes", "integer", "Multi-process: how many processes the job has."),
  ("process_id", "integer", "Multi-process: this process's index, 0-based."),
)
SWEEP_FLAGS = (
  (
    "space",
    "string",
    "Search space: a .py file whose get_space() maps config fields to "
    "jaxtrain.tools.sweep distributions.",
  ),
  ("trials", "integer", "How many finished trials the study should hold."),
  (
    "storage",
    "string",
    "An Optuna RDB URL (e.g. postgresql://user@host/db) shared by "
    "workers; default: SQLite in the sweep directory.",
  ),
  ("metric", "string", "The objective, split/name (default eval/loss)."),
  ("direction", "string", "minimize (default) or maximize."),
  ("sampler", "string", "tpe (default), random or grid."),
  ("pruner", "string", "median (default), hyperband or none."),
  (
    "grace_seconds",
    "integer",
    "A trial whose worker sent no heartbeat for this long is retried (default 20).",
  ),
)


def _flag_help(command: str) -> str:
  """`jaxtrain train --help` (and sweep's): every flag with its description."""
  flags = (SWEEP_FLAGS if command == "sweep" else ()) + TRAIN_FLAGS
  lines = [
    f"usage: jaxtrain {command} --config FILE[:ARG] --workdir DIR "
    + ("--space S.py --trials N " if command == "sweep" else "")
    + "[--config.FIELD=VALUE ...] [options]",
    "",
    "  --config FILE[:ARG]   Config file: a .py whose get_config([ARG]) returns the config "
    "(built on jaxtrain.config.base_config()).",
    "  --config.FIELD=VALUE  Override any field of the config (e.g. "
    "--config.optimizer.learning_rate=0.05); unknown fields and wrong types are errors.",
  ]
  for name, kind, text in flags:
    arg = "" if kind == "bool" else "=" + {"string": "S", "integer": "N"}[kind]
    lines.append(f"  --{name + arg:<19} {text}")
  return "\n".join(lines)


def builtin_file(value: str, folder: str = "") -> str:
  """`--config digits[:arg]`: the file of a config shipped with jaxtrain (a path stays a path)."""
  name, colon, arg = value.partition(":")
  if os.path.exists(name) or name.endswith(".py") or os.sep in name:
    return value
  spec = importlib.util.find_spec("jaxtrain.configs")
  directory = os.path.join(list(spec.submodule_search_locations)[0], folder)
  if os.path.isfile(os.path.join(directory, name + ".py")) and name != "__init__":
    return os.path.join(directory, name + ".py") + colon + arg
  known = sorted(f[:-3] for f in os.listdir(directory) if f.endswith(".py") and f != "__init__.py")
  raise _Fail(
    f"{value!r} is neither a file nor a built-in {'space' if folder else 'config'} "
    f"(they are: {', '.join(known)})",
    USAGE_ERROR,
  )


def _with_builtin_config(argv: list[str]) -> list[str]:
  """argv with `--config NAME` (or `--config=NAME`) made the built-in config's path."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == "--config" and i + 1 < len(out):
      out[i + 1] = builtin_file(out[i + 1])
    elif arg.startswith("--config="):
      out[i] = "--config=" + builtin_file(arg[len("--config=") :])
  return out


def _config_value(argv: list[str]) -> str | None:
  """The value of `--config FILE` (or `--config=FILE`) in argv, if given."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg[len("--config=") :]
  return None


def _without_config_file(argv: list[str]) -> list[str]:
  out, skip = [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
    elif arg == "--config":
      skip = True
    elif not arg.startswith("--config="):
      out.append(arg)
  return out


def _parse_flags(argv: list[str], command: str = "train", loaded=None):
  """The command's flags, its config loaded (`load_config_file`) and overridden by
  `--config.FIELD=VALUE`; `loaded` is a (config, filename) loaded already."""
  logging.getLogger("absl").setLevel(logging.ERROR)  # its warnings would be a second error line
  from absl import flags
  from ml_collections import config_flags

  value = _config_value(argv)
  if loaded is None and value is not None:
    loaded = load_config_file(value)
  config, filename = loaded if loaded is not None else (None, None)
  fv = flags.FlagValues()
  argv = [f"jaxtrain {command}"] + _without_config_file(argv)
  if config is not None:
    _check_fields_exist(config, argv)
    # config_flags reads overrides from sys_argv (default: sys.argv), not from fv(argv).
    config_flags.DEFINE_config_dict(
      "config",
      config,
      "The config (from --config FILE).",
      flag_values=fv,
      lock_config=True,
      sys_argv=argv,
    )
  for name, kind, help_text in (SWEEP_FLAGS if command == "sweep" else ()) + TRAIN_FLAGS:
    default = False if kind == "bool" else None
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv)
  if config is None:
    flags.DEFINE_string("config", None, "Config file (a .py with get_config()).", flag_values=fv)
  try:
    fv(argv)
  except flags.Error as e:
    text = str(e)
    raise _Fail(text.splitlines()[0] if text else type(e).__name__, USAGE_ERROR) from None
  fv.__dict__["config_filename"] = filename  # FlagValues keeps flags as attributes: set beside
  return fv


def config_filename(fv) -> str | None:
  """The `--config FILE[:ARG]` the flags were parsed with."""
  return fv.__dict__.get("config_filename")


def config_dir(fv) -> str:
  """The directory of the config file: where its relative `file.py:Name` paths start."""
  return _directory_of(config_filename(fv))


def _directory_of(filename: str) -> str:
  if ".py:" in filename:  # configs/spam.py:transformer
    filename = filename[: filename.rindex(".py:") + 3]
  return os.path.dirname(os.path.abspath(filename))


# The integer fields where 0 means "decide at start-up" also take the word.
_AUTO_FLAGS = {"--config.steps_per_dispatch=auto": "--config.steps_per_dispatch=0"}


def _parse_train_flags(argv: list[str], command: str = "train", managed=None):
  """The command's flags; a managed job's environment (managed.py) fills in what they omit."""
  argv = [_AUTO_FLAGS.get(a, a) for a in _with_builtin_config(argv)]
  if managed is not None and managed.overrides:
    # Right after --config (config_flags wants it first): the command line's own overrides
    # come later and win.
    at = next(
      (
        i + (1 if a.startswith("--config=") else 2)
        for i, a in enumerate(argv)
        if a == "--config" or a.startswith("--config=")
      ),
      len(argv),
    )
    argv = argv[:at] + list(managed.overrides) + argv[at:]
    if managed.workdir and not any(a == "--workdir" or a.startswith("--workdir=") for a in argv):
      argv.append(f"--workdir={managed.workdir}")
  value = _config_value(argv)
  if value is None:
    raise _Fail("--config is required (e.g. --config configs/digits.py)", USAGE_ERROR)
  config, filename = load_config_file(value)
  _check_config_is_a_config(config, filename)  # before its fields are looked for
  argv, model_args = _model_arguments_set(config, filename, argv)
  fv = _parse_flags(argv, command, loaded=(config, filename))
  if not fv.workdir:
    raise _Fail("--workdir is required", USAGE_ERROR)
  from jaxtrain.tools.managed import local_path

  local_path(fv.workdir, "--workdir")
  if model_args:
    with fv.config.unlocked():
      for key, value in model_args.items():
        fv.config.model[key] = value
  if fv.stop_at_step is not None and fv.stop_at_step <= 0:
    raise _Fail(f"--stop_at_step={fv.stop_at_step} must be > 0", USAGE_ERROR)
  return fv


def _model_arguments_set(config, filename: str, argv: list[str]) -> tuple[list[str], dict]:
  """`--config.model.FIELD=VALUE` for an argument the model takes that its config leaves out
  (at its default): taken off argv, set after the config is parsed. Other unknown fields
  stay in argv, to be refused as any unknown field is."""
  import ast
  from jaxtrain import registry
  from jaxtrain.run.inputs import _arguments

  wanted = {}
  for arg in argv:
    m = re.fullmatch(r"--config\.model\.(\w+)=(.*)", arg, re.S)
    if m and m[1] not in config.model:
      wanted[m[1]] = (arg, m[2])
  if not wanted:
    return argv, {}
  name = next(
    (a.split("=", 1)[1] for a in reversed(argv) if a.startswith("--config.model.name=")),
    config.model.name,
  )
  try:
    loaded = registry.resolve(name, registry.MODELS, "config.model.name", _directory_of(filename))
  except Exception:  # an unusable model name is reported where the run loads it
    return argv, {}
  takes = _arguments(loaded.obj)[0]
  out = {}
  for key, (arg, text) in wanted.items():
    if key in takes:
      try:
        out[key] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        out[key] = text
      argv = [a for a in argv if a != arg]
  return argv, out


def _set_xla_flags(config) -> None:
  """XLA reads its flags when the backend starts: set them before anything touches a device.

  Deterministic GPU kernels where asked. XLA's own collective timeouts stay as
  they are: a collective stuck on CPU ends the process after 40 s, loudly.
  """
  if config.deterministic_gpu_ops:
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_gpu_deterministic_ops" not in flags:
      os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true").strip()


def _log_to_console(stream=None):
  """jaxtrain's own log lines (stdout by default), apart from the root logger absl tunes."""
  log = logging.getLogger("jaxtrain")
  for old in list(log.handlers):
    log.removeHandler(old)
  handler = logging.StreamHandler(stream or sys.stdout)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False


COMPILING_COMMANDS = ("train", "sweep", "rerun", "predict", "export")


def _use_compilation_cache() -> None:
  """JAX's persistent compilation cache, on by default in the user's cache directory.

  A resumed, rerun or repeated run then loads its compiled steps instead of
  compiling them (experiments/startup.py measures the difference).
  $JAX_COMPILATION_CACHE_DIR, if set, wins; JAXTRAIN_COMPILATION_CACHE=0 turns it off.
  """
  if os.environ.get("JAXTRAIN_COMPILATION_CACHE", "1") == "0" or os.environ.get(
    "JAX_COMPILATION_CACHE_DIR"
  ):
    return
  import jax

  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  jax.config.update("jax_compilation_cache_dir", os.path.join(base, "jaxtrain", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _quiet_libraries():
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()


def train(argv: list[str]) -> int:
  from jaxtrain.tools import managed as managed_lib

  managed = managed_lib.from_environment()
  fv = _parse_train_flags(argv, managed=managed)
  preemption.check()
  _set_xla_flags(fv.config)
  _quiet_libraries()
  preemption.check()
  from jaxtrain.run import distributed

  if distributed.initialize(fv.coordinator, fv.num_processes, fv.process_id):
    import jax

    if jax.process_index() != 0:  # one process speaks for the job
      logging.getLogger("jaxtrain").setLevel(logging.WARNING)
  from jaxtrain.data.datasets import DatasetNotFound
  from jaxtrain.errors import UserError
  from jaxtrain.run.loop import train_and_evaluate

  preemption.check()
  try:
    train_and_evaluate(
      fv.config,
      fv.workdir,
      config_dir=config_dir(fv),
      stop_at_step=fv.stop_at_step,
      allow_config_change=fv.allow_config_change,
      progress=not fv.quiet,
      tensorboard_dir=managed.tensorboard_dir,
      start_over=fv.start_over,
    )
  except DatasetNotFound as e:
    if fv.config.data_import.name != e.name.partition(":")[0]:
      raise
    raise UserError(
      f"{e}; this config imports it: run `jaxtrain data import --config "
      f"{config_filename(fv)} --data_dir {e.data_dir}` first"
    ) from None
  if managed.model_dir and fv.stop_at_step is None:  # a finished run: the job's model output
    import jax

    if jax.process_index() == 0:
      from jaxtrain.tools import predict as predict_lib

      record = predict_lib.export(fv.workdir, managed.model_dir, code_dir=config_dir(fv))
      logging.getLogger("jaxtrain").info(
        "exported step %d to %s (%s's model directory)",
        record["step"],
        managed.model_dir,
        managed.service,
      )
  return 0


def inspect(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="jaxtrain inspect", description=COMMAND_SUMMARIES["inspect"]
  )
  parser.add_argument("workdir", help="a run's workdir")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  _quiet_libraries()
  from jaxtrain.run import checkpoint, workdir as wd

  step, arrays = checkpoint.load_arrays(args.workdir)
  last = {}
  for event in wd.read_events(args.workdir):
    last[event["split"]] = event
  quarantined = checkpoint.quarantine_dir(args.workdir)
  report = {
    "workdir": args.workdir,
    "latest_step": step,
    "params_digest": checkpoint.tree_digest(arrays["params"]),
    "state_digest": checkpoint.tree_digest(arrays),
    "metrics": last,
    "bad_checkpoints": {str(k): v for k, v in checkpoint.verify(args.workdir).items()},
    "bad_best_checkpoints": {
      str(k): v for k, v in checkpoint.verify(args.workdir, best=True).items()
    },
    "quarantined_checkpoints": sorted(os.listdir(quarantined))
    if os.path.isdir(quarantined)
    else [],
  }
  if args.json:
    print(json.dumps(report, indent=2))
    return 0
  print(f"workdir        {args.workdir}")
  print(f"latest step    {step}")
  print(f"params digest  {report['params_digest']}")
  print(f"state digest   {report['state_digest']}")
  for bad, reason in report["bad_checkpoints"].items():
    print(f"bad checkpoint {bad}: {reason}")
  for bad, reason in report["bad_best_checkpoints"].items():
    print(f"bad best checkpoint {bad} ({wd.best_checkpoints(args.workdir)}): {reason}")
  for moved in report["quarantined_checkpoints"]:
    print(f"bad checkpoint {moved} (moved to {quarantined})")
  for split, event in last.items():
    values = "  ".join(
      f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
      for k, v in event.items()
      if k not in ("split", "time")
    )
    print(f"{split:<6} {values}")
  return 0


def rerun(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="jaxtrain rerun", description=COMMAND_SUMMARIES["rerun"])
  parser.add_argument("workdir", help="the workdir of the run to train again")
  parser.add_argument("--into", required=True, help="a new (or empty) workdir for the rerun")
  parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
  parser.add_argument(
    "--data_dir",
    help="where datasets are prepared for the rerun (default: "
    "$TFDS_DATA_DIR or ~/tensorflow_datasets; never the one the manifest names)",
  )
  _code_option(parser)
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  args = parser.parse_args(argv)
  if os.path.isdir(args.into) and os.listdir(args.into):
    raise _Fail(f"--into {args.into} is not empty: rerun into a new directory", USAGE_ERROR)
  _log_to_console(sys.stderr)  # stdout carries the report
  from ml_collections import ConfigDict
  from jaxtrain.run import manifest

  _set_xla_flags(ConfigDict(manifest.read(args.workdir)["config"]))
  _quiet_libraries()
  from jaxtrain.tools import rerun as rerun_lib

  report = rerun_lib.rerun(args.workdir, args.into, data_dir=args.data_dir, code_dir=args.code)
  print(json.dumps(report, indent=2) if args.json else rerun_lib.describe(report))
  return 0 if report["match"] else RUN_ERROR


def sweep(argv: list[str]) -> int:
  """`jaxtrain sweep --config C --space S.py --trials N --workdir SWEEP_DIR [...]`."""
  fv = _parse_train_flags(argv, "sweep")
  from jaxtrain.errors import require

  require("optuna", "sweep", "jaxtrain sweep")
  if not fv.space or not fv.trials or fv.trials < 1:
    raise _Fail("--space and --trials (>= 1) are required", USAGE_ERROR)
  from jaxtrain.tools import sweep as sweep_lib

  choices = {
    "direction": ("minimize", "maximize"),
    "sampler": sweep_lib.SAMPLERS,
    "pruner": sweep_lib.PRUNERS,
  }
  for name, allowed in choices.items():
    if fv[name].value is not None and fv[name].value not in allowed:
      raise _Fail(f"--{name}={fv[name].value} must be one of {', '.join(allowed)}", USAGE_ERROR)
  _quiet_libraries()
  space = sweep_lib.load_space(builtin_file(fv.space, "sweeps"))
  result = sweep_lib.run_sweep(
    fv.config,
    space,
    fv.workdir,
    trials=fv.trials,
    metric=fv.metric or "eval/loss",
    direction=fv.direction or "minimize",
    sampler=fv.sampler or "tpe",
    pruner=fv.pruner or "median",
    storage=fv.storage,
    grace_seconds=fv.grace_seconds or sweep_lib.GRACE_SECONDS,
    config_dir=config_dir(fv),
  )
  print(sweep_lib.format_table(result))
  if result["best"]:
    print(f"best config: {os.path.join(fv.workdir, 'best_config.py')}")
  return 0


def report(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="jaxtrain report", description=COMMAND_SUMMARIES["report"])
  parser.add_argument("dirs", nargs="+", help="workdirs and sweep directories")
  parser.add_argument("--out", required=True, help="where index.html and the PNGs go")
  args = parser.parse_args(argv)
  from jaxtrain.errors import require

  require("matplotlib", "report", "jaxtrain report")
  from jaxtrain.tools import report as report_lib

  summary = report_lib.write_report(args.dirs, args.out)
  print(report_lib.format_summary(summary))
  print(f"report: {os.path.join(args.out, 'index.html')}")
  return 0


def _import_parser(data_import) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="jaxtrain data import",
    description="Files as a versioned TFDS dataset in a data_dir: every value is checked before "
    "anything is written; unchanged files import as the version they already are.",
    epilog="--config.FIELD=VALUE overrides the config's fields, as for train.",
  )
  fields = {f.name: f for f in dataclasses.fields(data_import.ImportSpec)}
  parser.add_argument("sources", nargs="*", help=fields["sources"].metadata["help"])
  parser.add_argument(
    "--config", help="a config file whose data_import section says what to import"
  )
  parser.add_argument(
    "--data_dir",
    help="where TFDS datasets live (default: the config's, "
    "$TFDS_DATA_DIR or ~/tensorflow_datasets)",
  )
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  for name, field in fields.items():
    if name != "sources":
      parser.add_argument(
        f"--{name}",
        type=int if isinstance(field.default, int) else str,
        help=f"{field.metadata['help']} (default: {field.default!r})",
      )
  return parser


def data(argv: list[str]) -> int:
  """`jaxtrain data import SOURCES... --name N [options]`, or `--config C` (its data_import)."""
  from jaxtrain.data import importing as data_import

  parser = _import_parser(data_import)
  if argv[:1] in (["-h"], ["--help"]):
    parser.print_help()
    return 0
  if not argv or argv[0] != "import":
    raise _Fail(
      "usage: jaxtrain data import SOURCES... --name NAME [options] "
      "(jaxtrain data import --help lists them)",
      USAGE_ERROR,
    )
  args, rest = parser.parse_known_args(argv[1:])
  overrides = [a for a in rest if a.startswith("--config.")]
  if set(rest) - set(overrides):
    raise _Fail(f"unknown arguments: {' '.join(sorted(set(rest) - set(overrides)))}", USAGE_ERROR)
  _quiet_libraries()
  if args.config:
    config = _parse_flags(["--config", builtin_file(args.config)] + overrides, "data").config
    spec = data_import.ImportSpec.from_config(config.data_import)
    data_dir = config.dataset.data_dir
  else:
    spec, data_dir = data_import.ImportSpec(sources=(), name=""), ""
  for field in dataclasses.fields(spec):
    value = args.sources if field.name == "sources" else getattr(args, field.name)
    if value:
      setattr(spec, field.name, tuple(value) if field.name == "sources" else value)
  if not spec.sources or not spec.name:
    raise _Fail(
      "give the files to import and --name (or a --config with data_import set)", USAGE_ERROR
    )
  from jaxtrain.data import store

  directory, new = data_import.run_import(
    spec, args.data_dir or data_dir or store.default_data_dir()
  )
  schema = data_import.read_schema(directory)
  counts = ", ".join(f"{k} {v}" for k, v in schema["num_examples"].items())
  print(
    f"{'imported' if new else 'unchanged, already imported as'} {spec.name}:{schema['version']} "
    f"({counts}) in {directory}"
  )
  if new:
    print(data_import.schema_table(schema))
  return 0


def _code_option(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--code",
    help="the folder of the run's own model/task/data files (a run "
    "that used files of its own needs it: a workdir never names code to run)",
  )


def _checkpoint_choice(parser: argparse.ArgumentParser) -> None:
  which = parser.add_mutually_exclusive_group()
  which.add_argument(
    "--best",
    dest="best",
    action="store_true",
    default=None,
    help="the best checkpoint (keep_best_checkpoints)",
  )
  which.add_argument("--newest", dest="best", action="store_false", help="the newest checkpoint")
  parser.epilog = (
    "Default: the checkpoint the run's test metrics came from: its best if it "
    "kept its best checkpoints, else its newest."
  )
  parser.add_argument("--debug", action="store_true", help="show tracebacks")


def predict(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    prog="jaxtrain predict", description=COMMAND_SUMMARIES["predict"]
  )
  parser.add_argument("--workdir", required=True, help="the trained run's workdir")
  parser.add_argument(
    "--input", required=True, help="rows to predict: a file like the imported ones"
  )
  parser.add_argument("--output", required=True, help="the CSV to write")
  parser.add_argument("--batch_size", type=int, default=256, help="rows per batch (default 256)")
  _checkpoint_choice(parser)
  _code_option(parser)
  args = parser.parse_args(argv)
  _quiet_libraries()
  from jaxtrain.tools import predict as predict_lib

  n, step = predict_lib.predict_file(
    args.workdir,
    args.input,
    args.output,
    batch_size=args.batch_size,
    best=args.best,
    code_dir=args.code,
  )
  print(f"wrote {n} predictions of step {step} to {args.output}")
  return 0


def export(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="jaxtrain export", description=COMMAND_SUMMARIES["export"])
  parser.add_argument("--workdir", required=True, help="the trained run's workdir")
  parser.add_argument("--output", help="default: <workdir>/export")
  parser.add_argument(
    "--format",
    choices=("jax", "safetensors"),
    default="jax",
    help="jax: the inference function, weights inside (jax.export); safetensors: a Hugging "
    "Face folder in the layout the run's model.pretrained came in",
  )
  parser.add_argument(
    "--lora",
    choices=("merged", "separate"),
    default="merged",
    help="safetensors of a LoRA run: adapters merged into the weights, or a PEFT adapter "
    "file beside the unchanged base",
  )
  _checkpoint_choice(parser)
  _code_option(parser)
  args = parser.parse_args(argv)
  _quiet_libraries()
  from jaxtrain.tools import predict as predict_lib
  from jaxtrain.run import workdir as wd

  out = args.output or wd.export(args.workdir)
  if args.format == "safetensors":
    from jaxtrain.tools import export_hf

    record = export_hf.export(
      args.workdir, out, best=args.best, code_dir=args.code, lora_mode=args.lora
    )
    print(
      f"exported step {record['step']} to {out} as a Hugging Face folder: "
      f"{', '.join(record['files'])} ({record['tensors']} tensors"
      + (f"; LoRA {record['lora']}" if record["lora"] else "")
      + ")"
    )
    return 0
  record = predict_lib.export(args.workdir, out, best=args.best, code_dir=args.code)
  print(
    f"exported step {record['step']} to {out} (inputs: {', '.join(record['inputs'])}; "
    f"outputs: {', '.join(record['outputs'])})"
  )
  return 0


COMMANDS = {
  "train": train,
  "sweep": sweep,
  "report": report,
  "inspect": inspect,
  "rerun": rerun,
  "data": data,
  "predict": predict,
  "export": export,
}


def main(argv: list[str] | None = None) -> int:
  """The `jaxtrain` command (`argv` given: called from Python, which gets its signal handlers back).

  From its first line to its last a stop signal is recorded (run/preemption.py)
  and acted on where stopping loses nothing; as the program, a thread also ends
  the process if the main thread does not get there within the grace period.
  """
  as_program = argv is None
  with preemption.watching(), preemption.GraceThread() if as_program else contextlib.nullcontext():
    status = _main(sys.argv[1:] if argv is None else argv)
  if as_program:  # the program's work is done and its status decided: a late signal changes nothing
    for sig in STOP_SIGNALS:
      signal.signal(sig, signal.SIG_IGN)
  return status


def _main(argv: list[str]) -> int:
  if argv[:1] in (["-h"], ["--help"], ["help"]):
    print(_usage())
    return 0
  if argv[:1] == ["--version"]:
    print(f"jaxtrain {__version__}")
    return 0
  if not argv or argv[0] not in COMMANDS:
    unknown = f"unknown command {argv[0]!r}; " if argv else ""
    print(
      f"{unknown}usage: jaxtrain {{{'|'.join(COMMANDS)}}} ... (jaxtrain --help tells more)",
      file=sys.stderr,
    )
    return USAGE_ERROR
  if argv[0] in ("train", "sweep") and any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(_flag_help(argv[0]))
    return 0
  _log_to_console()
  debug = "--debug" in argv
  try:
    if argv[0] in COMPILING_COMMANDS and not {"-h", "--help"} & set(argv):
      _use_compilation_cache()
    preemption.check()
    status = COMMANDS[argv[0]](argv[1:])
  except Preempted as e:
    print(f"jaxtrain: preempted: {e}", file=sys.stderr)
    return PREEMPTED
  except Exception as e:
    # After a stop signal a failure is reported as the stop (a library the signal
    # interrupted may fail for it); the restart surfaces any real error.
    if preemption.received():
      print(f"jaxtrain: preempted: {Preempted(None, preemption.received())}", file=sys.stderr)
      return PREEMPTED
    if isinstance(e, _Fail):
      print(f"jaxtrain: error: {e}", file=sys.stderr)
      return e.status
    from jaxtrain.errors import UserError

    full_disk = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    if debug or not (isinstance(e, UserError) or full_disk):
      raise
    print(f"jaxtrain: error: {e}", file=sys.stderr)
    return RUN_ERROR
  if preemption.observe():
    logging.getLogger("jaxtrain").info(
      "%s received after `jaxtrain %s` had finished its work: nothing to resume",
      preemption.received(),
      argv[0],
    )
  return status


if __name__ == "__main__":
  sys.exit(main())
