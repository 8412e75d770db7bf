"""Start-up: time to the first training step, cold vs. with JAX's persistent compilation cache.

`jaxtrain train` turns the cache on by default (in ~/.cache/jaxtrain/xla).
Each round runs the same command in a fresh process and a fresh workdir
twice against one new, empty cache directory: the first process compiles
everything and fills the cache (cold); the second loads the compiled steps
(warm). The time is the run's own "first step done N s after the run
started" (data ready, model built, steps compiled, one step run; Python's
imports are before it and the same either way); the whole process's wall
time is shown beside it. Rounds alternate so machine noise hits both.

    python experiments/startup.py [--config configs/digits.py] [--rounds 3] [--out startup.json]
    python experiments/startup.py --quick          # the test suite's run (no timing claims)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_STEP = re.compile(r"first step done ([0-9.]+) s after the run started")


def run_once(
  config: str, cache_dir: str, data_dir: str, workdir: str, overrides
) -> tuple[float, float]:
  env = dict(os.environ, XDG_CACHE_HOME=cache_dir)  # jaxtrain's default cache lives under it
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("JAXTRAIN_COMPILATION_CACHE", None)
  start = time.perf_counter()
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxtrain.tools.cli",
      "train",
      "--config",
      config,
      "--workdir",
      workdir,
      "--quiet",
      f"--config.dataset.data_dir={data_dir}",
      "--config.num_train_steps=1",
      *overrides,
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
  )
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise SystemExit(f"startup.py: the training process failed:\n{proc.stderr[-2000:]}")
  found = FIRST_STEP.search(proc.stdout + proc.stderr)
  if not found:
    raise SystemExit("startup.py: the run did not report its first step")
  return float(found[1]), wall


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="")
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--quick", action="store_true", help="one round, for the test suite")
  args = parser.parse_args(argv)
  rounds = 1 if args.quick else args.rounds
  scratch = tempfile.mkdtemp(prefix="jaxtrain-startup-")
  data_dir = args.data_dir or os.path.join(scratch, "data")
  # Not timed: prepare the dataset once, so both sides find it on disk.
  run_once(
    args.config, os.path.join(scratch, "prep-cache"), data_dir, os.path.join(scratch, "prep"), []
  )
  cold, warm = [], []
  for r in range(rounds):
    cache = os.path.join(scratch, f"cache{r}")
    for name, times in (("cold", cold), ("warm", warm)):
      times.append(run_once(args.config, cache, data_dir, os.path.join(scratch, f"{name}{r}"), []))
  summary = {
    "config": args.config,
    "rounds": rounds,
    "cold_first_step_s": statistics.median(t for t, _ in cold),
    "warm_first_step_s": statistics.median(t for t, _ in warm),
    "cold_process_s": statistics.median(w for _, w in cold),
    "warm_process_s": statistics.median(w for _, w in warm),
  }
  summary["cache_entries"] = len(os.listdir(os.path.join(scratch, "cache0", "jaxtrain", "xla")))
  summary["ratio_first_step"] = summary["warm_first_step_s"] / summary["cold_first_step_s"]
  summary["ratio_process"] = summary["warm_process_s"] / summary["cold_process_s"]
  print(f"{'':24s}{'cold':>10s}{'warm':>10s}{'warm/cold':>11s}")
  print(
    f"{'time to first step (s)':24s}{summary['cold_first_step_s']:10.2f}"
    f"{summary['warm_first_step_s']:10.2f}"
    f"{summary['ratio_first_step']:11.2f}"
  )
  print(
    f"{'whole process (s)':24s}{summary['cold_process_s']:10.2f}{summary['warm_process_s']:10.2f}"
    f"{summary['ratio_process']:11.2f}"
  )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
