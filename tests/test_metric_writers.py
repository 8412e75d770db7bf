"""Live progress on a terminal, plain lines elsewhere; config flattening for HParams."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np

from jaxtrain.run.metric_writers import ProgressBar, flatten_config

from conftest import ROOT

ARGS = [
  "train",
  "--config",
  "configs/digits.py",
  "--config.num_train_steps=120",
  "--config.log_every_steps=40",
  "--config.dataset.test_split=",
  '--config.model={"name": "mlp", "num_classes": 10, "features": [32]}',
]


def _run_on_a_terminal(args, data_dir) -> str:
  """Output of `jaxtrain ...` run with a pseudo-terminal as stdout."""
  primary, secondary = pty.openpty()
  fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # rows, columns
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
    [sys.executable, "-m", "jaxtrain.tools.cli", *args],
    cwd=ROOT,
    env=env,
    stdout=secondary,
    stderr=subprocess.DEVNULL,
  )
  os.close(secondary)
  chunks = []
  while True:
    try:
      data = os.read(primary, 4096)
    except OSError:  # the child closed the terminal
      break
    if not data:
      break
    chunks.append(data)
  assert proc.wait(timeout=300) == 0
  os.close(primary)
  return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_live_bar_and_quiet_gets_plain_lines(tmp_path, data_dir):
  live = _run_on_a_terminal([*ARGS, "--workdir", str(tmp_path / "live")], data_dir)
  assert "epoch 1" in live and "step/s" in live and "/120" in live  # step, epoch, rate
  assert "loss=" in live and "ex/s=" in live  # last logged metrics
  assert "step 120 train " in live  # log lines still there
  assert (
    f"curves: {tmp_path / 'live'}" in live or f"tensorboard --logdir {tmp_path / 'live'}" in live
  )
  quiet = _run_on_a_terminal([*ARGS, "--workdir", str(tmp_path / "quiet"), "--quiet"], data_dir)
  assert "step/s" not in quiet and not re.search(r"\r(?!\n)", quiet)  # no redrawn line
  assert "step 40 train " in quiet and "step 120 train " in quiet


def test_the_bar_is_off_without_a_terminal(capsys):
  bar = ProgressBar(100, 0, 10, enabled=True)  # pytest's stdout is not a terminal
  bar.update(5)
  bar.set_metrics(3, "train", {"loss": 0.5})
  bar.close()
  assert capsys.readouterr().out == ""


def test_flatten_config_gives_dotted_scalars():
  flat = flatten_config(
    {
      "seed": 0,
      "optimizer": {"name": "adamw", "learning_rate": 0.1},
      "model": {"features": [64, 32], "bias": True},
    }
  )
  assert flat == {
    "seed": 0,
    "optimizer.name": "adamw",
    "optimizer.learning_rate": 0.1,
    "model.features": "[64, 32]",
    "model.bias": True,
  }


def test_event_files_kept_up_to_a_step_drop_later_summaries_and_a_torn_tail(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from jaxtrain.run.metric_writers import _EventFile, keep_tensorboard_up_to

  events = _EventFile(str(tmp_path))
  events.add_text("config", "seed 0", 0)
  for step in range(1, 6):
    events.add_scalar("train/loss", 1.0 / step, step)
  events.close()
  [path] = [p for p in tmp_path.iterdir() if p.name.startswith("events")]
  path.write_bytes(path.read_bytes() + b"\x20\x00\x00\x00\x00\x00\x00\x00torn")  # killed mid-write
  assert keep_tensorboard_up_to(str(tmp_path), 3) == 2
  assert keep_tensorboard_up_to(str(tmp_path), 3) == 0  # nothing more to drop: left as it is
  reader = EventAccumulator(str(tmp_path), purge_orphaned_data=False)
  reader.Reload()
  assert [(e.step, e.value) for e in reader.Scalars("train/loss")] == [
    (1, 1.0),
    (2, 0.5),
    (3, float(np.float32(1 / 3))),
  ]
  assert reader.Tags()["tensors"] == ["config/text_summary"]
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten in place, no temporary
