"""What the benchmark scripts share: loading a config file, and steps/s from a run's log."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxtrain.data import input_pipeline  # noqa: E402
from jaxtrain.data import datasets
from jaxtrain.run.metric_writers import read_metrics  # noqa: E402
from jaxtrain.run.loop import train_and_evaluate  # noqa: E402


def load_config(name: str, *args):
  """`configs/<name>.py`'s get_config(*args), as `jaxtrain train --config` loads it."""
  spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def timed_run(config, workdir: str, warmup: int) -> dict:
  """Trains `config`; steps/s and mean data_wait over the log intervals after step `warmup`.

  `warmup` must be a multiple of `config.log_every_steps`; the intervals up to
  it (compilation, first saves) are left out.
  """
  train_and_evaluate(config, workdir)
  intervals = [e for e in read_metrics(workdir) if e["split"] == "train" and e["step"] > warmup]
  seconds = [
    (e["step"] - p["step"]) / e["steps_per_sec"]
    for p, e in zip([{"step": warmup}] + intervals, intervals)
  ]
  return {
    "steps_per_sec": (config.num_train_steps - warmup) / sum(seconds),
    "data_wait": sum(e["data_wait"] * s for e, s in zip(intervals, seconds)) / sum(seconds),
    "final": intervals[-1],
  }


MNIST = ROOT.parent / "shared" / "data" / "mnist_t10k"


def mnist_config(*, quick: bool, warmup: int, steps: int, data_dir: str, evaluate: bool = False):
  """configs/mnist.py for `warmup + steps` steps, logged once after the warm-up, saved at the end.

  The data: the real MNIST files (train on the first 8,000, test on the last
  2,000), or with `quick` the embedded digits. `evaluate`: the test examples
  are evaluated after the last step.
  """
  c = load_config("mnist")
  c.num_train_steps, c.log_every_steps = warmup + steps, warmup
  c.checkpoint_every_steps = c.eval_every_steps = c.num_train_steps
  if quick:
    c.dataset.update(
      name="digits", path="", train_split="train", eval_split="test" if evaluate else ""
    )
  else:
    c.dataset.update(
      path=str(MNIST), train_split="test[:8000]", eval_split="test[8000:]" if evaluate else ""
    )
  c.dataset.data_dir = data_dir
  return c


def split_arrays(dataset_config, split: str) -> dict:
  """Every example of `split` as model inputs (images as float32 in [0, 1]), one array per
  feature."""
  source = datasets.get_source(datasets.get_builder(dataset_config), split)
  return input_pipeline.to_model_inputs(input_pipeline.InMemorySource(source).arrays)
