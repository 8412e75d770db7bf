"""The `jaxtrain` command: `train` a config in a workdir, `inspect` a workdir.

    jaxtrain train --config configs/digits.py --workdir runs/digits \\
        [--config.optimizer.learning_rate=0.05 ...] [--stop_at_step N] [--debug]
    jaxtrain inspect WORKDIR [--json]

Mistakes a user can fix (a bad flag, config value, path, dataset) print one
line, `jaxtrain: error: ...`, and exit with status 2 (command line) or 1
(anything found later); `--debug` shows the traceback instead. The config is
parsed before JAX is imported, so a bad override fails in about a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys

USAGE_ERROR, RUN_ERROR = 2, 1


class _Fail(Exception):
  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.status = status


def _config_error(error: Exception, argv: list[str]) -> str:
  """One line naming the config field a flag-parsing error is about."""
  text = str(error)
  if isinstance(error, AttributeError):  # ml_collections: a field that does not exist
    key = text.strip("\"'")
    for arg in argv:
      m = re.match(r"--config\.([\w.]+)", arg)
      if m and key in m[1].split("."):
        return f"config has no field '{m[1]}' (from {arg})"
    return f"config has no field '{key}'"
  if "Failed loading config file" in text or "earlier failure to load" in text:
    detail = [l.strip() for l in text.splitlines() if l.strip()][-1]
    return f"--config: cannot load the config file: {detail}"
  return text.splitlines()[0] if text else type(error).__name__


def _parse_train_flags(argv: list[str]):
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Config file (a .py with get_config()).",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and config.",
                      flag_values=fv)
  flags.DEFINE_integer("stop_at_step", None, "Stop (with a checkpoint) after this global "
                       "step; the run itself is unchanged and resumes later.", flag_values=fv)
  flags.DEFINE_bool("debug", False, "Show tracebacks.", flag_values=fv)
  try:
    fv(["jaxtrain train"] + argv)
    config = fv.config
    if config is not None:
      config.keys()  # config_flags defers a load failure to the first access
  except Exception as e:  # absl and ml_collections raise several types here
    raise _Fail(_config_error(e, argv), USAGE_ERROR) from None
  if config is None:
    raise _Fail("--config is required (e.g. --config configs/digits.py)", USAGE_ERROR)
  if not fv.workdir:
    raise _Fail("--workdir is required", USAGE_ERROR)
  return config, fv.workdir, fv.stop_at_step


def _log_to_console():
  """jaxtrain's own log lines on stdout; kept apart from the root logger that absl tunes."""
  log = logging.getLogger("jaxtrain")
  if not log.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False


def _quiet_libraries():
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()


def train(argv: list[str]) -> int:
  config, workdir, stop_at_step = _parse_train_flags(argv)
  _quiet_libraries()
  from jaxtrain.train import train_and_evaluate
  train_and_evaluate(config, workdir, stop_at_step=stop_at_step)
  return 0


def inspect(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="jaxtrain inspect")
  parser.add_argument("workdir")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  _quiet_libraries()
  from jaxtrain import checkpoint
  from jaxtrain.metric_writers import read_metrics
  step, arrays = checkpoint.load_arrays(args.workdir)
  last = {}
  for event in read_metrics(args.workdir):
    last[event["split"]] = event
  report = {"workdir": args.workdir, "latest_step": step,
            "params_digest": checkpoint.tree_digest(arrays["params"]),
            "state_digest": checkpoint.tree_digest(arrays),
            "metrics": last}
  if args.json:
    print(json.dumps(report, indent=2))
    return 0
  print(f"workdir        {args.workdir}")
  print(f"latest step    {step}")
  print(f"params digest  {report['params_digest']}")
  print(f"state digest   {report['state_digest']}")
  for split, event in last.items():
    values = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in event.items() if k not in ("split", "time"))
    print(f"{split:<6} {values}")
  return 0


COMMANDS = {"train": train, "inspect": inspect}


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  _log_to_console()
  if not argv or argv[0] not in COMMANDS:
    print(f"usage: jaxtrain {{{'|'.join(COMMANDS)}}} ...", file=sys.stderr)
    return USAGE_ERROR
  debug = "--debug" in argv
  try:
    return COMMANDS[argv[0]](argv[1:])
  except _Fail as e:
    print(f"jaxtrain: error: {e}", file=sys.stderr)
    return e.status
  except Exception as e:
    from jaxtrain.errors import UserError
    if debug or not isinstance(e, UserError):
      raise
    print(f"jaxtrain: error: {e}", file=sys.stderr)
    return RUN_ERROR


if __name__ == "__main__":
  sys.exit(main())
