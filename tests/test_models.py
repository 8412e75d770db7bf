"""The built-in models: shapes, parameter layout, and how a config names them."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from jaxtrain import registry
from jaxtrain.errors import UserError
from jaxtrain.run.inputs import create_model


def test_every_short_name_is_an_import_path_of_a_linen_module():
  for name, path in registry.MODELS.items():
    loaded = registry.resolve(name, registry.MODELS, "config.model.name")
    assert loaded.target == path and issubclass(loaded.obj, nn.Module)
    assert registry.resolve(path, registry.MODELS, "config.model.name").obj is loaded.obj
    assert loaded.file is None  # jaxtrain's own code is versioned by the manifest, not hashed


def test_cnn_is_flax_mnist_layout():
  model = create_model(ml_collections.ConfigDict(dict(name="cnn", num_classes=10)))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
  p = variables["params"]
  assert p["Conv_0"]["kernel"].shape == (3, 3, 1, 32)
  assert p["Conv_1"]["kernel"].shape == (3, 3, 32, 64)
  assert p["Dense_0"]["kernel"].shape == (7 * 7 * 64, 256)
  assert p["Dense_1"]["kernel"].shape == (256, 10)
  assert set(variables["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}


@pytest.mark.parametrize(
  "fields, shape",
  [
    (dict(name="mlp", num_classes=3, features=[16, 8]), (5, 8, 8, 1)),
    (dict(name="resnet", num_classes=7, stage_sizes=[1, 1], width=4), (5, 8, 8, 3)),
  ],
)
def test_models_map_images_to_logits(fields, shape):
  model = create_model(ml_collections.ConfigDict(fields))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros(shape))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.ones(shape))
  assert logits.shape == (5, fields["num_classes"])


def test_unknown_model_name():
  with pytest.raises(
    UserError, match=r"config.model.name='vgg' is not one of .*nor an import path"
  ):
    create_model(ml_collections.ConfigDict(dict(name="vgg", num_classes=2)))
  with pytest.raises(
    UserError,
    match=r"config.model: jaxtrain.models.image:CNN has no argument\(s\) "
    r"widht \(it takes: num_classes, dropout_rate, dtype, axis_name\)",
  ):
    create_model(ml_collections.ConfigDict(dict(name="cnn", num_classes=2, widht=3)))


def test_bfloat16_compute_keeps_float32_params_and_loss(small_config, tmp_path):
  """compute_dtype=bfloat16: bf16 activations, float32 params, a float32 loss, and it learns."""
  import jax
  import jax.numpy as jnp
  from jaxtrain.run import checkpoint
  from jaxtrain.run import inputs as run_inputs
  from jaxtrain.run import loop as train
  from jaxtrain.run.metric_writers import read_metrics

  c = small_config
  c.compute_dtype = "bfloat16"
  c.model = dict(name="cnn", num_classes=10)
  model = run_inputs.load(c, fit=True).model(c, {"image": jnp.zeros((1, 8, 8, 1))}).make()
  assert model.dtype == jnp.bfloat16
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
  assert model.apply(variables, jnp.zeros((2, 8, 8, 1))).dtype == jnp.bfloat16
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  arrays = checkpoint.load_arrays(workdir)[1]
  assert {str(x.dtype) for x in jax.tree.leaves(arrays["params"])} == {"float32"}
  evals = [e for e in read_metrics(workdir) if e["split"] == "eval"]
  assert evals[-1]["accuracy"] > 0.5


@functools.cache
def _remat_digests(kind: str, policy: str):
  """(params digest, gradient digest) of a small ResNet or Transformer under a remat policy."""
  import numpy as np
  from jaxtrain.run.checkpoint import tree_digest
  from jaxtrain.models.image import ResNet
  from jaxtrain.models.tables import TransformerEncoder

  if kind == "resnet":
    model = ResNet(num_classes=3, stage_sizes=(1, 1), width=8, remat=policy)
    inputs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 1)), jnp.float32)
  else:
    model = TransformerEncoder(
      num_outputs=2,
      vocab_size=50,
      max_length=12,
      width=16,
      depth=2,
      num_heads=2,
      mlp_dim=32,
      remat=policy,
    )
    inputs = {"tokens": jnp.asarray(np.random.default_rng(1).integers(0, 50, (4, 12)), jnp.int32)}
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), inputs)

  def loss(params):
    out, _ = model.apply(
      {**variables, "params": params},
      inputs,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.PRNGKey(2)},
    )
    return (out.astype(jnp.float32) ** 2).sum()

  return tree_digest(variables["params"]), tree_digest(jax.jit(jax.grad(loss))(variables["params"]))


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_values(policy):
  """A rematerialised ResNet / Transformer has the same params and the same gradients, bit for
  bit."""
  for kind in ("resnet", "encoder"):
    assert _remat_digests(kind, policy) == _remat_digests(kind, "")


def test_unknown_remat_policy_is_a_user_error():
  import jax
  import jax.numpy as jnp
  from jaxtrain.models.image import ResNet

  with pytest.raises(UserError, match="config.model.remat='some' is not one of"):
    ResNet(num_classes=2, remat="some").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


def test_matrix_factorization_regularises_each_rating_by_the_rows_it_uses():
  """Training adds l2 x the squared norms of the rating's user and item rows (vectors and
  biases) to that rating's loss, not to its error; evaluation returns the prediction alone."""
  import numpy as np
  from jaxtrain import tasks
  from jaxtrain.models.tables import MatrixFactorization

  model = MatrixFactorization(categorical_sizes=(5, 4), dim=3, l2=0.25)
  batch = {"categorical": jnp.array([[1, 2], [4, 2], [1, 3]]), "label": jnp.array([0.5, -1.0, 2.0])}
  variables = model.init(jax.random.key(0), batch)
  p = jax.tree.map(lambda x: x + 0.1, variables["params"])  # biases off zero too
  out = model.apply({"params": p}, batch, train=True)
  plain = model.apply({"params": p}, batch)
  np.testing.assert_array_equal(out["prediction"], plain)
  rows = lambda name, ids: np.asarray(p[name]["embedding"])[np.asarray(ids)]
  users, items = batch["categorical"][:, 0], batch["categorical"][:, 1]
  norms = (
    (rows("user", users) ** 2).sum(1)
    + (rows("item", items) ** 2).sum(1)
    + rows("user_bias", users)[:, 0] ** 2
    + rows("item_bias", items)[:, 0] ** 2
  )
  np.testing.assert_allclose(out["penalty"], 0.25 * norms, rtol=1e-6)
  trained = tasks.regression_loss(out, batch, mean=0.0, std=1.0)
  evaluated = tasks.regression_loss(plain, batch, mean=0.0, std=1.0)
  np.testing.assert_allclose(trained["loss"], evaluated["loss"] + 0.25 * norms, rtol=1e-6)
  np.testing.assert_array_equal(trained["squared_error"], evaluated["squared_error"])
  unregularised = MatrixFactorization(categorical_sizes=(5, 4), dim=3, l2=0.0)
  np.testing.assert_array_equal(unregularised.apply({"params": p}, batch, train=True), plain)
