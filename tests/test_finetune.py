"""Fine-tuning: a digits run into a new head with a frozen body; params matched by path and
shape."""

import json

import jax
import numpy as np
import pytest

from jaxtrain import make_optimizer, optim
from jaxtrain.run import checkpoint
from jaxtrain.run import finetune
from jaxtrain.run import loop as train
from jaxtrain.errors import UserError
from jaxtrain.run.metric_writers import read_metrics


def _params(workdir):
  return optim.flat(checkpoint.load_arrays(str(workdir))[1]["params"])


def test_new_head_on_a_frozen_body(tmp_path, small_config):
  """The frozen conv body stays bit-identical; the new 12-way head trains from scratch."""
  base = small_config
  base.model = dict(name="cnn", num_classes=10, dropout_rate=0.1)
  base.num_train_steps = 60
  train.train_and_evaluate(base, str(tmp_path / "pretrained"))
  pretrained = _params(tmp_path / "pretrained")

  tuned = base.copy_and_resolve_references()
  tuned.model.num_classes = 12  # a new head: Dense_1 is (256, 12), not (256, 10)
  tuned.init_from.workdir = str(tmp_path / "pretrained")
  tuned.optimizer.freeze = "^(Conv_|BatchNorm_)"
  tuned.optimizer.lr_multipliers = (("^Dense_0/", 0.0),)  # a group whose rate is 0: unchanged too
  tuned.num_train_steps = 40
  train.train_and_evaluate(tuned, str(tmp_path / "tuned"))
  after = _params(tmp_path / "tuned")

  report = json.loads((tmp_path / "tuned" / "init_from.json").read_text())
  assert report["initialised"] == [
    "Dense_1/bias (12,) (was (10,) float32)",
    "Dense_1/kernel (256, 12) (was (256, 10) float32)",
  ]
  assert sorted(report["restored"]) == sorted(k for k in pretrained if not k.startswith("Dense_1"))
  for name, value in after.items():
    if name.startswith(("Conv_", "BatchNorm_", "Dense_0")):
      np.testing.assert_array_equal(value, pretrained[name], err_msg=name)  # bit for bit
  assert after["Dense_1/kernel"].shape == (256, 12)
  # The head trained: it moved away from where the fine-tuning run initialised it.
  from jaxtrain.run.inputs import create_model

  init_rng = jax.random.split(jax.random.PRNGKey(tuned.seed))[0]
  initial = create_model(tuned.model).init(
    {"params": init_rng, "dropout": init_rng}, np.zeros((1, 8, 8, 1), np.float32), train=False
  )
  moved = np.abs(after["Dense_1/kernel"] - np.asarray(initial["params"]["Dense_1"]["kernel"]))
  assert moved.mean() > 1e-3
  test = [e for e in read_metrics(tmp_path / "tuned") if e["split"] == "test"]
  assert test and test[0]["accuracy"] > 0.8  # the pretrained body carries the features


def test_merge_reports_shape_mismatches_and_unused():
  target = {"body": {"w": np.zeros((3, 3))}, "head": {"w": np.zeros((3, 4))}}
  source = {
    "body": {"w": np.ones((3, 3))},
    "head": {"w": np.ones((3, 2))},
    "old": {"w": np.ones(2)},
  }
  merged, report = finetune.merge(target, source)
  np.testing.assert_array_equal(merged["body"]["w"], np.ones((3, 3)))
  np.testing.assert_array_equal(merged["head"]["w"], np.zeros((3, 4)))
  assert report == {
    "restored": ["body/w"],
    "initialised": ["head/w (3, 4) (was (3, 2) float64)"],
    "unused": ["head/w", "old/w"],
  }


def test_lr_multipliers_scale_updates_per_group():
  from jaxtrain.config import base_config

  opt = base_config().optimizer
  opt.update(
    name="sgd", momentum=0.0, learning_rate=0.1, lr_multipliers=(("^a", 10.0),), freeze="^c"
  )
  tx, _ = make_optimizer(opt, 10)
  params = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32), "c": np.ones(2, np.float32)}
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["a"], -1.0)
  np.testing.assert_allclose(updates["b"], -0.1)
  np.testing.assert_array_equal(updates["c"], 0.0)


def test_patterns_are_checked(small_config):
  params = {"Dense_0": {"kernel": np.zeros((2, 2))}}
  with pytest.raises(UserError, match=r"optimizer.lr_multipliers='\[' is not a regex"):
    optim.check_patterns(params, "", (("[", 2.0),))


def test_init_from_any_orbax_checkpoint_of_params(tmp_path, small_config):
  """A params tree someone saved with Orbax (not a jaxtrain run) initialises the model."""
  import orbax.checkpoint as ocp
  from jaxtrain.run.inputs import create_model

  model = create_model(small_config.model)
  theirs = model.init(jax.random.PRNGKey(42), np.zeros((1, 8, 8, 1), np.float32))["params"]
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "their_params", theirs)
  small_config.init_from.checkpoint = str(tmp_path / "their_params")
  small_config.optimizer.freeze = "^Dense_0/"
  train.train_and_evaluate(small_config, str(tmp_path / "run"))
  report = json.loads((tmp_path / "run" / "init_from.json").read_text())
  assert sorted(report["restored"]) == sorted(optim.flat(theirs)) and report["initialised"] == []
  after = _params(tmp_path / "run")
  for name, value in optim.flat(theirs).items():
    if name.startswith("Dense_0/"):
      np.testing.assert_array_equal(after[name], np.asarray(value))
    else:
      assert not np.array_equal(after[name], np.asarray(value))  # trained from their values
