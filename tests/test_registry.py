"""One way to name a model, task or dataset: built-ins are import paths, like a user's code.

Every built-in model trains from its import path (and its task's), as a
user's module in a file would; a TFDS builder class in a user's file is data;
names that cannot be used are one line each.
"""

import os

import pytest

from jaxtrain import registry
from jaxtrain.data import importing
from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint, manifest
from jaxtrain.run.loop import train_and_evaluate
from jaxtrain.run.metric_writers import read_metrics

from conftest import ROOT, load_config

# Each built-in model with a config of its kind: (model, config, model fields for a tiny run).
MODELS = {
  "mlp": ("digits", dict(num_classes=10, features=(16,))),
  "cnn": ("digits", dict(num_classes=10)),
  "resnet": ("digits", dict(num_classes=10, stage_sizes=(1, 1), width=4)),
  "tabular_mlp": ("breast_cancer", dict(features=(8,))),
  "bag_of_embeddings": ("spam", dict(embed_dim=8, hidden=8)),
  "transformer_encoder": ("spam", dict(width=8, depth=1, num_heads=2, mlp_dim=16)),
  "matrix_factorization": ("ratings", dict(dim=4)),
  "two_tower": ("recommend", dict(dim=4, hidden=8)),
  "transformer_lm": (
    "lm_124m",
    dict(
      vocab_size=64,
      max_length=16,
      num_layers=1,
      num_heads=2,
      embed_dim=16,
      mlp_ratio=2,
      dropout_rate=0.0,
      attention="",
      remat="",
    ),
  ),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory, data_dir):
  """The sample files imported once for the table configs (into the session's data_dir)."""
  cwd = os.getcwd()
  os.chdir(ROOT)  # the configs name their sample files relative to the checkout
  try:
    for name in ("breast_cancer", "spam", "ratings", "recommend"):
      importing.run_import(
        importing.ImportSpec.from_config(load_config(name).data_import), data_dir
      )
  finally:
    os.chdir(cwd)
  return data_dir


def test_the_short_names_only_map_to_import_paths():
  for table in (registry.MODELS, registry.TASKS, registry.DATASETS):
    for name, path in table.items():
      assert registry.is_import_path(path) and not registry.is_import_path(name)
      assert registry.resolve(name, table, "x").obj is registry.resolve(path, table, "x").obj


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_built_in_model_trains_from_its_import_path(name, imported, tmp_path):
  config_name, fields = MODELS[name]
  c = load_config(config_name)
  c.model = dict(fields, name=registry.MODELS[name])  # e.g. "jaxtrain.models.image:CNN"
  c.task = registry.TASKS[c.task]  # e.g. "jaxtrain.tasks:Classification"
  if c.dataset.name in registry.DATASETS:
    c.dataset.name = registry.DATASETS[c.dataset.name]
  if name == "transformer_lm":
    c.dataset.builder_kwargs.update(vocab_size=64, seq_len=16, num_examples=64)
    c.compute_dtype = "float32"
  c.batch_size = 16
  c.dataset.update(data_dir=imported, test_split="")
  c.num_train_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 4, 2, 4, 4
  c.early_stopping.update(metric="", patience=0)
  c.keep_best_checkpoints = 0
  workdir = str(tmp_path / "w")
  train_and_evaluate(c, workdir)
  assert checkpoint.saved_steps(workdir) == [4]
  assert [e["split"] for e in read_metrics(workdir)] == ["train", "train", "eval"]
  assert manifest.read(workdir)["code"] == {}  # jaxtrain's own code: versioned, not hashed


BUILDER = '''
import numpy as np
import tensorflow_datasets as tfds


class Parity(tfds.core.GeneratorBasedBuilder):
  """Is the sum of 6 bits odd? A dataset a user writes in a few lines."""
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, size=512, **kwargs):
    self.size = size
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "bits": tfds.features.Tensor(shape=(6,), dtype=np.float32),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    bits = np.random.default_rng(0).integers(0, 2, (self.size, 6)).astype(np.float32)
    return {
      "train": self._generate_examples(bits[:-64]),
      "test": self._generate_examples(bits[-64:]),
    }

  def _generate_examples(self, bits):
    for i, row in enumerate(bits):
      yield i, {"bits": row, "label": int(row.sum()) % 2}
'''


def test_a_users_builder_in_a_file_is_the_data(tmp_path, data_dir):
  folder = tmp_path / "experiment"
  folder.mkdir()
  (folder / "parity.py").write_text(BUILDER)
  c = load_config("digits")
  c.dataset.update(
    name="parity.py:Parity",
    builder_kwargs={"size": 256},
    data_dir=data_dir,
    train_split="train",
    eval_split="test",
    test_split="",
  )
  c.model = dict(name="mlp", num_classes=2, features=(32,))
  c.model_input = "bits"
  c.batch_size, c.num_train_steps, c.eval_every_steps = 32, 40, 40
  workdir = str(tmp_path / "w")
  train_and_evaluate(c, workdir, config_dir=str(folder))
  code = manifest.read(workdir)["code"]["config.dataset.name"]
  assert code["file"] == str(folder / "parity.py") and len(code["sha256"]) == 64
  assert [e for e in read_metrics(workdir) if e["split"] == "eval"][-1]["num_examples"] == 64


@pytest.mark.parametrize(
  "name, text",
  [
    ("missing.py:Net", "config.model.name='missing.py:Net': {d}/missing.py does not exist"),
    (
      "nets.py:Nope",
      "config.model.name: {d}/nets.py has no 'Nope' (it defines: Broken, NUMBER, NoRngs, nnx)",
    ),
    ("nets.py:NoRngs", "an NNX module's constructor must take `rngs`"),
    (
      "nets.py:NUMBER",
      "config.model.name='nets.py:NUMBER' is not a Flax Linen or NNX module class",
    ),
    (
      "broken.py:Net",
      "config.model.name: {d}/broken.py cannot be loaded: ZeroDivisionError: division by zero",
    ),
    ("flax.linen:Nope", "config.model.name: flax.linen has no 'Nope'"),
    ("no_such_package.models:Net", "cannot import no_such_package.models"),
  ],
)
def test_names_that_cannot_be_used_are_one_line(name, text, tmp_path, small_config):
  (tmp_path / "nets.py").write_text(
    "from flax import nnx\nNUMBER = 3\n"
    "class NoRngs(nnx.Module):\n  def __init__(self, num_classes):\n    pass\n"
    "class Broken(nnx.Module):\n  def __init__(self, *, rngs):\n    pass\n"
  )
  (tmp_path / "broken.py").write_text("x = 1 / 0\n")
  small_config.model = dict(name=name, num_classes=10)
  with pytest.raises(UserError) as info:
    train_and_evaluate(small_config, str(tmp_path / "w"), config_dir=str(tmp_path))
  assert text.format(d=tmp_path) in str(info.value) and "\n" not in str(info.value)
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_task_option_the_task_does_not_take_is_refused(small_config, tmp_path):
  small_config.loss.label_smoothing = 0.1  # classification has no such option
  with pytest.raises(
    UserError,
    match=r"config.loss: jaxtrain.tasks:Classification takes no "
    r"option\(s\) label_smoothing \(it takes: class_weights, "
    r"label_kind\)",
  ):
    train_and_evaluate(small_config, str(tmp_path / "w"))
