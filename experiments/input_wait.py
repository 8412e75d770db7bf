"""Input pipeline: the share of training time the loop waits for data, for the MNIST CNN and a
ResNet.

jaxtrain's loop logs `data_wait`: the share of each log interval spent in
`next(batches)` (reading, preprocessing, copying to the device, net of what
prefetching hid). The device idles only while the loop waits and has no
step queued, so this is an upper bound on input starvation. Each model runs
twice, side by side: the split cached in memory (the default for splits
under dataset.cache_max_mb) and read from the array_record files every step
(cache_max_mb=0, Grain reading on `dataset.prefetch` threads).

    python experiments/input_wait.py [--steps 1000]      # the real MNIST files
    python experiments/input_wait.py --quick              # digits, a few steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

from bench import MNIST, mnist_config, timed_run  # noqa: E402

MODELS = {
  "cnn": dict(name="cnn", num_classes=10, dropout_rate=0.1),
  "resnet": dict(name="resnet", num_classes=10, stage_sizes=(2, 2, 2), width=32),
}


def config_for(args, model: str, cached: bool):
  c = mnist_config(quick=args.quick, warmup=args.warmup, steps=args.steps, data_dir=args.data_dir)
  c.model = MODELS[model]
  if args.quick:
    c.batch_size = 32
    if model == "resnet":
      c.model = dict(MODELS[model], stage_sizes=(1, 1), width=8)
  if not cached:
    c.dataset.cache_max_mb = 0
  return c


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000, help="timed steps per run")
  parser.add_argument("--warmup", type=int, default=50)
  parser.add_argument("--quick", action="store_true", help="digits, a few steps")
  parser.add_argument(
    "--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxtrain-bench-tfds")
  )
  parser.add_argument("--out", default="input_wait.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.warmup = 10, 5
  elif not MNIST.exists():
    parser.error(f"the MNIST files are not at {MNIST} (see shared/data/SOURCES.md); try --quick")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    pairs = [(m, c) for m in MODELS for c in (True, False)]
    for model, cached in (
      pairs[::3] if args.quick else pairs
    ):  # quick: cnn cached, resnet from files
      run = timed_run(
        config_for(args, model, cached), os.path.join(tmp, f"{model}{cached}"), args.warmup
      )
      rows.append(
        {
          "model": model,
          "source": "memory" if cached else "array_record",
          "steps_per_sec": run["steps_per_sec"],
          "data_wait": run["data_wait"],
        }
      )
  result = {
    "benchmark": "input_wait",
    "device": str(jax.devices()[0].device_kind),
    "data": "digits" if args.quick else "mnist_t10k[:8000]",
    "batch_size": 32 if args.quick else 128,
    "timed_steps": args.steps,
    "runs": rows,
    "date": time.strftime("%Y-%m-%d"),
  }
  print(
    f"device {result['device']}, {result['data']}, batch {result['batch_size']}, "
    f"{args.steps} timed steps"
  )
  print(f"{'model':<8} {'source':<13} {'steps/s':>9} {'data wait':>10}")
  for r in rows:
    print(f"{r['model']:<8} {r['source']:<13} {r['steps_per_sec']:>9.1f} {r['data_wait']:>10.1%}")
  print(f"worst data wait: {max(r['data_wait'] for r in rows):.1%}  (goal < 5% on a GPU)")
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
