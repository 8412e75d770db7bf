"""Pretrained folders in, fine-tuned folders out: readers, numerics, LoRA, export, bad inputs.

The folders in tests/fixtures/pretrained/ were written by Hugging Face transformers
(experiments/pretrained_fixtures.py, with its reference outputs); nothing here needs PyTorch.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import time
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain import lora
from jaxtrain.errors import UserError
from jaxtrain.models import bert, hf
from jaxtrain.run import checkpoint, finetune
from jaxtrain.run import inputs as run_inputs
from jaxtrain.tools.cli import main

from conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pretrained")
BERT = os.path.join(FIXTURES, "bert")


def _config(**model):
  from jaxtrain.config import base_config

  config = base_config()
  config.model = dict(name="bert", pretrained=BERT, dropout_rate=0.0, **model)
  return config


def _bert(folder=BERT, num_outputs=3, **fields):
  """(model, variables) of a BertClassifier with `folder`'s weights, as a run loads them."""
  config = _config(num_outputs=num_outputs, **fields)
  config.model.pretrained = folder
  reference = np.load(os.path.join(BERT, "reference.npz"))
  batch = {
    "tokens": jnp.asarray(reference["input_ids"], jnp.int32),
    "attention_mask": jnp.asarray(reference["attention_mask"], jnp.int32),
  }
  model = run_inputs.build_model(config, {"kind": "image"}, batch)
  variables, _ = finetune.load_pretrained(model.init(jax.random.PRNGKey(0), batch), model)
  return model, variables, batch, reference


