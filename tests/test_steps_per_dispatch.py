"""steps_per_dispatch=k: k steps in one scanned program give the bits of k single steps."""

import pytest

from jaxtrain.run import checkpoint
from jaxtrain.run import loop as train
from jaxtrain.errors import UserError
from jaxtrain.run.metric_writers import read_metrics


def _digest(workdir):
  return checkpoint.tree_digest(checkpoint.load_arrays(str(workdir))[1])


def test_scanned_steps_match_single_steps_and_resume(tmp_path, small_config):
  train.train_and_evaluate(small_config, str(tmp_path / "one"))
  scanned = small_config.copy_and_resolve_references()
  scanned.steps_per_dispatch = 5
  train.train_and_evaluate(scanned, str(tmp_path / "five"), stop_at_step=30)
  train.train_and_evaluate(scanned, str(tmp_path / "five"))
  assert _digest(tmp_path / "five") == _digest(tmp_path / "one")
  evals = lambda w: [
    (e["step"], e["loss"], e["accuracy"]) for e in read_metrics(w) if e["split"] == "eval"
  ]
  assert evals(tmp_path / "five") == evals(tmp_path / "one")
  last_train = lambda w: [e["loss"] for e in read_metrics(w) if e["split"] == "train"][-1]
  assert last_train(tmp_path / "five") == last_train(tmp_path / "one")


def test_cadences_must_be_multiples(tmp_path, small_config):
  small_config.steps_per_dispatch = 7
  with pytest.raises(
    UserError, match="num_train_steps=60 must be a multiple of steps_per_dispatch=7"
  ):
    train.train_and_evaluate(small_config, str(tmp_path / "w"))
