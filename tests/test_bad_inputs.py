"""Bad input of every kind: one line naming what to fix, a non-zero exit, nothing lost.

Each case runs `jaxtrain` (its `main`, in this process, for speed; test_cli.py
runs real processes) and asserts the exit status and the single line on stderr.
"""

import gzip
import json

import pytest

from jaxtrain.tools.cli import main

DIGITS = "configs/digits.py"


def _files(tmp_path):
  """Bad files to point jaxtrain at."""
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "noget.py").write_text("x = 1\n")
  (tmp_path / "empty_dir").mkdir()
  bad = tmp_path / "truncated_idx"
  bad.mkdir()
  with gzip.open(bad / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + bytes(40))
  with gzip.open(bad / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(5))
  (tmp_path / "a_file").write_text("not a directory")
  (tmp_path / "bad_value.csv").write_text("amount,city,label\n1.5,Oslo,a\n2.0,Rome,b\nabc,Oslo,a\n")
  (tmp_path / "bad_fields.csv").write_text("amount,label\n1.5,a\n2.0,b,extra\n")
  (tmp_path / "bad.jsonl").write_text('{"x": 1, "label": "a"}\n{"x": 2, "label": \n')
  (tmp_path / "rows.xlsx").write_bytes(b"PK\x03\x04\x14\x00\x06\x00")  # a spreadsheet: binary
  import numpy as np

  np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object), label=np.array([1]))