def test_bert_outputs_equal_the_reference_implementations():
  model, variables, batch, reference = _bert()
  module = model.make()
  logits = module.apply(variables, batch)
  np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=0)
  body = bert.BertModel(
    **{
      k: getattr(module, k)
      for k in bert.BertModel.__dataclass_fields__
      if k not in ("parent", "name")
    }
  )
  hidden, _ = body.apply(
    {"params": variables["params"]["bert"]},
    batch["tokens"],
    batch["attention_mask"],
    jnp.zeros_like(batch["tokens"]),
    False,
  )
  np.testing.assert_allclose(hidden, reference["last_hidden_state"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family, name", [("llama", "llama"), ("qwen2", "llama"), ("vit", "vit")])
def test_each_family_equals_the_reference_implementation(family, name):
  folder = os.path.join(FIXTURES, family)
  reference = np.load(os.path.join(folder, "reference.npz"))
  config = _config()
  config.model = dict(name=name, pretrained=folder, **({"num_outputs": 3} if name == "vit" else {}))
  if name == "vit":  # transformers' pixels are normalised to [-1, 1], NCHW; jaxtrain's [0, 1]
    batch = {"image": jnp.asarray((reference["pixel_values"].transpose(0, 2, 3, 1) + 1) / 2)}
  else:
    batch = {
      "tokens": jnp.asarray(reference["input_ids"], jnp.int32),
      "attention_mask": jnp.asarray(reference["attention_mask"], jnp.int32),
    }
  model = run_inputs.build_model(config, {"kind": "image"}, batch)
  variables, report = finetune.load_pretrained(model.init(jax.random.PRNGKey(0), batch), model)
  assert report["initialised"] == [] and report["unused"] == []
  logits = model.make().apply(variables, batch if name != "vit" else batch["image"])
  np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=0)
  if family == "qwen2":  # tied embeddings: no lm_head of its own; q, k, v with biases
    assert "lm_head" not in variables["params"]
    assert "bias" in variables["params"]["model"]["layers_0"]["self_attn"]["q_proj"]


def test_sharded_safetensors_are_read_lazily_and_whole():
  source = checkpoint.read_pretrained(BERT)
  assert len(source.files) == 4  # four shards, through model.safetensors.index.json
  assert len(source.shapes) == 41
  assert source.shapes["bert.encoder.layer.1.intermediate.dense.weight"] == ((64, 32), np.float32)
  hashes = source.sha256()
  assert set(hashes) == {"config.json", *source.files} and all(
    len(h) == 64 for h in hashes.values()
  )


def test_safetensors_written_read_back_bit_for_bit(tmp_path):
  arrays = {
    "a": np.arange(6, dtype=np.float16).reshape(2, 3),
    "b": np.asarray([1.5, -0.0, 3.25], jnp.bfloat16),
    "c": np.asarray([[1, 2]], np.int64),
  }
  path = str(tmp_path / "x.safetensors")
  checkpoint.write_safetensors(path, arrays, {"format": "pt"})
  read = checkpoint.Safetensors(path)
  assert read.metadata == {"format": "pt"}
  for name, array in arrays.items():
    back = read.read(name)
    assert back.dtype == array.dtype and back.tobytes() == array.tobytes()


def test_damaged_folders_are_refused_in_one_line(tmp_path):
  folder = tmp_path / "bert"
  shutil.copytree(BERT, folder)
  shard = folder / "model-00002-of-00004.safetensors"
  shard.write_bytes(shard.read_bytes()[:-10])
  with pytest.raises(
    UserError,
    match=r"model-00002-of-00004.safetensors holds \d+ bytes, its "
    r"header describes \d+: the file is truncated",
  ):
    checkpoint.read_pretrained(str(folder))
  shard.unlink()
  with pytest.raises(
    UserError,
    match=r"shard model-00002-of-00004.safetensors named by "
    r"model.safetensors.index.json is missing \(1 of 4 shards missing\)",
  ):
    checkpoint.read_pretrained(str(folder))
  with pytest.raises(UserError, match="has no config.json: not a Hugging Face model folder"):
    checkpoint.read_pretrained(str(tmp_path))


def _single_file_folder(tmp_path, dtype) -> str:
  """The BERT fixture as one model.safetensors of `dtype`."""
  source = checkpoint.read_pretrained(BERT)
  folder = tmp_path / f"bert_{np.dtype(dtype).name}"
  checkpoint.write_pretrained(
    str(folder), source.config, {n: source.read(n).astype(dtype) for n in source.shapes}
  )
  return str(folder)


def test_half_precision_weights_are_cast_and_the_cast_reported(tmp_path):
  folder = _single_file_folder(tmp_path, jnp.bfloat16)
  model, variables, batch, reference = _bert(folder)
  kernel = variables["params"]["bert"]["encoder"]["layer_0"]["intermediate"]["dense"]["kernel"]
  assert kernel.dtype == jnp.float32
  expected = checkpoint.read_pretrained(BERT).read("bert.encoder.layer.0.intermediate.dense.weight")
  np.testing.assert_array_equal(kernel, expected.astype(jnp.bfloat16).astype(np.float32).T)
  logits = model.make().apply(variables, batch)
  np.testing.assert_allclose(logits, reference["logits"], atol=0.1)  # bfloat16's rounding


def test_init_from_record_reports_and_hashes(tmp_path):
  config = _config(num_outputs=2)
  reference = np.load(os.path.join(BERT, "reference.npz"))
  batch = {"tokens": jnp.asarray(reference["input_ids"], jnp.int32)}
  model = run_inputs.build_model(config, {"kind": "image"}, batch)
  _, report = finetune.load_pretrained(model.init(jax.random.PRNGKey(0), batch), model)
  finetune.write_record(str(tmp_path), report)
  record = json.loads((tmp_path / "init_from.json").read_text())
  assert len(record["restored"]) == 39
  assert record["initialised"] == [
    "classifier/bias (2,) (the folder's is [3])",
    "classifier/kernel (32, 2) (the folder's is [3, 32])",
  ]
  assert record["unused"] == ["classifier.bias", "classifier.weight"]
  assert record["files"]["model-00001-of-00004.safetensors"] == checkpoint.registry.sha256_of(
    os.path.join(BERT, "model-00001-of-00004.safetensors")
  )
  assert record["mapping"]["bert/encoder/layer_1/attention/self/query/kernel"] == (
    "bert.encoder.layer.1.attention.self.query.weight"
  )


def test_a_body_that_disagrees_with_the_folder_is_one_line():
  with pytest.raises(
    UserError,
    match=r"bert.embeddings.LayerNorm.bias is \[32\], the model's "
    r"bert/embeddings/LayerNorm/bias takes \[48\]",
  ):
    _bert(hidden_size=48, intermediate_size=64)
  with pytest.raises(UserError, match="model_type='vit': BertClassifier takes BERT's layout"):
    _bert(os.path.join(FIXTURES, "vit"))


def test_names_map_both_ways():
  targets = {"bert/encoder/layer_10/attention/self/query/kernel", "vit/embeddings/cls_token"}
  layout = hf.Layout(body="bert")
  assert hf.target_path("encoder.layer.10.attention.self.query.weight", targets, layout) == (
    "bert/encoder/layer_10/attention/self/query/kernel"
  )
  assert hf.source_name("bert/encoder/layer_10/attention/self/query/kernel") == (
    "bert.encoder.layer.10.attention.self.query.weight"
  )
  assert hf.source_name("vit/embeddings/cls_token") == "vit.embeddings.cls_token"
  conv = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # OIHW
  assert hf.to_flax("kernel", conv).shape == (4, 5, 3, 2)
  assert hf.from_flax("kernel", hf.to_flax("kernel", conv)).tobytes() == conv.tobytes()


def test_lora_starts_at_the_base_model_and_trains_only_adapters():
  model, variables, batch, reference = _bert()
  apply_fn = model.apply_fn()
  adapted, lora_apply = lora.adapt(
    apply_fn,
    variables,
    pattern=r"query|value",
    rank=4,
    alpha=8.0,
    rng=jax.random.PRNGKey(1),
    train="^classifier/",
  )
  assert sorted(adapted["params"]) == ["lora", "train"]
  assert sorted(adapted["params"]["train"]) == ["classifier"]
  n_adapters = len(jax.tree.leaves(adapted["params"]["lora"]))
  assert n_adapters == 2 * 2 * 2  # a and b, on query and value, in two layers
  out, _ = lora_apply(adapted, batch, train=False, rng=jax.random.PRNGKey(0))
  np.testing.assert_allclose(out, reference["logits"], atol=1e-4, rtol=0)  # b starts at 0
  with pytest.raises(
    UserError,
    match=r"lora.targets='nothing_here' matches no 2-D kernel of the "
    r"model \(its kernels: bert/encoder/layer_0/attention/output/dense/kernel, ",
  ):
    config = _config(num_outputs=3)
    config.lora.update(rank=4, targets="nothing_here")
    finetune.with_lora(variables, apply_fn, config, model)


# -- the command line, as the README shows it ----------------------------------------


@pytest.fixture(scope="module")
def spam_data(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  assert (
    main(
      [
        "data",
        "import",
        "--config",
        "configs/finetune_text.py",
        f"--config.dataset.data_dir={data_dir}",
      ]
    )
    == 0
  )
  return data_dir


def _train_args(workdir, data_dir, *extra, config="configs/finetune_text.py"):
  return [
    "train",
    "--config",
    config,
    "--workdir",
    str(workdir),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    f"--config.model.pretrained={BERT}",
    "--config.num_epochs=3",
    "--config.optimizer.learning_rate=2e-3",
    *extra,
  ]


@pytest.fixture(scope="module")
def full_run(spam_data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full") / "w"
  assert main(_train_args(workdir, spam_data)) == 0
  return workdir


def _test_metrics(workdir):
  from jaxtrain.run.metric_writers import read_metrics

  return [e for e in read_metrics(str(workdir)) if e["split"] == "test"][-1]


def test_finetune_text_trains_a_classifier_from_a_bert_folder(full_run):
  test = _test_metrics(full_run)
  # The spam sample is 25% spam: always answering ham scores F1 0 and MCC 0.
  assert test["f1"] > 0.6 and test["mcc"] > 0.5, test
  prep = json.loads((full_run / "preprocess" / "preprocess.json").read_text())
  assert prep["text"]["tokenizer"] == "pretrained" and prep["text"]["pad_id"] == 0


def test_export_writes_the_folders_names_and_shapes_and_reads_back(full_run, tmp_path):
  out = tmp_path / "hf"
  assert (
    main(["export", "--workdir", str(full_run), "--format", "safetensors", "--output", str(out)])
    == 0
  )
  exported, source = checkpoint.read_pretrained(str(out)), checkpoint.read_pretrained(BERT)
  assert sorted(exported.shapes) == sorted(source.shapes)
  changed = {n for n in source.shapes if exported.shapes[n] != source.shapes[n]}
  assert changed == {"classifier.weight", "classifier.bias"}  # 2 classes, not the folder's 3
  assert exported.shapes["classifier.weight"] == ((2, 32), np.float32)
  config = json.loads((out / "config.json").read_text())
  assert config["id2label"] == {"0": "ham", "1": "spam"}
  assert config["architectures"] == ["BertForSequenceClassification"]
  assert (out / "tokenizer.json").read_text() == open(os.path.join(BERT, "tokenizer.json")).read()
  # Read back into jaxtrain: the same outputs as the run's own weights.
  from jaxtrain.steps import predict_step
  from jaxtrain.tools import predict

  *_, state, _ = predict.load_run(str(full_run))
  model, variables, batch, _ = _bert(str(out), num_outputs=2)
  np.testing.assert_allclose(
    model.make().apply(variables, batch), predict_step(state, batch), atol=1e-5, rtol=0
  )
  _check_in_the_reference_library(out, batch, predict_step(state, batch))


def _check_in_the_reference_library(folder, batch, expected):
  """Where PyTorch and transformers are installed (not in CI), they load the export too."""
  if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
    return
  np.savez(
    folder / "inputs.npz",
    input_ids=np.asarray(batch["tokens"]),
    attention_mask=np.asarray(batch["attention_mask"]),
  )
  subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "pretrained_fixtures.py"),
      "--check",
      str(folder),
      "bert",
      str(folder / "logits.npz"),
      str(folder / "inputs.npz"),
    ],
    check=True,
    capture_output=True,
  )
  np.testing.assert_allclose(np.load(folder / "logits.npz")["logits"], expected, atol=1e-4)


