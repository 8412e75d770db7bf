"""jaxtrain against PyTorch Lightning: the same CNN, data, optimizer and steps; steps/s at equal
accuracy.

The model is configs/mnist.py's CNN (conv32-BN-pool-conv64-BN-pool-dense256-
dropout-dense10, no conv bias), written once more in PyTorch; both train with
SGD (lr 0.1, momentum 0.9) at batch 128 on the same examples (the real MNIST
files: first 8,000 to train, last 2,000 to test; --quick: the digits), each
in its own idiom: jaxtrain's loop reading the TFDS split, Lightning's Trainer
over a DataLoader of tensors in memory. Steps/s counts the steps after a
warm-up; accuracy is each side's on the test examples after the last step.
Lightning is the optional `bench` extra: `pip install -e '.[bench]'`.

    python experiments/lightning_compare.py [--steps 1000]
    python experiments/lightning_compare.py --quick
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
import numpy as np  # noqa: E402

from bench import MNIST, mnist_config, split_arrays, timed_run  # noqa: E402
from jaxtrain.run.metric_writers import read_metrics  # noqa: E402


def images_and_labels(config, split: str):
  arrays = split_arrays(config.dataset, split)
  return arrays["image"], arrays["label"].astype(np.int64)


def lightning_run(config, warmup: int, steps: int) -> dict:
  import lightning as L
  import torch
  from torch import nn

  torch.manual_seed(config.seed)
  images, labels = images_and_labels(config, config.dataset.train_split)
  test_images, test_labels = images_and_labels(config, config.dataset.eval_split)
  h, w = images.shape[1:3]

  class CNN(L.LightningModule):
    def __init__(self):
      super().__init__()
      self.net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32, momentum=0.1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64, momentum=0.1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(256, 10),
      )

    def forward(self, x):
      return self.net(x)

    def training_step(self, batch, _):
      x, y = batch
      return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
      return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

  class StepTimer(L.Callback):
    def on_train_batch_end(self, trainer, *_):
      if trainer.global_step == warmup:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, *_):
      self.seconds = time.perf_counter() - self.start

  to_nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(to_nchw(images), torch.from_numpy(labels)),
    batch_size=config.batch_size,
    shuffle=True,
    drop_last=True,
  )
  model, timer = CNN(), StepTimer()
  accelerator = "gpu" if torch.cuda.is_available() else "cpu"
  trainer = L.Trainer(
    max_steps=warmup + steps,
    accelerator=accelerator,
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    callbacks=[timer],
  )
  trainer.fit(model, loader)
  model.eval()
  with torch.no_grad():
    logits = model(to_nchw(test_images).to(model.device)).cpu().numpy()
  return {
    "steps_per_sec": steps / timer.seconds,
    "accuracy": float((logits.argmax(-1) == test_labels).mean()),
    "version": L.__version__,
    "torch": torch.__version__,
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000, help="timed steps")
  parser.add_argument("--warmup", type=int, default=50)
  parser.add_argument("--quick", action="store_true", help="digits, a few steps")
  parser.add_argument(
    "--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxtrain-bench-tfds")
  )
  parser.add_argument("--out", default="lightning_compare.json")
  args = parser.parse_args(argv)
  try:
    import lightning  # noqa: F401
  except ImportError:
    parser.exit(
      2,
      "lightning_compare.py: PyTorch Lightning is not installed; "
      "install the optional extra: pip install -e '.[bench]'\n",
    )
  if args.quick:
    args.steps, args.warmup = 10, 5
  elif not MNIST.exists():
    parser.error(f"the MNIST files are not at {MNIST} (see shared/data/SOURCES.md); try --quick")
  config = mnist_config(
    quick=args.quick, warmup=args.warmup, steps=args.steps, data_dir=args.data_dir, evaluate=True
  )
  with tempfile.TemporaryDirectory() as tmp:
    ours = timed_run(config, tmp, args.warmup)
    ours["accuracy"] = [e for e in read_metrics(tmp) if e["split"] == "eval"][-1]["accuracy"]
  theirs = lightning_run(config, args.warmup, args.steps)
  result = {
    "benchmark": "lightning_compare",
    "device": str(jax.devices()[0].device_kind),
    "data": "digits" if args.quick else "mnist_t10k",
    "batch_size": config.batch_size,
    "timed_steps": args.steps,
    "lightning": theirs["version"],
    "torch": theirs["torch"],
    "jaxtrain_steps_per_sec": ours["steps_per_sec"],
    "lightning_steps_per_sec": theirs["steps_per_sec"],
    "jaxtrain_test_accuracy": ours["accuracy"],
    "lightning_test_accuracy": theirs["accuracy"],
    "ratio": ours["steps_per_sec"] / theirs["steps_per_sec"],
    "date": time.strftime("%Y-%m-%d"),
  }
  print(
    f"device {result['device']}, {result['data']}, batch {config.batch_size}, "
    f"{args.steps} timed steps"
  )
  print(f"{'loop':<22} {'steps/s':>9} {'test accuracy':>14}")
  print(f"{'jaxtrain':<22} {ours['steps_per_sec']:>9.1f} {ours['accuracy']:>14.4f}")
  print(
    f"{'lightning ' + theirs['version']:<22} {theirs['steps_per_sec']:>9.1f} "
    f"{theirs['accuracy']:>14.4f}"
  )
  print(f"ratio jaxtrain / lightning: {result['ratio']:.2f}")
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
