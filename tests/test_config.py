"""Value checks run before anything compiles: one message naming the field."""

import pytest

from jaxtrain.config import base_config, validate
from jaxtrain.errors import UserError


@pytest.mark.parametrize(
  "path, value, message",
  [
    ("batch_size", 0, "config.batch_size=0 must be > 0"),
    ("num_train_steps", 0, "config.num_train_steps=0 must be > 0, or -1 to use num_epochs"),
    ("eval_every_steps", -5, "config.eval_every_steps=-5 must be > 0, or -1 for once per epoch"),
    ("log_every_steps", -1, "config.log_every_steps=-1 must be > 0"),
    (
      "optimizer.name",
      "rmsprop",
      "config.optimizer.name='rmsprop' must be one of ('sgd', 'adam', 'adamw')",
    ),
    ("optimizer.momentum", 1.0, "config.optimizer.momentum=1.0 must be in [0, 1)"),
    ("optimizer.schedule", "cosine", "config.optimizer.schedule='cosine' must be one of"),
    (
      "optimizer.learning_rate",
      -0.1,
      "config.optimizer.learning_rate=-0.1 must be finite and >= 0",
    ),
    ("model.name", "", "config.model.name='' must name a model"),
    ("task", "", "config.task='' must name a task"),
    ("early_stopping.patience", 3, "config.early_stopping.metric='' must name an eval metric"),
    ("early_stopping.mode", "up", "config.early_stopping.mode='up' must be one of ('min', 'max')"),
    ("dataset.train_split", "", "config.dataset.train_split='' must name a split"),
  ],
)
def test_out_of_range_values_are_named(path, value, message):
  config = base_config()
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(UserError) as info:
    validate(config)
  assert str(info.value).startswith(message)


def test_defaults_and_shipped_configs_are_valid():
  from conftest import ROOT, load_config

  validate(base_config())
  for path in sorted(p for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__"):
    validate(load_config(path.stem))


def test_epochs_needed_when_steps_unset():
  config = base_config()
  config.num_epochs = 0
  with pytest.raises(UserError, match="config.num_epochs=0 must be > 0 when num_train_steps is -1"):
    validate(config)