@pytest.fixture(scope="module")
def lora_run(spam_data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora") / "w"
  assert main(_train_args(workdir, spam_data, config="configs/finetune_text.py:lora")) == 0
  return workdir


def test_lora_checkpoints_hold_only_what_changes(lora_run):
  step, arrays = checkpoint.load_arrays(str(lora_run))
  assert sorted(arrays["params"]) == ["lora", "train"]
  assert "frozen" not in arrays["model_state"]
  trained = sum(x.size for x in jax.tree.leaves(arrays["params"]))
  assert trained < 0.1 * sum(
    s[0] and np.prod(s[0]) for s in checkpoint.read_pretrained(BERT).shapes.values()
  )
  assert sum(x.size for x in jax.tree.leaves(arrays["opt_state"])) < 3 * trained + 10
  assert _test_metrics(lora_run)["f1"] > 0.3


def test_lora_export_keeps_every_base_tensor_bit_identical(lora_run, tmp_path):
  out = tmp_path / "separate"
  assert (
    main(
      [
        "export",
        "--workdir",
        str(lora_run),
        "--format",
        "safetensors",
        "--lora",
        "separate",
        "--output",
        str(out),
      ]
    )
    == 0
  )
  exported, source = checkpoint.read_pretrained(str(out)), checkpoint.read_pretrained(BERT)
  for name in source.shapes:
    if not name.startswith("classifier."):
      assert exported.read(name).tobytes() == source.read(name).tobytes(), name
  adapter = checkpoint.Safetensors(str(out / "adapter_model.safetensors"))
  assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in (
    adapter.entries
  )
  assert adapter.entries[
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"
  ][1] == (32, 8)
  adapter_config = json.loads((out / "adapter_config.json").read_text())
  assert adapter_config["r"] == 8 and adapter_config["target_modules"] == ["query", "value"]
  merged = tmp_path / "merged"
  assert (
    main(["export", "--workdir", str(lora_run), "--format", "safetensors", "--output", str(merged)])
    == 0
  )
  name = "bert.encoder.layer.0.attention.self.query.weight"
  a = adapter.read(
    name.replace(".weight", ".lora_A.weight").replace("bert.", "base_model.model.bert.", 1)
  )
  b = adapter.read(
    name.replace(".weight", ".lora_B.weight").replace("bert.", "base_model.model.bert.", 1)
  )
  np.testing.assert_allclose(
    checkpoint.read_pretrained(str(merged)).read(name),
    source.read(name) + (16.0 / 8) * (b @ a),
    atol=1e-6,
  )


def test_bad_pretrained_inputs_exit_with_one_line_and_write_nothing(spam_data, tmp_path):
  gpt2 = tmp_path / "gpt2"
  shutil.copytree(BERT, gpt2)
  config = json.loads((gpt2 / "config.json").read_text())
  (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
  cases = {
    "lora": (
      ["--config.lora.rank=4", "--config.lora.targets=nothing_here"],
      "lora.targets='nothing_here' matches no 2-D kernel",
    ),
    "tokenizer": (
      [f"--config.preprocess.tokenizer={os.path.join(FIXTURES, 'llama')}"],
      "tokenizer.json has 300 tokens, the model bert embeds 259",
    ),
    "type": (
      [f"--config.model.pretrained={gpt2}"],
      "config.json's model_type='gpt2': BertClassifier takes BERT's layout",
    ),
    "length": (["--config.preprocess.max_length=100"], "exceeds the model's 64 positions"),
  }
  for case, (extra, message) in cases.items():
    workdir = tmp_path / case
    proc = subprocess.run(
      [sys.executable, "-m", "jaxtrain.tools.cli", *_train_args(workdir, spam_data, *extra)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 1, (case, proc.stderr[-2000:])
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("jaxtrain: error: ") and message in line, (case, line)
    written = sorted(p.name for p in workdir.rglob("*") if p.is_file()) if workdir.exists() else []
    assert written == [], (case, written)


def test_a_lora_run_killed_and_resumed_ends_with_the_uninterrupted_bits(spam_data, tmp_path):
  lora_args = lambda w, *x: _train_args(  # noqa: E731
    w,
    spam_data,
    "--config.num_epochs=50",
    "--config.checkpoint_every_steps=20",
    "--config.early_stopping.patience=0",
    *x,
    config="configs/finetune_text.py:lora",
  )
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  assert main(lora_args(straight, "--stop_at_step=120")) == 0
  proc = subprocess.Popen(
    [sys.executable, "-m", "jaxtrain.tools.cli", *lora_args(killed)],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 300
  while not checkpoint.saved_steps(str(killed)):  # killed once its first checkpoint is whole
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)
  proc.kill()
  proc.wait()
  resumed_at = checkpoint.saved_steps(str(killed))[-1]
  assert resumed_at < 120
  assert main(lora_args(killed, "--stop_at_step=120")) == 0
  digest = lambda w: checkpoint.tree_digest(checkpoint.load_arrays(str(w), 120)[1])  # noqa: E731
  assert digest(killed) == digest(straight)


def test_finetune_lm_lowers_the_response_loss_of_a_llama_folder(tmp_path):
  workdir, data_dir = tmp_path / "w", tmp_path / "tfds"
  llama = os.path.join(FIXTURES, "llama")
  args = [
    "train",
    "--config",
    "configs/finetune_lm.py",
    "--workdir",
    str(workdir),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    f"--config.model.pretrained={llama}",
  ]
  assert main(args) == 0
  from jaxtrain.run.metric_writers import read_metrics

  evals = [e["loss"] for e in read_metrics(str(workdir)) if e["split"] == "eval"]
  assert len(evals) == 3 and evals[-1] < evals[0] - 0.3, evals
  step, arrays = checkpoint.load_arrays(str(workdir))
  assert sorted(arrays["params"]) == ["lora"]  # the base held fixed, out of the checkpoint
  out = tmp_path / "hf"
  assert (
    main(["export", "--workdir", str(workdir), "--format", "safetensors", "--output", str(out)])
    == 0
  )
  exported, source = checkpoint.read_pretrained(str(out)), checkpoint.read_pretrained(llama)
  assert {n: s for n, s in exported.shapes.items()} == source.shapes
  assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_finetune_image_trains_a_vit_folder_on_the_digits(tmp_path, data_dir):
  workdir = tmp_path / "w"
  args = [
    "train",
    "--config",
    "configs/finetune_image.py:lora",
    "--workdir",
    str(workdir),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    f"--config.model.pretrained={os.path.join(FIXTURES, 'vit')}",
  ]
  assert main(args) == 0
  from jaxtrain.run.metric_writers import read_metrics

  last = [e for e in read_metrics(str(workdir)) if e["split"] == "eval"][-1]
  assert last["accuracy"] > 0.4, last  # ten classes: chance is 0.1


def test_a_flax_msgpack_folder_loads_without_transposes(tmp_path):
  from flax import serialization

  model, variables, batch, reference = _bert()
  folder = tmp_path / "flax"
  folder.mkdir()
  shutil.copy(os.path.join(BERT, "config.json"), folder / "config.json")
  numpy_params = jax.tree.map(np.asarray, variables["params"])
  (folder / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(numpy_params))
  model, loaded, batch, _ = _bert(str(folder))
  np.testing.assert_allclose(model.make().apply(loaded, batch), reference["logits"], atol=1e-4)


def test_init_from_an_orbax_checkpoint_casts_half_precision_and_takes_batch_stats(
  tmp_path, small_config
):
  import orbax.checkpoint as ocp

  from jaxtrain.run import loop as train

  small_config.model = dict(name="cnn", num_classes=10)
  source = tmp_path / "source"
  state = train.train_and_evaluate(small_config, str(source))
  params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), state.params)
  stats = jax.tree.map(lambda x: np.asarray(x) + 1.0, state.model_state["batch_stats"])
  path = tmp_path / "linen"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(path), {"params": params, "batch_stats": stats})
  small_config.init_from.checkpoint = str(path)
  small_config.num_train_steps = 1
  tuned = tmp_path / "tuned"
  train.train_and_evaluate(small_config, str(tuned))
  record = json.loads((tuned / "init_from.json").read_text())
  # CNN: 2 convs, 2 batch norms (scale, bias), 2 dense layers (kernel, bias): 10 arrays.
  assert record["initialised"] == [] and record["cast"] == {"bfloat16->float32": 10}
  assert sorted(record["model_state_restored"]) == [
    f"batch_stats/BatchNorm_{i}/{k}" for i in (0, 1) for k in ("mean", "var")
  ]
  started = finetune.init_from(state, small_config, str(tmp_path))  # writes init_from.json
  np.testing.assert_array_equal(
    started.model_state["batch_stats"]["BatchNorm_1"]["var"], stats["BatchNorm_1"]["var"]
  )
  np.testing.assert_array_equal(
    started.params["Dense_1"]["kernel"], params["Dense_1"]["kernel"].astype(np.float32)
  )


def test_integer_arrays_of_an_npz_stay_integers():
  from jaxtrain.config import base_config
  from jaxtrain.data import preprocess

  schema = {
    "columns": {"ids": "tensor", "pixels": "tensor"},
    "features": {"ids": "ids", "pixels": "pixels"},
    "label_kind": "class",
    "class_names": ["a", "b"],
  }
  ids = np.asarray([[101, 30000, 0], [5, 6, 7]], np.int64)  # token ids, past 255
  train = {"ids": ids, "label": np.asarray([0, 1])}
  prep = preprocess.fit({**schema, "columns": {"ids": "tensor"}}, train, base_config())
  batch = preprocess.make_transform(prep, train=False)(train)
  assert batch["tokens"].dtype == np.int32 and batch["tokens"].tolist() == ids.tolist()
  assert "image" not in batch
  pixels = {"pixels": np.full((2, 2, 2, 1), 255, np.uint8), "label": np.asarray([0, 1])}
  prep = preprocess.fit({**schema, "columns": {"pixels": "tensor"}}, pixels, base_config())
  batch = preprocess.make_transform(prep, train=False)(pixels)
  assert batch["image"].dtype == np.float32 and float(batch["image"].max()) == 1.0