CASES = [
  # (name, argv after `jaxtrain`, exit status, text the one line holds)
  ("no command", [], 2, "usage: jaxtrain {{train|sweep|report|inspect|rerun|data|predict|export}}"),
  (
    "unknown command",
    ["fit"],
    2,
    "usage: jaxtrain {{train|sweep|report|inspect|rerun|data|predict|export}}",
  ),
  ("no config", ["train", "--workdir", "{w}"], 2, "--config is required"),
  ("no workdir", ["train", "--config", DIGITS], 2, "--workdir is required"),
  (
    "missing config file",
    ["train", "--config", "{t}/nope.py", "--workdir", "{w}"],
    2,
    "--config: cannot load the config file: [Errno 2] No such file or directory",
  ),
  (
    "config syntax error",
    ["train", "--config", "{t}/syntax.py", "--workdir", "{w}"],
    2,
    "invalid syntax (syntax.py, line 1)",
  ),
  (
    "config without get_config",
    ["train", "--config", "{t}/noget.py", "--workdir", "{w}"],
    2,
    "--config: the config file has no get_config() function",
  ),
  (
    "unknown field",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.no_such_key=1"],
    2,
    "config has no field 'no_such_key' (from --config.no_such_key=1)",
  ),
  (
    "unknown nested field",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.lr=1"],
    2,
    "config has no field 'optimizer.lr'",
  ),
  (
    "int field given text",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.batch_size=abc"],
    2,
    "--config.batch_size=abc: invalid literal for int()",
  ),
  (
    "float field given text",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.learning_rate=fast"],
    2,
    "--config.optimizer.learning_rate=fast",
  ),
  (
    "bool field given text",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.nesterov=maybe"],
    2,
    "--config.optimizer.nesterov",
  ),
  (
    "zero batch",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.batch_size=0"],
    1,
    "config.batch_size=0 must be > 0",
  ),
  (
    "negative seed",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.seed=-1"],
    1,
    "config.seed=-1 must be in [0, 2**32)",
  ),
  (
    "zero steps",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.num_train_steps=0"],
    1,
    "config.num_train_steps=0 must be > 0, or -1 to use num_epochs",
  ),
  (
    "unknown optimizer",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.name=rmsprop"],
    1,
    "config.optimizer.name='rmsprop' must be one of ('sgd', 'adam', 'adamw')",
  ),
  (
    "unknown schedule",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.schedule=cosine"],
    1,
    "config.optimizer.schedule='cosine' must be one of",
  ),
  (
    "momentum out of range",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.momentum=1.5"],
    1,
    "config.optimizer.momentum=1.5 must be in [0, 1)",
  ),
  (
    "piecewise lengths",
    [
      "train",
      "--config",
      DIGITS,
      "--workdir",
      "{w}",
      "--config.optimizer.piecewise_boundaries=(10,20)",
    ],
    1,
    "config.optimizer.piecewise_scales=(1.0,) must have as many entries as "
    "optimizer.piecewise_boundaries",
  ),
  (
    "unknown model",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.model.name=vgg"],
    1,
    "config.model.name='vgg' is not one of bag_of_embeddings, bert, cnn, llama, ",
  ),
  (
    "unknown nan policy",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.nan_policy=ignore"],
    1,
    "config.nan_policy='ignore' must be one of ('halt', 'skip')",
  ),
  (
    "stop_at_step zero",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--stop_at_step=0"],
    2,
    "--stop_at_step=0 must be > 0",
  ),
  (
    "stop_at_step text",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--stop_at_step=soon"],
    2,
    "--stop_at_step=soon",
  ),
  (
    "dataset path missing",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.dataset.path={t}/nowhere"],
    1,
    "dataset.path={t}/nowhere is not a directory",
  ),
  (
    "dataset path without data",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.dataset.path={t}/empty_dir"],
    1,
    "holds no IDX files",
  ),
  (
    "truncated data file",
    [
      "train",
      "--config",
      DIGITS,
      "--workdir",
      "{w}",
      "--config.dataset.path={t}/truncated_idx",
      "--config.dataset.train_split=test",
      "--config.dataset.eval_split=",
      "--config.dataset.test_split=",
    ],
    1,
    "t10k-images-idx3-ubyte.gz is truncated or padded: header says shape (5, 4, 4)",
  ),
  (
    "unprepared tfds dataset",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.dataset.name=mnist"],
    1,
    "dataset 'mnist' is not prepared in {d}: prepare it there with `tfds build mnist",
  ),
  (
    "unknown split",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.dataset.train_split=validation"],
    1,
    "dataset.train_split='validation' cannot be read from digits (its splits: test, train)",
  ),
  (
    "empty split",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.dataset.eval_split=train[5:5]"],
    1,
    "dataset.eval_split='train[5:5]' is empty",
  ),
  (
    "labels outside num_classes",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.model.num_classes=5"],
    1,
    "dataset digits has labels 0..9 but config.model.num_classes=5",
  ),
  (
    "batch larger than split",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.batch_size=5000"],
    1,
    "batch_size=5000 is larger than the training split (1293 examples)",
  ),
  (
    "workdir under a file",
    ["train", "--config", DIGITS, "--workdir", "{t}/a_file/run"],
    1,
    "workdir {t}/a_file/run is not writable",
  ),
  (
    "inspect an empty dir",
    ["inspect", "{t}/empty_dir"],
    1,
    "{t}/empty_dir/checkpoints holds no checkpoint",
  ),
  (
    "rerun without manifest",
    ["rerun", "{t}/empty_dir", "--into", "{t}/rerun"],
    1,
    "{t}/empty_dir has no manifest.json (not a jaxtrain workdir?)",
  ),
  (
    "import: a bad value",
    [
      "data",
      "import",
      "{t}/bad_value.csv",
      "--name",
      "x",
      "--columns",
      "amount=float",
      "--data_dir",
      "{t}/dd",
    ],
    1,
    "{t}/bad_value.csv line 4, column 'amount': 'abc' is not a number",
  ),
  (
    "import: a declared kind",
    [
      "data",
      "import",
      "{t}/bad_value.csv",
      "--name",
      "x",
      "--columns",
      "city=int",
      "--data_dir",
      "{t}/dd",
    ],
    1,
    "{t}/bad_value.csv line 2, column 'city': 'Oslo' is not an integer (and 2 more bad values)",
  ),
  (
    "import: too many fields",
    ["data", "import", "{t}/bad_fields.csv", "--name", "x", "--data_dir", "{t}/dd"],
    1,
    "{t}/bad_fields.csv line 3: 3 fields, but the header has 2 (amount, label)",
  ),
  (
    "import: broken JSON line",
    ["data", "import", "{t}/bad.jsonl", "--name", "x", "--data_dir", "{t}/dd"],
    1,
    "{t}/bad.jsonl line 2: not a JSON object: Expecting value",
  ),
  (
    "import: pickled npz",
    ["data", "import", "{t}/objects.npz", "--name", "x", "--data_dir", "{t}/dd"],
    1,
    "cannot read {t}/objects.npz as .npz without pickle",
  ),
  (
    "import: unknown file type",
    ["data", "import", "{t}/rows.xlsx", "--name", "x", "--data_dir", "{t}/dd"],
    1,
    "{t}/rows.xlsx: unknown file type '.xlsx'",
  ),
  (
    "import: no label column",
    [
      "data",
      "import",
      "{t}/bad_value.csv",
      "--name",
      "x",
      "--label",
      "target",
      "--data_dir",
      "{t}/dd",
    ],
    1,
    "no column 'target' to use as the label",
  ),
  (
    "import: bad fractions",
    [
      "data",
      "import",
      "jaxtrain/sample_data/spam.csv",
      "--name",
      "x",
      "--fractions",
      "0.5,0.1",
      "--data_dir",
      "{t}/dd",
    ],
    1,
    "--fractions='0.5,0.1' should be three fractions (train, validation, test) summing to 1",
  ),
  (
    "import: bad name",
    [
      "data",
      "import",
      "jaxtrain/sample_data/spam.csv",
      "--name",
      "My Data",
      "--data_dir",
      "{t}/dd",
    ],
    1,
    "--name='My Data' must be lower case letters",
  ),
  (
    "import: missing file",
    ["data", "import", "{t}/nope.csv", "--name", "x", "--data_dir", "{t}/dd"],
    1,
    "data source {t}/nope.csv does not exist",
  ),
  (
    "predict: not a run",
    [
      "predict",
      "--workdir",
      "{t}/empty_dir",
      "--input",
      "{t}/bad_value.csv",
      "--output",
      "{t}/p.csv",
    ],
    1,
    "{t}/empty_dir has no config.json (not a jaxtrain workdir?)",
  ),
  (
    "export: not a run",
    ["export", "--workdir", "{t}/empty_dir"],
    1,
    "{t}/empty_dir has no config.json (not a jaxtrain workdir?)",
  ),
  (
    "init_from missing",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.init_from.workdir={t}/nope"],
    1,
    "init_from.workdir={t}/nope does not exist",
  ),
  (
    "freeze matching nothing",
    ["train", "--config", DIGITS, "--workdir", "{w}", "--config.optimizer.freeze=Encoder"],
    1,
    "config.optimizer.freeze='Encoder' matches no parameter (they are: BatchNorm_0/bias",
  ),
  (
    "early stopping on no metric",
    [
      "train",
      "--config",
      DIGITS,
      "--workdir",
      "{w}",
      "--config.num_train_steps=10",
      "--config.eval_every_steps=5",
      "--config.early_stopping.metric=f2",
    ],
    1,
    "config.early_stopping.metric='f2' is not an eval metric (they are: accuracy, f1, loss",
  ),
]


