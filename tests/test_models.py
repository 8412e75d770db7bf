"""The built-in models: shapes, parameter layout, and the config registry."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from jaxtrain import config as config_lib
from jaxtrain.models import MODELS, create_model


def test_registry_matches_the_names_config_validation_accepts():
  assert tuple(sorted(MODELS)) == tuple(sorted(config_lib.MODELS))


def test_cnn_is_flax_mnist_layout():
  model = create_model(ml_collections.ConfigDict(dict(name="cnn", num_classes=10)))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
  p = variables["params"]
  assert p["Conv_0"]["kernel"].shape == (3, 3, 1, 32)
  assert p["Conv_1"]["kernel"].shape == (3, 3, 32, 64)
  assert p["Dense_0"]["kernel"].shape == (7 * 7 * 64, 256)
  assert p["Dense_1"]["kernel"].shape == (256, 10)
  assert set(variables["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}


@pytest.mark.parametrize("fields, shape", [
    (dict(name="mlp", num_classes=3, features=[16, 8]), (5, 8, 8, 1)),
    (dict(name="resnet", num_classes=7, stage_sizes=[1, 1], width=4), (5, 8, 8, 3)),
])
def test_models_map_images_to_logits(fields, shape):
  model = create_model(ml_collections.ConfigDict(fields))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(shape))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.ones(shape))
  assert logits.shape == (5, fields["num_classes"])


def test_unknown_model_name():
  with pytest.raises(ValueError, match=r"config.model.name='vit' is not one of"):
    create_model(ml_collections.ConfigDict(dict(name="vit", num_classes=2)))
