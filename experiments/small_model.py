"""A small model on the accelerator: the MNIST CNN at batch 128, jaxtrain vs. Flax's NNX MNIST
example.

A step of this model is tens of microseconds of GPU work, so speed is decided
by dispatch: jaxtrain donates buffers, never syncs with the host between log
steps, prefetches batches to the device and can run k steps per dispatch
(`steps_per_dispatch`, one `lax.scan`). Measured side by side in one process:
  - Flax's NNX MNIST example as written in its tutorial: its CNN, `nnx.jit`
    train step updating the model, optimizer and `nnx.MultiMetric` in place,
    NumPy batches from a per-epoch permutation,
  - jaxtrain's loop on configs/mnist.py (its CNN, which adds batch norm),
    reading the TFDS split, at steps_per_dispatch 1 and k.
Data: the real MNIST files in ../shared/data/mnist_t10k (train on the first
8,000); --quick uses the embedded digits.

    python experiments/small_model.py [--steps 2000] [--dispatch 16]
    python experiments/small_model.py --quick
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from bench import MNIST, mnist_config, split_arrays, timed_run  # noqa: E402


def jaxtrain_config(args, k: int):
  c = mnist_config(quick=args.quick, warmup=args.warmup, steps=args.steps, data_dir=args.data_dir)
  c.steps_per_dispatch = k
  return c


class NnxCNN(nnx.Module):
  """The CNN of Flax's NNX MNIST tutorial."""

  def __init__(self, *, rngs: nnx.Rngs, in_features: int = 1, flat: int = 3136):
    self.conv1 = nnx.Conv(in_features, 32, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(flat, 256, rngs=rngs)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):
    x = self.pool(nnx.relu(self.conv1(x)))
    x = self.pool(nnx.relu(self.conv2(x)))
    return self.linear2(nnx.relu(self.linear1(x.reshape(x.shape[0], -1))))


def nnx_example_steps_per_sec(images, labels, *, batch_size, warmup, steps, seed=0) -> float:
  flat = 64 * (images.shape[1] // 4) * (images.shape[2] // 4)
  model = NnxCNN(rngs=nnx.Rngs(seed), in_features=images.shape[-1], flat=flat)
  tx = optax.sgd(0.1, momentum=0.9)
  new_api = "wrt" in inspect.signature(nnx.Optimizer.__init__).parameters  # flax >= 0.11
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param) if new_api else nnx.Optimizer(model, tx)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))

  def loss_fn(model, batch):
    logits = model(batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

  @nnx.jit
  def train_step(model, optimizer, metrics, batch):
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    optimizer.update(model, grads) if new_api else optimizer.update(grads)

  rng, per_epoch = np.random.default_rng(seed), len(images) // batch_size
  order = None
  for i in range(warmup + steps):
    if i == warmup:
      jax.block_until_ready(nnx.state(model))
      start = time.perf_counter()
    if i % per_epoch == 0:
      order = rng.permutation(len(images))
    idx = order[(i % per_epoch) * batch_size : (i % per_epoch + 1) * batch_size]
    train_step(model, optimizer, metrics, {"image": images[idx], "label": labels[idx]})
  jax.block_until_ready(nnx.state(model))
  return steps / (time.perf_counter() - start)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--steps", type=int, default=2000, help="timed steps (a multiple of --dispatch)"
  )
  parser.add_argument("--warmup", type=int, default=96)
  parser.add_argument("--dispatch", type=int, default=16, help="jaxtrain's steps_per_dispatch k")
  parser.add_argument("--quick", action="store_true", help="digits, a few steps")
  parser.add_argument(
    "--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxtrain-bench-tfds")
  )
  parser.add_argument("--out", default="small_model.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.steps, args.warmup, args.dispatch = 16, 8, 4
  elif not MNIST.exists():
    parser.error(f"the MNIST files are not at {MNIST} (see shared/data/SOURCES.md); try --quick")
  if args.steps % args.dispatch or args.warmup % args.dispatch:
    parser.error(
      f"--steps {args.steps} and --warmup {args.warmup} must be multiples of "
      f"--dispatch {args.dispatch}"
    )
  configs = {
    "jaxtrain": jaxtrain_config(args, 1),
    f"jaxtrain k={args.dispatch}": jaxtrain_config(args, args.dispatch),
  }
  arrays = split_arrays(configs["jaxtrain"].dataset, configs["jaxtrain"].dataset.train_split)
  rates = {
    "flax nnx example": nnx_example_steps_per_sec(
      arrays["image"],
      arrays["label"].astype(np.int32),
      batch_size=128,
      warmup=args.warmup,
      steps=args.steps,
    )
  }
  accuracy = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, config in configs.items():
      run = timed_run(config, os.path.join(tmp, name.replace(" ", "_")), args.warmup)
      rates[name], accuracy[name] = run["steps_per_sec"], run["final"]["accuracy"]
  base = rates["flax nnx example"]
  result = {
    "benchmark": "small_model",
    "device": str(jax.devices()[0].device_kind),
    "data": "digits" if args.quick else "mnist_t10k[:8000]",
    "batch_size": 128,
    "timed_steps": args.steps,
    "steps_per_sec": rates,
    "ratio_to_flax_example": {k: v / base for k, v in rates.items()},
    "final_train_accuracy": accuracy,
    "date": time.strftime("%Y-%m-%d"),
  }
  print(f"device {result['device']}, {result['data']}, batch 128, {args.steps} timed steps")
  print(f"{'loop':<20} {'steps/s':>9} {'vs flax':>8}")
  for name, v in rates.items():
    print(f"{name:<20} {v:>9.1f} {v / base:>7.2f}x")
  print(
    f"ratio jaxtrain k={args.dispatch} / flax nnx example: "
    f"{rates[f'jaxtrain k={args.dispatch}'] / base:.2f}"
    "  (goal >= 3 on a GPU)"
  )
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
