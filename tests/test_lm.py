"""The decoder-only language model (jaxtrain/models/lm.py), its task, and the synthetic token
dataset."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from jaxtrain import tasks
from jaxtrain.data import datasets
from jaxtrain.errors import UserError
from jaxtrain.models.lm import TransformerLM, train_flops_per_token
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.run.loop import train_and_evaluate


def tiny_lm_config(data_dir, vocab=128, length=32):
  c = load_config("lm_124m")
  c.model.update(num_layers=2, num_heads=4, embed_dim=64, vocab_size=vocab, max_length=length)
  c.dataset.builder_kwargs.update(vocab_size=vocab, seq_len=length, num_examples=512)
  c.dataset.data_dir = data_dir
  c.update(
    batch_size=16,
    num_train_steps=120,
    log_every_steps=40,
    eval_every_steps=120,
    checkpoint_every_steps=120,
  )
  c.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  return c


def test_loss_falls_to_near_the_chains_entropy(tmp_path, data_dir):
  """From ln(vocab) at the start to within 0.6 nats of the best possible loss; accuracy near
  0.75."""
  c = tiny_lm_config(data_dir)
  train_and_evaluate(c, str(tmp_path / "run"))
  events = read_metrics(str(tmp_path / "run"))
  first = next(e for e in events if e["split"] == "train")
  final = [e for e in events if e["split"] == "eval"][-1]
  floor = 0.25 * math.log(128) + 0.5623  # the Markov chain's entropy per token
  assert first["loss"] > floor + 1.0
  assert final["loss"] < floor + 0.6, final
  assert final["accuracy"] > 0.65 and final["num_examples"] == 64
  assert final["perplexity"] == pytest.approx(math.exp(final["loss"]), rel=1e-4)
  assert 0.0 <= first["data_wait"] < 1.0


def test_synthetic_tokens_are_the_same_everywhere_and_follow_the_chain(tmp_path):
  cfg = tiny_lm_config(str(tmp_path / "a")).dataset
  a = datasets.get_builder(cfg)
  cfg.data_dir = str(tmp_path / "b")
  b = datasets.get_builder(cfg)
  rows = lambda builder, split: np.stack([r["tokens"] for r in builder.as_data_source(split=split)])
  train = rows(a, "train")
  assert train.shape == (512, 33) and train.dtype == np.int32 and train.max() < 128
  np.testing.assert_array_equal(train, rows(b, "train"))
  assert len(rows(a, "test")) == 64
  # Each token's most frequent successor follows it about 3/4 of the time.
  pairs = np.stack([train[:, :-1].ravel(), train[:, 1:].ravel()], 1)
  counts = np.zeros((128, 128))
  np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
  assert abs(counts.max(1).sum() / counts.sum() - 0.75) < 0.02


def test_bad_synthetic_shape_is_a_user_error(tmp_path):
  cfg = tiny_lm_config(str(tmp_path)).dataset
  cfg.builder_kwargs.seq_len = 1
  with pytest.raises(UserError, match="dataset.builder_kwargs: .*seq_len=1"):
    datasets.get_builder(cfg)


def _init(model, batch):
  return jax.jit(model.init)(jax.random.PRNGKey(0), batch)["params"]


def test_attention_is_causal_and_bfloat16_keeps_float32_params():
  model = TransformerLM(
    vocab_size=50,
    max_length=16,
    num_layers=2,
    num_heads=2,
    embed_dim=32,
    dtype=jnp.bfloat16,
    attention="xla",
  )
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 17), 0, 50)
  params = _init(model, {"tokens": tokens})
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  apply = jax.jit(lambda t: model.apply({"params": params}, {"tokens": t}))
  logits = apply(tokens)
  assert logits.shape == (2, 16, 50) and logits.dtype == jnp.bfloat16
  changed = apply(tokens.at[:, 10].set((tokens[:, 10] + 1) % 50))
  np.testing.assert_array_equal(logits[:, :10], changed[:, :10])  # the past cannot see the future
  assert not np.array_equal(logits[:, 10:], changed[:, 10:])


def test_remat_gives_the_same_gradients_bit_for_bit():
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, 40)
  batch = {"tokens": tokens}
  make = lambda remat: TransformerLM(
    vocab_size=40, max_length=8, num_layers=2, num_heads=2, embed_dim=16, remat=remat
  )
  params = _init(make(""), batch)
  grads = {}
  for remat in ("", "dots_no_batch"):
    loss = lambda p, m=make(remat): tasks.language_modeling_loss(
      m.apply({"params": p}, batch), batch
    )["loss"].mean()
    grads[remat] = jax.jit(jax.grad(loss))(params)
  jax.tree.map(np.testing.assert_array_equal, grads[""], grads["dots_no_batch"])


@pytest.mark.parametrize("arg,low,high", [("124m", 123e6, 126e6), ("350m", 350e6, 360e6)])
def test_configs_have_the_advertised_size(arg, low, high):
  c = load_config("lm_124m") if arg == "124m" else load_config("lm_350m")
  model = TransformerLM(**{k: v for k, v in c.model.items() if k != "name"})
  batch = {"tokens": jnp.zeros((1, c.model.max_length + 1), jnp.int32)}
  params = jax.eval_shape(lambda: _init(model, batch))
  n = sum(x.size for x in jax.tree.leaves(params))
  assert low < n < high, n
  m = c.model
  # 6 x (every 2-D weight but the position table) + 12 x layers x T x width.
  matmul = (
    n - m.max_length * m.embed_dim - sum(x.size for x in jax.tree.leaves(params) if x.ndim == 1)
  )
  assert (
    train_flops_per_token(
      params, num_layers=m.num_layers, embed_dim=m.embed_dim, seq_len=m.max_length
    )
    == 6 * matmul + 12 * m.num_layers * 1024 * m.embed_dim
  )


def test_model_config_mistakes_are_one_line_errors():
  batch = {"tokens": jnp.zeros((1, 9), jnp.int32)}
  with pytest.raises(UserError, match="attention='flash' is not one of"):
    _init(
      TransformerLM(
        vocab_size=10, max_length=8, num_layers=1, num_heads=2, embed_dim=8, attention="flash"
      ),
      batch,
    )
  with pytest.raises(UserError, match="embed_dim=10 is not divisible by num_heads=4"):
    _init(
      TransformerLM(vocab_size=10, max_length=8, num_layers=1, num_heads=4, embed_dim=10), batch
    )
  with pytest.raises(
    UserError, match="sequences of 8 tokens are longer than config.model.max_length=4"
  ):
    _init(TransformerLM(vocab_size=10, max_length=4, num_layers=1, num_heads=2, embed_dim=8), batch)


def test_a_model_that_cannot_read_tokens_is_refused_before_training(data_dir, tmp_path):
  c = tiny_lm_config(data_dir)
  c.model = dict(name="mlp", num_classes=10)
  with pytest.raises(UserError, match=r"config.model \(mlp\) cannot take this dataset's inputs"):
    train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "checkpoints").exists()
