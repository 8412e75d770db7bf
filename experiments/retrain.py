"""Scheduled retraining: import the newest data, train a candidate, promote it only if better.

    python experiments/retrain.py --config configs/spam.py --home /srv/spam \
        --source /data/exports/messages.csv [--data_dir DIR] [--metric loss --mode min]
        [--min_improvement 0.0] [--no_warm_start] [--config.num_train_steps=2000 ...]

`<home>/production` is a symlink to the workdir of the model in production.
Each run:
  1. imports --source (or the config's data_import) as the dataset's next
     version; unchanged files end the run with "no new data";
  2. trains a candidate in `<home>/runs/<name>-<version>[-n]`, warm-started
     from production (`init_from`) unless --no_warm_start;
  3. evaluates the candidate and production on the *new* version's test
     split, each through its own training-time preprocessing;
  4. promotes the candidate (an atomic symlink swap) only if it beats
     production by more than --min_improvement on --metric;
  5. writes the decision, both models' metrics and why, to
     `<home>/decisions/<UTC time>.json` and prints it.
Exit status 0 whether promoted or refused; 1 on an error (nothing promoted).
A cron line that runs it nightly at 02:00:
    0 2 * * *  cd /srv/jaxtrain && .venv/bin/python experiments/retrain.py --config configs/spam.py --home /srv/spam --source /data/exports/messages.csv >> /srv/spam/retrain.log 2>&1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

from jaxtrain.tools import cli
from jaxtrain.data import importing as data_import
from jaxtrain.data import datasets
from jaxtrain.errors import UserError


def promote(home: str, workdir: str) -> None:
  link, tmp = os.path.join(home, "production"), os.path.join(home, ".production.tmp")
  if os.path.lexists(tmp):
    os.remove(tmp)
  os.symlink(os.path.abspath(workdir), tmp)
  os.replace(tmp, link)  # atomic: readers see the old model or the new one


def production(home: str) -> str | None:
  link = os.path.join(home, "production")
  return os.path.realpath(link) if os.path.exists(link) else None


def better(candidate: float, current: float, mode: str, min_improvement: float) -> bool:
  return (
    candidate < current - min_improvement
    if mode == "min"
    else candidate > current + min_improvement
  )


def decide(args, config) -> dict:
  from jaxtrain.tools.predict import evaluate_run
  from jaxtrain.run.loop import train_and_evaluate

  data_dir = args.data_dir or config.dataset.data_dir or datasets.default_data_dir()
  spec = data_import.ImportSpec.from_config(config.data_import)
  if args.source:
    spec.sources = tuple(args.source)
  version_dir, new = data_import.run_import(spec, data_dir)
  version = data_import.read_schema(version_dir)["version"]
  current = production(args.home)
  record = {
    "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    "dataset": f"{spec.name}:{version}",
    "production": current,
    "metric": args.metric,
    "mode": args.mode,
    "min_improvement": args.min_improvement,
  }
  if not new and current is not None:
    return dict(
      record, decision="no new data", reason=f"{spec.name}:{version} is already the newest import"
    )

  candidate = os.path.join(args.home, "runs", f"{spec.name}-{version}")
  n = 1
  while os.path.exists(candidate + (f"-{n}" if n > 1 else "")):
    n += 1
  candidate += f"-{n}" if n > 1 else ""
  config.dataset.name, config.dataset.data_dir = f"{spec.name}:{version}", data_dir
  if current is not None and not args.no_warm_start:
    config.init_from.workdir = current
    config.init_from.best = bool(config.keep_best_checkpoints)
  train_and_evaluate(config, candidate)
  best = bool(config.keep_best_checkpoints)
  new_metrics = evaluate_run(candidate, config.dataset.name, "test", best=best)
  record.update(candidate=candidate, candidate_metrics=new_metrics)
  if current is None:
    promote(args.home, candidate)
    return dict(record, decision="promoted", reason="no model was in production")
  with open(os.path.join(current, "config.json")) as f:
    current_best = json.load(f).get("keep_best_checkpoints", 0) > 0
  old_metrics = evaluate_run(current, config.dataset.name, "test", best=current_best)
  record["production_metrics"] = old_metrics
  for name, metrics in (("candidate", new_metrics), ("production", old_metrics)):
    if args.metric not in metrics:
      raise UserError(
        f"--metric={args.metric!r} is not a test metric of the {name} "
        f"(it has: {', '.join(sorted(metrics))})"
      )
  new_value, old_value = new_metrics[args.metric], old_metrics[args.metric]
  versus = (
    f"{args.metric} {new_value:.6g} vs production's {old_value:.6g} on {record['dataset']} test"
  )
  if better(new_value, old_value, args.mode, args.min_improvement):
    promote(args.home, candidate)
    return dict(record, decision="promoted", reason=f"better: {versus}")
  return dict(
    record, decision="refused", reason=f"not better by more than {args.min_improvement}: {versus}"
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="retrain.py", description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--home", required=True, help="holds production, runs/ and decisions/")
  parser.add_argument(
    "--source", nargs="*", help="the data files (default: the config's data_import)"
  )
  parser.add_argument("--data_dir")
  parser.add_argument("--metric", default="loss", help="a test metric (default loss)")
  parser.add_argument("--mode", default="min", choices=("min", "max"))
  parser.add_argument("--min_improvement", type=float, default=0.0)
  parser.add_argument("--no_warm_start", action="store_true")
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in rest if a.startswith("--config.")]
  if len(overrides) != len(rest):
    parser.error(f"unknown arguments: {' '.join(a for a in rest if a not in overrides)}")
  cli._log_to_console()
  cli._quiet_libraries()
  try:
    config = cli._parse_flags(["--config", args.config] + overrides, "retrain").config
    record = decide(args, config)
  except (UserError, cli._Fail) as e:
    print(f"retrain: error: {e}", file=sys.stderr)
    return 1
  os.makedirs(os.path.join(args.home, "decisions"), exist_ok=True)
  path = os.path.join(args.home, "decisions", record["time"].replace(":", "") + ".json")
  suffix = 1
  while os.path.exists(path):
    path = (
      path.replace(".json", f".{suffix}.json")
      if suffix == 1
      else path.replace(f".{suffix - 1}.json", f".{suffix}.json")
    )
    suffix += 1
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  print(f"{record['decision']}: {record['reason']} (decision record: {path})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
