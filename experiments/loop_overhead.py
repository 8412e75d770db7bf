"""Loop overhead: jaxtrain's whole training loop vs. a minimal hand-written `jax.jit` loop.

Both train the digits data (configs/digits.py) on the same batches for the
same steps, with its CNN (`--model cnn`) or an MLP small enough that
dispatch, not compute, sets the speed (`--model tiny`: one hidden layer of 32,
batch 32). The hand loop is what a researcher writes first: numpy arrays in
memory, a seeded permutation per epoch, `jax.jit(train_step,
donate_argnums=0)`, nothing else. jaxtrain's loop adds everything it does in
a real run: its data feed (a small split lives on the device, feeds.py), the
non-finite guard, on-device metric totals, logging, hooks, the transfer
guard. Each runs `--repeats` times, alternating, in this one process;
steps/s is measured over the steps after a warm-up interval (compilation
and the auto measurement excluded) and the ratios of the medians are reported.

    python experiments/loop_overhead.py --model tiny --steps 3000 --warmup 500   # dispatch-bound
    python experiments/loop_overhead.py --model cnn [--steps 600] [--repeats 3]   # today's case
    python experiments/loop_overhead.py --quick      # what the test suite runs (no timing claims)

Three loops, alternating: jaxtrain at steps_per_dispatch=1, jaxtrain at
"auto", and the hand loop (k=1); the ratios are to the hand loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import load_config as load_config_file, timed_run  # noqa: E402
from jaxtrain.data import datasets  # noqa: E402
from jaxtrain.run.inputs import build_model  # noqa: E402
from jaxtrain.steps import classification_loss  # noqa: E402
from jaxtrain.optim import make_optimizer  # noqa: E402
from jaxtrain.steps import train_step  # noqa: E402
from jaxtrain.run.loop import create_train_state  # noqa: E402


MODELS = {
  # Dispatch-bound: a step of an MLP this small is a few microseconds of compute.
  "tiny": dict(name="mlp", num_classes=10, features=(32,), dropout_rate=0.0),
  "cnn": None,  # configs/digits.py's own CNN
}


def load_config(
  warmup: int,
  steps: int,
  data_dir: str,
  model: str = "cnn",
  batch_size: int = 0,
  steps_per_dispatch=1,
):
  c = load_config_file("digits")
  if MODELS[model] is not None:
    c.model = MODELS[model]
  if batch_size:
    c.batch_size = batch_size
  c.steps_per_dispatch = steps_per_dispatch
  c.num_train_steps, c.log_every_steps = warmup + steps, warmup
  c.checkpoint_every_steps = c.eval_every_steps = 10 * (warmup + steps)  # the final save only
  c.dataset.update(eval_split="", test_split="", data_dir=data_dir)
  return c


def hand_loop(config, warmup: int) -> float:
  """Steps/s of the minimal loop over the same steps after the same warm-up."""
  builder = datasets.get_builder(config.dataset)
  source = datasets.get_source(builder, config.dataset.train_split)
  rows = [source[i] for i in range(len(source))]
  images = np.stack([r["image"] for r in rows]).astype(np.float32) / 255
  labels = np.stack([r["label"] for r in rows])
  per_epoch = len(rows) // config.batch_size
  model = build_model(config, {"kind": "image"}, {"image": images[:1]})
  tx, _ = make_optimizer(config.optimizer, config.num_train_steps)
  state = create_train_state(
    config, model, tx, {"image": images[:1]}, model.apply_fn(), classification_loss
  )
  step = jax.jit(train_step, donate_argnums=0)
  rng = np.random.default_rng(config.seed)
  order = []

  def batch(i):
    if i % per_epoch == 0:
      order[:] = [rng.permutation(len(rows))]
    idx = order[0][(i % per_epoch) * config.batch_size : (i % per_epoch + 1) * config.batch_size]
    return {"image": images[idx], "label": labels[idx]}

  for i in range(warmup):
    state, metrics = step(state, batch(i))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(warmup, config.num_train_steps):
    state, metrics = step(state, batch(i))
  jax.block_until_ready(metrics)
  return (config.num_train_steps - warmup) / (time.perf_counter() - start)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600, help="timed steps per repeat")
  parser.add_argument("--warmup", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument(
    "--model",
    choices=sorted(MODELS),
    default="cnn",
    help="tiny: an MLP with one hidden layer of 32 (dispatch-bound); cnn: digits' CNN",
  )
  parser.add_argument(
    "--batch_size", type=int, default=0, help="default: 32 for tiny, the config's for cnn"
  )
  parser.add_argument("--quick", action="store_true", help="a few steps, one repeat")
  parser.add_argument(
    "--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxtrain-bench-tfds")
  )
  parser.add_argument("--out", default="loop_overhead.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.warmup, args.repeats = 20, 10, 1
  batch_size = args.batch_size or (32 if args.model == "tiny" else 0)
  # jaxtrain at k=1, jaxtrain with steps_per_dispatch="auto" (0), the hand loop at k=1.
  loops = {"jaxtrain k=1": 1, "jaxtrain auto": 0, "hand jit k=1": None}
  runs = {name: [] for name in loops}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.repeats):
      for name, k in loops.items():
        config = load_config(args.warmup, args.steps, args.data_dir, args.model, batch_size, k or 0)
        runs[name].append(
          hand_loop(config, args.warmup)
          if k is None
          else timed_run(config, os.path.join(tmp, f"{r}-{k}"), args.warmup)["steps_per_sec"]
        )
  median = {name: statistics.median(v) for name, v in runs.items()}
  hand = median["hand jit k=1"]
  result = {
    "benchmark": "loop_overhead",
    "device": str(jax.devices()[0].device_kind),
    "model": args.model,
    "model_config": dict(config.model),
    "batch_size": config.batch_size,
    "timed_steps": args.steps,
    "warmup_steps": args.warmup,
    "repeats": args.repeats,
    "steps_per_sec": runs,
    "ratio_k1": median["jaxtrain k=1"] / hand,
    "ratio_auto": median["jaxtrain auto"] / hand,
    "date": time.strftime("%Y-%m-%d"),
  }
  print(f"{'loop':<14} {'steps/s (median)':>17}  {'/ hand':>7}  runs")
  for name, v in runs.items():
    print(
      f"{name:<14} {median[name]:>17.1f}  {median[name] / hand:>7.3f}  "
      f"{', '.join(f'{x:.1f}' for x in v)}"
    )
  goals = {"tiny": "k=1 >= 0.95, auto >= 2", "cnn": "k=1 >= 0.97"}
  print(
    f"ratios to the hand loop: k=1 {result['ratio_k1']:.3f}, auto {result['ratio_auto']:.3f}  "
    f"(goals for {args.model}: {goals[args.model]})"
  )
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
