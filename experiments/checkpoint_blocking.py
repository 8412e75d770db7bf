"""Checkpointing: how long the training loop is blocked by asynchronous saves, and restore time.

Trains the language model (configs/lm_350m.py's shape by default: 350M
params, so a 4.2 GB state with AdamW's moments) through jaxtrain's loop,
twice side by side:
  A. saving every --every steps (Orbax, asynchronous: the loop waits only
     for the device-to-host copy and a finiteness check of the state),
  B. saving only after the last step.
The loop's blocked share is 1 - steps/s(A) / steps/s(B) over the same steps:
the log intervals after the first save (which compiles the state's
finiteness check), each holding one save. Then the newest checkpoint is
restored into a fresh state on the device, timed.

    python experiments/checkpoint_blocking.py [--model 350m] [--every 100] [--saves 3]
    python experiments/checkpoint_blocking.py --quick      # a tiny model (the test suite)
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
import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from bench import load_config, timed_run  # noqa: E402
from jaxtrain import tasks  # noqa: E402
from jaxtrain.run import checkpoint
from jaxtrain.run.inputs import build_model  # noqa: E402
from jaxtrain.optim import make_optimizer  # noqa: E402
from jaxtrain.run.loop import create_train_state  # noqa: E402

QUICK_MODEL = dict(num_layers=2, num_heads=4, embed_dim=64, vocab_size=256, max_length=32)


def config_for(args, save_every: int):
  c = load_config("lm_124m", "124m" if args.quick else args.model)
  if args.quick:
    c.model.update(QUICK_MODEL)
    c.batch_size = 8
  c.batch_size = args.batch_size or c.batch_size
  c.num_train_steps = args.every * (args.saves + 2)
  c.log_every_steps = args.every
  c.checkpoint_every_steps, c.eval_every_steps = save_every, 10 * c.num_train_steps
  c.keep_checkpoints = 2
  c.dataset.update(eval_split="", data_dir=args.data_dir)
  c.dataset.builder_kwargs.update(
    vocab_size=c.model.vocab_size,
    seq_len=c.model.max_length,
    num_examples=max(4 * c.batch_size, 64),
  )
  return c


def restore_seconds(config, workdir: str) -> tuple[float, int]:
  """Seconds to restore the newest checkpoint's state into a fresh state on the device; its
  bytes."""
  batch = {"tokens": jnp.zeros((1, config.model.max_length + 1), jnp.int32)}
  model = build_model(config, {"kind": "image"}, batch)
  tx, _ = make_optimizer(config.optimizer, config.num_train_steps)
  state = create_train_state(
    config, model, tx, batch, model.apply_fn(), tasks.language_modeling_loss
  )
  manager = checkpoint.make_manager(workdir, read_only=True)
  step = manager.latest_step()
  start = time.perf_counter()
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(checkpoint.state_target(state)))
  )
  jax.block_until_ready(restored.state)
  seconds = time.perf_counter() - start
  manager.close()
  path = Path(checkpoint.checkpoint_dir(workdir)) / str(step)
  return seconds, sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=("124m", "350m"), default="350m")
  parser.add_argument("--every", type=int, default=100, help="steps between saves")
  parser.add_argument(
    "--saves", type=int, default=3, help="timed saves (after two warm-up intervals)"
  )
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--quick", action="store_true", help="a tiny model, a few steps")
  parser.add_argument(
    "--data_dir", default=os.path.join(tempfile.gettempdir(), "jaxtrain-bench-tfds")
  )
  parser.add_argument("--out", default="checkpoint_blocking.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.every, args.saves = args.every if args.every != 100 else 4, 2
  with tempfile.TemporaryDirectory() as tmp:
    saving = config_for(args, args.every)
    warmup = 2 * args.every
    a = timed_run(saving, os.path.join(tmp, "a"), warmup)["steps_per_sec"]
    b = timed_run(config_for(args, saving.num_train_steps), os.path.join(tmp, "b"), warmup)[
      "steps_per_sec"
    ]
    restore, size = restore_seconds(saving, os.path.join(tmp, "a"))
  blocked = max(0.0, 1.0 - a / b)
  result = {
    "benchmark": "checkpoint_blocking",
    "device": str(jax.devices()[0].device_kind),
    "model": "quick" if args.quick else args.model,
    "checkpoint_bytes": size,
    "save_every_steps": args.every,
    "timed_saves": args.saves,
    "steps_per_sec_saving": a,
    "steps_per_sec_not_saving": b,
    "blocked_share": blocked,
    "seconds_blocked_per_save": (1 / a - 1 / b) * args.every,
    "restore_seconds": restore,
    "date": time.strftime("%Y-%m-%d"),
  }
  print(
    f"device {result['device']}, model {result['model']}, checkpoint {size / 1e9:.3g} GB, "
    f"a save every {args.every} steps"
  )
  print(f"{'loop':<16} {'steps/s':>9}")
  print(f"{'saving':<16} {a:>9.3f}\n{'not saving':<16} {b:>9.3f}")
  print(
    f"blocked share of the save interval: {blocked:.1%} "
    f"({result['seconds_blocked_per_save']:.3g} s "
    f"per save; goal < 5%); restore {restore:.3g} s"
  )
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
