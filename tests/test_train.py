"""train_and_evaluate: reproducible bits, exact resume, and what a workdir holds."""

import json
import os

import pytest

from jaxtrain import train_and_evaluate
from jaxtrain.run import checkpoint
from jaxtrain.run.metric_writers import read_metrics


def _digest(state):
  return checkpoint.tree_digest(checkpoint.state_arrays(state))


def test_same_seed_same_bits_other_seed_different(small_config, tmp_path):
  a = train_and_evaluate(small_config, str(tmp_path / "a"))
  b = train_and_evaluate(small_config, str(tmp_path / "b"))
  small_config.seed = 1
  c = train_and_evaluate(small_config, str(tmp_path / "c"))
  assert _digest(a) == _digest(b)
  assert _digest(a) != _digest(c)
  assert checkpoint.tree_digest(a.params) != checkpoint.tree_digest(c.params)


@pytest.mark.parametrize(
  "batch_size, model",
  [
    (50, "mlp"),  # 25 steps an epoch: the stop at step 100 falls on an epoch boundary
    (48, "cnn"),  # 26 steps an epoch: the stop falls mid-epoch (batch norm state too)
  ],
)
def test_stop_after_checkpoint_then_resume_is_bit_exact(small_config, tmp_path, batch_size, model):
  small_config.update(batch_size=batch_size, num_train_steps=200, checkpoint_every_steps=50)
  if model == "cnn":
    small_config.model = dict(name="cnn", num_classes=10, dropout_rate=0.3)
  straight = train_and_evaluate(small_config, str(tmp_path / "straight"))
  stopped = train_and_evaluate(small_config, str(tmp_path / "resumed"), stop_at_step=100)
  assert int(stopped.step) == 100
  assert checkpoint.make_manager(str(tmp_path / "resumed")).latest_step() == 100
  resumed = train_and_evaluate(small_config, str(tmp_path / "resumed"))
  assert int(resumed.step) == 200
  assert _digest(resumed) == _digest(straight)
  final = lambda w: [e for e in read_metrics(str(tmp_path / w)) if e["split"] in ("eval", "test")][
    -2:
  ]
  strip = lambda events: [{k: v for k, v in e.items() if k != "time"} for e in events]
  assert strip(final("resumed")) == strip(final("straight"))


def test_workdir_holds_config_metrics_events_and_checkpoints(small_config, tmp_path):
  small_config.update(num_train_steps=120, keep_checkpoints=2)
  workdir = str(tmp_path / "run")
  train_and_evaluate(small_config, workdir)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["batch_size"] == 50 and saved["optimizer"]["name"] == "adamw"
  events = read_metrics(workdir)
  assert all({"step", "split"} <= set(e) for e in events)
  assert [e["step"] for e in events if e["split"] == "train"] == [20, 40, 60, 80, 100, 120]
  assert [e["step"] for e in events if e["split"] == "eval"] == [30, 60, 90, 120]
  test = [e for e in events if e["split"] == "test"]
  assert len(test) == 1 and test[0]["num_examples"] == 360 and test[0]["accuracy"] > 0.5
  (tb,) = os.listdir(os.path.join(workdir, "tensorboard"))
  scalars = _read_scalars(os.path.join(workdir, "tensorboard", tb))
  assert [step for step, _ in scalars["train/loss"]] == [20, 40, 60, 80, 100, 120]
  assert scalars["test/accuracy"] == [(120, pytest.approx(test[0]["accuracy"], rel=1e-6))]
  hparams = _read_hparams(os.path.join(workdir, "tensorboard", tb))
  assert hparams["optimizer.name"] == "adamw" and hparams["batch_size"] == 50
  assert hparams["model.features"] == "[64]"
  assert sorted(checkpoint.make_manager(workdir).all_steps()) == [90, 120]


def test_once_per_epoch_evaluates_and_saves_at_each_epochs_end(small_config, tmp_path):
  """-1: the cadence is the train split's steps per epoch (1,293 examples of 50: 25)."""
  small_config.update(
    num_train_steps=-1,
    num_epochs=3,
    eval_every_steps=-1,
    checkpoint_every_steps=-1,
    keep_checkpoints=5,
  )
  workdir = str(tmp_path / "run")
  train_and_evaluate(small_config, workdir)
  assert [e["step"] for e in read_metrics(workdir) if e["split"] == "eval"] == [25, 50, 75]
  assert sorted(checkpoint.make_manager(workdir).all_steps()) == [25, 50, 75]


def test_rerunning_a_finished_run_changes_nothing(small_config, tmp_path):
  workdir = str(tmp_path / "run")
  first = train_and_evaluate(small_config, workdir)
  events = read_metrics(workdir)
  again = train_and_evaluate(small_config, workdir)
  assert _digest(first) == _digest(again)
  assert read_metrics(workdir) == events


def _events(path):
  """The Event protos of a TensorBoard event file (TFRecord framing)."""
  import struct
  from tensorboardX.proto import event_pb2

  with open(path, "rb") as f:
    while header := f.read(12):
      (length,) = struct.unpack("<Q", header[:8])
      yield event_pb2.Event.FromString(f.read(length))
      f.read(4)


def _read_scalars(path):
  """{tag: [(step, value)]} from a TensorBoard event file."""
  scalars = {}
  for event in _events(path):
    for value in event.summary.value:
      if value.HasField("simple_value"):
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def _read_hparams(path):
  """The hparams of the HParams plugin's session-start summary in an event file."""
  from tensorboardX.proto import plugin_hparams_pb2

  for event in _events(path):
    for value in event.summary.value:
      if value.tag == "_hparams_/session_start_info":
        data = plugin_hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        return {
          k: (
            v.string_value or v.number_value
            if v.WhichOneof("kind") != "bool_value"
            else v.bool_value
          )
          for k, v in data.session_start_info.hparams.items()
        }
  return {}