@pytest.mark.parametrize("name, argv, status, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(
  name, argv, status, text, tmp_path, data_dir, capsys
):
  _files(tmp_path)
  fill = lambda s: s.format(t=tmp_path, w=tmp_path / "w", d=data_dir)
  argv = [fill(a) for a in argv]
  if argv and argv[0] == "train":
    argv.append(f"--config.dataset.data_dir={data_dir}")
  capsys.readouterr()
  assert main(argv) == status
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert fill(text) in err[0]
  assert not (tmp_path / "w" / "checkpoints").exists()
  assert not (tmp_path / "dd").exists() or not any(
    (tmp_path / "dd").glob("x*")
  )  # nothing half-imported


def test_enough_cases():
  assert len(CASES) >= 25


def test_changed_config_on_resume_is_refused_and_nothing_is_overwritten(tmp_path, data_dir, capsys):
  common = [
    "train",
    "--config",
    DIGITS,
    "--workdir",
    str(tmp_path / "w"),
    f"--config.dataset.data_dir={data_dir}",
    "--config.model.name=mlp",
    "--config.num_train_steps=20",
    "--config.checkpoint_every_steps=10",
  ]
  assert main(common) == 0
  config_before = (tmp_path / "w" / "config.json").read_text()
  capsys.readouterr()
  assert main(common + ["--config.optimizer.weight_decay=0.1"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "optimizer.weight_decay: 0.0001 -> 0.1" in err[0]
  assert (tmp_path / "w" / "config.json").read_text() == config_before
  assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir()) == ["10", "20"]
  assert json.loads(config_before)["optimizer"]["weight_decay"] == 0.0001
