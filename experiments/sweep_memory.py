"""A sweep's memory over many trials: the resident size after each trial, in one process.

    python experiments/sweep_memory.py --trials 25
    python experiments/sweep_memory.py --trials 4 --quick      # what the test suite runs

Each trial trains the digits MLP briefly; a worker that kept every trial's
compiled programs (or anything else per trial) would grow linearly. Prints
the RSS after each trial, and the median of the last five over that of trials 3-7.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxtrain.config import base_config  # noqa: E402
from jaxtrain.run.loop import train_and_evaluate  # noqa: E402
from jaxtrain.tools import sweep  # noqa: E402


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=25)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  rss = []

  def train(config, workdir, **kw):
    train_and_evaluate(config, workdir, **kw)
    rss.append(round(rss_mb(), 1))
    print(f"trial {len(rss):3d}  rss {rss[-1]:8.1f} MB", flush=True)

  with tempfile.TemporaryDirectory() as tmp:
    c = base_config()
    c.update(
      num_train_steps=10 if args.quick else 40,
      log_every_steps=10,
      eval_every_steps=40,
      checkpoint_every_steps=40,
      batch_size=32,
    )
    c.dataset.update(data_dir=str(Path(tmp) / "data"), train_split="train", eval_split="test")
    c.model = dict(name="mlp", num_classes=10, features=(64,))
    space = {"optimizer.learning_rate": sweep.loguniform(1e-3, 1e-1)}
    sweep.run_sweep(
      c,
      space,
      str(Path(tmp) / "sweep"),
      trials=args.trials,
      sampler="random",
      pruner="none",
      train=train,
    )
  early = sorted(rss[2:7] or rss)[len(rss[2:7] or rss) // 2]  # once the first compiles are done
  late = sorted(rss[-5:])[len(rss[-5:]) // 2]
  result = {
    "rss_mb": rss,
    "median_trials_3_7_mb": early,
    "median_last_5_mb": late,
    "ratio": round(late / early, 3),
  }
  print(json.dumps({k: v for k, v in result.items() if k != "rss_mb"}))
  return result


if __name__ == "__main__":
  main()
