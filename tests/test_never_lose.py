"""Never lose a run, part II: each case found by the adversarial test, run as it was found.

Two writers, every checkpoint unreadable, a flipped byte, a change of shape,
signals in every phase, values that try to become code, paths from files,
two SQLite sweep workers, bad lines and files, bad configs.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint
from jaxtrain.run.loop import train_and_evaluate
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.tools.cli import main

from conftest import ROOT


def _args(workdir, data_dir, steps=60, every=10, *extra):
  return [
    "train",
    "--config",
    "digits",
    "--workdir",
    str(workdir),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    f"--config.num_train_steps={steps}",
    f"--config.checkpoint_every_steps={every}",
    "--config.eval_every_steps=30",
    "--config.log_every_steps=10",
    "--config.model.name=mlp",
    *extra,
  ]


def _spawn(argv, **kw):
  return subprocess.Popen(
    [sys.executable, "-m", "jaxtrain.tools.cli", *argv],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **kw,
  )


def _wait_for(condition, proc=None, seconds=300):
  deadline = time.monotonic() + seconds
  while not condition():
    assert proc is None or proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.monotonic() < deadline
    time.sleep(0.02)


def _digest(workdir):
  return checkpoint.tree_digest(checkpoint.load_arrays(str(workdir))[1])


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """The digest of an uninterrupted 60-step run: what every interrupted one must end with."""
  workdir = tmp_path_factory.mktemp("straight") / "w"
  assert main(_args(workdir, data_dir)) == 0
  return _digest(workdir)


# 1 ------------------------------------------------------------------------------------
def test_1_a_second_writer_is_refused_naming_the_first(data_dir, tmp_path):
  workdir = tmp_path / "w"
  first = _spawn(_args(workdir, data_dir, 300_000, 100))  # long enough to be met (it is stopped)
  _wait_for(lambda: checkpoint.saved_steps(str(workdir)), first)
  second = subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxtrain.tools.cli",
      *_args(workdir, data_dir, 300_000, 100, "--config.optimizer.learning_rate=0.1"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert first.poll() is None, "the first run ended before the second started"
  assert second.returncode == 1
  [line] = second.stderr.strip().splitlines()
  assert line.startswith(
    f"jaxtrain: error: {workdir} is in use by process {first.pid} on {os.uname().nodename} ("
  )
  assert line.endswith(
    "one run writes a workdir at a time; wait for it, stop it, or use another workdir"
  )
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=300) == 75
  events = [(e["step"], e["split"]) for e in read_metrics(str(workdir))]
  assert len(events) == len(set(events))  # one history
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] != 0.1


def test_1_a_killed_writers_lock_is_free(data_dir, tmp_path, straight):
  workdir = tmp_path / "w"
  proc = _spawn(_args(workdir, data_dir))
  _wait_for(lambda: checkpoint.saved_steps(str(workdir)), proc)
  proc.kill()
  proc.wait()
  assert main(_args(workdir, data_dir)) == 0  # the kernel released the dead holder's lock
  assert _digest(workdir) == straight


# 2 and 3 ---------------------------------------------------------------------------------
def _flip_a_byte(step_dir: Path):
  data = max(
    (step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size
  )
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x01
  data.write_bytes(bytes(raw))


def test_2_no_usable_checkpoint_is_refused_and_start_over_is_clean(
  data_dir, tmp_path, capsys, straight
):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 60, 10, "--stop_at_step=30")) == 0
  for step in checkpoint.saved_steps(str(workdir)):  # every state damaged, the data positions fine
    _flip_a_byte(workdir / "checkpoints" / str(step))
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  capsys.readouterr()
  assert main(_args(workdir, data_dir)) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "is usable" in err[0] and "pass --start_over" in err[0]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before  # nothing moved
  assert main(_args(workdir, data_dir, 60, 10, "--start_over")) == 0
  [abandoned] = (workdir / "abandoned").iterdir()
  assert sorted(
    p.name for p in (abandoned / "checkpoints").iterdir() if p.name.isdigit()
  ) == sorted(b for b in before if b.isdigit())
  assert _digest(workdir) == straight  # step 0, a fresh data position: the uninterrupted bits
  assert [e["step"] for e in read_metrics(str(workdir)) if e["split"] == "train"] == [
    10,
    20,
    30,
    40,
    50,
    60,
  ]
  assert main(_args(workdir, data_dir, 60, 10, "--start_over")) == 1  # its checkpoints are usable


def test_3_a_flipped_byte_is_found_and_never_trained_on(data_dir, tmp_path, capsys, straight):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 60, 10, "--stop_at_step=40")) == 0
  _flip_a_byte(workdir / "checkpoints" / "40")
  capsys.readouterr()
  assert main(["inspect", str(workdir), "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["latest_step"] == 30 and "checksum of" in report["bad_checkpoints"]["40"]
  assert main(_args(workdir, data_dir)) == 0  # falls back to step 30, sets 40 aside
  assert (workdir / "corrupt_checkpoints" / "40").is_dir()
  assert _digest(workdir) == straight
  events = [(e["step"], e["split"]) for e in read_metrics(str(workdir))]
  assert len(events) == len(set(events))  # the steps after 30 have one history


# 4 ---------------------------------------------------------------------------------------
def test_4_a_change_of_shape_is_refused_even_when_changes_are_allowed(data_dir, tmp_path, capsys):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 60, 10, "--stop_at_step=20")) == 0
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  capsys.readouterr()
  assert (
    main(_args(workdir, data_dir, 60, 10, "--config.model.num_classes=12", "--allow_config_change"))
    == 1
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "holds checkpoints of other shapes" in err[0]
  assert "params/Dense_2/bias: ((10,), 'float32') -> ((12,), 'float32')" in err[0]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  assert not (workdir / "corrupt_checkpoints").exists()
  assert main(_args(workdir, data_dir)) == 0  # the old config still resumes


# 5 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_5_a_signal_at_start_up_gives_75_and_nothing_lost(data_dir, tmp_path, sig, straight):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 60, 10, "--stop_at_step=20")) == 0
  proc = _spawn(_args(workdir, data_dir))
  _wait_for(
    lambda: (
      (workdir / ".lock").exists()
      and json.loads((workdir / ".lock").read_text() or "{}").get("pid") == proc.pid
    ),
    proc,
  )  # setting up
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  assert checkpoint.saved_steps(str(workdir))[-1] == 20
  assert main(_args(workdir, data_dir)) == 0
  assert _digest(workdir) == straight


def _signal_self_during(monkeypatch, module, name):
  """Makes `module.name` send this process SIGTERM as it starts: a signal in that phase."""
  real = getattr(module, name)

  def wrapped(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

  monkeypatch.setattr(module, name, wrapped)


def test_5_a_signal_in_the_final_test_gives_75_and_the_test_runs_on_resume(
  data_dir, tmp_path, monkeypatch, straight
):
  from jaxtrain.run import loop

  workdir = tmp_path / "w"
  argv = _args(workdir, data_dir, 60, 10, "--config.dataset.test_split=test")
  with monkeypatch.context() as m:
    _signal_self_during(m, loop, "finish")
    assert main(argv) == 75
  assert checkpoint.saved_steps(str(workdir))[-1] == 60
  assert not [e for e in read_metrics(str(workdir)) if e["split"] == "test"]
  assert main(argv) == 0
  assert [e["step"] for e in read_metrics(str(workdir)) if e["split"] == "test"] == [60]
  assert _digest(workdir) == straight


def test_5_a_signal_in_the_final_save_lets_it_finish_then_gives_75(
  data_dir, tmp_path, monkeypatch, straight
):
  workdir = tmp_path / "w"
  with monkeypatch.context() as m:
    _signal_self_during(m, checkpoint, "finish_saves")
    assert main(_args(workdir, data_dir)) == 75
  assert not list((workdir / "checkpoints").glob("*orbax-checkpoint-tmp*"))
  assert checkpoint.saved_steps(str(workdir))[-1] == 60 and _digest(workdir) == straight
  assert main(_args(workdir, data_dir)) == 0


def test_5_a_preempted_sweep_trial_is_retried_and_resumes(data_dir, tmp_path):
  from jaxtrain.tools import sweep

  sweep_dir = tmp_path / "sweep"
  argv = [
    "sweep",
    "--config",
    "digits",
    "--space",
    "digits_lr_wd",
    "--trials",
    "2",
    "--workdir",
    str(sweep_dir),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    "--config.num_train_steps=40",
    "--config.checkpoint_every_steps=10",
    "--config.eval_every_steps=20",
    "--config.model.name=mlp",
    "--config.dataset.test_split=",
  ]
  proc = _spawn(argv)
  first = sweep_dir / "trials" / "0"
  _wait_for(lambda: first.is_dir() and checkpoint.saved_steps(str(first)), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  resumed_from = checkpoint.saved_steps(str(first))[-1]
  assert main(argv) == 0
  trials = sweep.summary(str(sweep_dir))["trials"]
  assert sorted(t["state"] for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
  retried = [t for t in trials if t["state"] == "COMPLETE" and t["workdir"] == "trials/0"]
  assert len(retried) == 1  # the same parameters, in the same workdir, resumed
  assert [t for t in trials if t["number"] == 0][0]["params"] == retried[0]["params"]
  train_steps = [e["step"] for e in read_metrics(str(first)) if e["split"] == "train"]
  assert train_steps == sorted(set(train_steps)) and resumed_from > 0


# 6 ---------------------------------------------------------------------------------------
def test_6_no_value_escapes_best_config_py(tmp_path):
  from jaxtrain.tools import sweep

  marker = tmp_path / "pwned"
  evil = f"x''')\nopen({str(marker)!r}, 'w').write('1')\n('''"
  (tmp_path / "sweep.json").write_text(json.dumps({"config_dir": None}))
  (tmp_path / "trials" / "0").mkdir(parents=True)
  from conftest import load_config

  config = load_config("digits")
  config.dataset.train_split = evil
  (tmp_path / "trials" / "0" / "config.json").write_text(config.to_json_best_effort())
  path = sweep.write_best_config(
    str(tmp_path),
    {"number": 0, "value": 1.0, "workdir": "trials/0", "params": {"optimizer.name": evil}},
  )
  import importlib.util

  spec = importlib.util.spec_from_file_location("best", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert not marker.exists() and module.get_config().dataset.train_split == evil


# 7 ---------------------------------------------------------------------------------------
def test_7_a_crafted_manifest_writes_nowhere_it_names(data_dir, tmp_path, capsys):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 20)) == 0
  record = json.loads((workdir / "manifest.json").read_text())
  record["config"]["dataset"]["data_dir"] = str(tmp_path / "elsewhere")
  (workdir / "manifest.json").write_text(json.dumps(record))
  config = json.loads((workdir / "config.json").read_text())
  config["dataset"]["data_dir"] = str(tmp_path / "elsewhere2")
  (workdir / "config.json").write_text(json.dumps(config))
  assert (
    main(["rerun", str(workdir), "--into", str(tmp_path / "again"), "--data_dir", data_dir]) == 0
  )
  np.savez(tmp_path / "rows.npz", image=np.zeros((2, 8, 8, 1), np.uint8))
  assert (
    main(
      [
        "predict",
        "--workdir",
        str(workdir),
        "--input",
        str(tmp_path / "rows.npz"),
        "--output",
        str(tmp_path / "p.csv"),
      ]
    )
    == 1
  )  # its data_dir holds nothing: refused
  assert "not prepared" in capsys.readouterr().err
  assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "elsewhere2").exists()


def test_7_an_import_refuses_links_out_of_its_folder(tmp_path, capsys):
  outside = tmp_path / "outside"
  outside.mkdir()
  (outside / "secret.txt").write_text("not yours")
  pets = tmp_path / "pets"
  (pets / "cat").mkdir(parents=True)
  (pets / "cat" / "a.txt").write_text("meow meow")
  (pets / "dog").mkdir()
  (pets / "dog" / "b.txt").symlink_to(outside / "secret.txt")
  (pets / "etc").symlink_to(outside)
  assert (
    main(["data", "import", str(pets), "--name", "pets", "--data_dir", str(tmp_path / "dd")]) == 1
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "links to" in err[0] and f"outside {pets}" in err[0]
  assert not (tmp_path / "dd" / "pets").exists()


# 8 ---------------------------------------------------------------------------------------
def test_8_two_sqlite_workers_share_a_study_exactly(data_dir, tmp_path):
  from jaxtrain.tools import sweep

  sweep_dir = tmp_path / "sweep"
  argv = [
    "sweep",
    "--config",
    "digits",
    "--space",
    "digits_lr_wd",
    "--trials",
    "4",
    "--workdir",
    str(sweep_dir),
    "--quiet",
    f"--config.dataset.data_dir={data_dir}",
    "--config.num_train_steps=20",
    "--config.eval_every_steps=20",
    "--config.model.name=mlp",
    "--config.dataset.test_split=",
    "--pruner",
    "none",
  ]
  workers = [_spawn(argv) for _ in range(2)]  # started together: the race over table creation
  for w in workers:
    _, err = w.communicate(timeout=600)
    assert w.returncode == 0, err[-2000:]
  trials = sweep.summary(str(sweep_dir))["trials"]
  assert [t["state"] for t in trials] == ["COMPLETE"] * 4  # exactly --trials
  points = [tuple(sorted(t["params"].items())) for t in trials]
  assert len(set(points)) == 4  # no point proposed twice


# 9 ---------------------------------------------------------------------------------------
def test_9_bad_lines_and_damaged_records_are_one_line_or_passed_over(data_dir, tmp_path, capsys):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 60, 10, "--stop_at_step=30")) == 0
  with open(workdir / "metrics.jsonl", "ab") as f:
    f.write(b"\xff\xfe not utf-8\n[1, 2]\n{\"no\": \"step\"}\n")
  capsys.readouterr()
  assert main(["inspect", str(workdir)]) == 0
  assert main(["report", str(workdir), "--out", str(tmp_path / "r")]) == 0
  manifest = (workdir / "manifest.json").read_text()
  (workdir / "manifest.json").write_text("{}")
  capsys.readouterr()
  assert main(_args(workdir, data_dir)) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "manifest.json is not a jaxtrain manifest" in err[0]
  (workdir / "manifest.json").write_text(manifest)
  (workdir / "config.json").write_text("garbage{")
  assert main(_args(workdir, data_dir)) == 1
  assert "config.json is not valid JSON" in capsys.readouterr().err
  (workdir / "config.json").unlink()  # then a changed config is judged by the manifest's
  assert main(_args(workdir, data_dir, 90)) == 1
  assert "num_train_steps: 60 -> 90" in capsys.readouterr().err
  assert main(_args(workdir, data_dir)) == 0  # and the run resumes


# 10 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "name, content, text",
  [
    # 'nan' is a missing number now (imputed); a missing label is still refused
    ("nan.csv", b"x,label\n1.5,a\nnan,b\n2.0,\n", "nan.csv line 4, column 'label': missing value"),
    ("dup.csv", b"x,x,label\n1,2,a\n", "the header names 'x' more than once"),
    ("empty.csv", b"x,,label\n1,2,a\n", "column 2 of the header has no name"),
    ("latin.csv", "x,label\n1,caf\u00e9\n".encode("latin-1"), "latin.csv is not UTF-8 text"),
    # (a 200 KB field is a long text now, read whole: Python's csv module refused it)
    ("header.csv", b"x,label\n", "header.csv: no rows"),
  ],
)
def test_10_bad_import_files_are_one_line(tmp_path, capsys, name, content, text):
  (tmp_path / name).write_bytes(content)
  capsys.readouterr()
  assert (
    main(
      ["data", "import", str(tmp_path / name), "--name", "t", "--data_dir", str(tmp_path / "dd")]
    )
    == 1
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and text in err[0], err
  assert not (tmp_path / "dd" / "t").exists()


def test_10_a_bom_and_stray_files_are_handled(tmp_path, capsys):
  (tmp_path / "bom.csv").write_bytes(
    b"\xef\xbb\xbfx,label\n" + b"".join(f"{i},{'ab'[i % 2]}\n".encode() for i in range(40))
  )
  assert (
    main(
      [
        "data",
        "import",
        str(tmp_path / "bom.csv"),
        "--name",
        "bom",
        "--data_dir",
        str(tmp_path / "dd"),
      ]
    )
    == 0
  )
  assert json.loads(next((tmp_path / "dd" / "bom").glob("1.0.*/schema.json")).read_text())[
    "columns"
  ] == {"x": "int"}  # the column is "x", not "\ufeffx"
  from PIL import Image

  for cls in ("a", "b"):
    (tmp_path / "imgs" / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(np.full((4, 4), i * 40 + (cls == "b") * 100, np.uint8)).save(
        tmp_path / "imgs" / cls / f"{i}.png"
      )
  (tmp_path / "imgs" / "a" / ".DS_Store").write_bytes(b"\x00\x01")
  (tmp_path / "imgs" / "README.txt").write_text("photos of a and b")
  assert (
    main(
      [
        "data",
        "import",
        str(tmp_path / "imgs"),
        "--name",
        "imgs",
        "--data_dir",
        str(tmp_path / "dd"),
      ]
    )
    == 0
  )  # hidden files and files beside the classes skipped
  (tmp_path / "imgs" / "b" / "notes.txt").write_text("taken in 2025")
  capsys.readouterr()
  assert (
    main(
      [
        "data",
        "import",
        str(tmp_path / "imgs"),
        "--name",
        "imgs2",
        "--data_dir",
        str(tmp_path / "dd"),
      ]
    )
    == 1
  )
  assert "notes.txt is not an image (.txt), but" in capsys.readouterr().err
  np.savez(tmp_path / "scalar.npz", image=np.zeros((3, 2)), label=np.int64(1))
  assert (
    main(
      [
        "data",
        "import",
        str(tmp_path / "scalar.npz"),
        "--name",
        "s",
        "--data_dir",
        str(tmp_path / "dd"),
      ]
    )
    == 1
  )
  assert "arrays label hold one value" in capsys.readouterr().err
  (tmp_path / "idx").mkdir()
  (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
  (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
  with pytest.raises(UserError, match="cannot read IDX file .*t10k-"):
    from jaxtrain.config import base_config

    c = base_config().dataset
    c.update(path=str(tmp_path / "idx"), data_dir=str(tmp_path / "dd"))
    from jaxtrain.data import datasets

    datasets.get_builder(c)


# 11 --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "body, text",
  [
    (
      "def get_config():\n  raise RuntimeError('boom')\n",
      "its get_config() raised RuntimeError: boom",
    ),
    (
      "def get_config():\n  return {'seed': 1}\n",
      "get_config() returned dict, not the ml_collections",
    ),
    ("def get_config():\n  return None\n", "get_config() returned NoneType"),
    (
      "def get_config(x):\n  return None\n",
      "its get_config() failed: TypeError: get_config() missing",
    ),
    (
      "import ml_collections\ndef get_config():\n  c = ml_collections.ConfigDict()\n  c.seed = 1\n"
      "  return c\n",
      "must start from jaxtrain.config.base_config(); its config lacks",
    ),
  ],
)
def test_11_config_files_that_are_not_configs_are_one_line(tmp_path, capsys, body, text):
  (tmp_path / "c.py").write_text(body)
  capsys.readouterr()
  assert main(["train", "--config", str(tmp_path / "c.py"), "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and text in err[0], err
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "override, text",
  [
    ("--config.optimizer.eps=inf", "config.optimizer.eps=inf must be finite and > 0"),
    ("--config.optimizer.end_lr_factor=nan", "config.optimizer.end_lr_factor=nan must be finite"),
    ("--config.seed=18446744073709551616", "must be in [0, 2**32)"),
    ("--config.model.dropout_rate=2.0", "config.model.dropout_rate=2.0 must be in [0, 1)"),
    ("--config.model.dropout_rate=-0.5", "config.model.dropout_rate=-0.5 must be in [0, 1)"),
    ("--config.model.num_classes=200000000", "parameters ("),
    ("--config.optimizer.accumulate_steps=5000", "accumulate_steps=5000 is more than the run's"),
    ("--config.optimizer.piecewise_boundaries=(10,5)", "must be steps >= 0 in increasing order"),
  ],
)
def test_11_config_values_are_checked_before_anything_runs(
  tmp_path, data_dir, capsys, override, text
):
  capsys.readouterr()
  assert (
    main(
      [
        "train",
        "--config",
        "digits",
        "--workdir",
        str(tmp_path / "w"),
        f"--config.dataset.data_dir={data_dir}",
        override,
      ]
    )
    == 1
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and text in err[0], err
  assert not (tmp_path / "w").exists()


def test_11_predict_output_must_be_a_new_file_in_an_existing_folder(data_dir, tmp_path, capsys):
  workdir = tmp_path / "w"
  assert main(_args(workdir, data_dir, 10)) == 0
  np.savez(tmp_path / "rows.npz", image=np.zeros((2, 8, 8, 1), np.uint8))
  capsys.readouterr()
  for output, text in (
    (tmp_path / "missing" / "p.csv", "does not exist"),
    (tmp_path / "rows.npz", "is the input file"),
  ):
    assert (
      main(
        [
          "predict",
          "--workdir",
          str(workdir),
          "--input",
          str(tmp_path / "rows.npz"),
          "--output",
          str(output),
        ]
      )
      == 1
    )
    assert text in capsys.readouterr().err
  assert np.load(tmp_path / "rows.npz")["image"].shape == (2, 8, 8, 1)


# 12 --------------------------------------------------------------------------------------
def _one_line(capsys, *argv):
  """(exit code, stderr's lines) of a command."""
  capsys.readouterr()
  code = main(list(argv))
  return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def kept_best(data_dir, tmp_path_factory):
  """A finished 60-step run that keeps its 2 best checkpoints (evaluated at 20, 40, 60)."""
  workdir = tmp_path_factory.mktemp("best") / "w"
  assert (
    main(
      _args(
        workdir,
        data_dir,
        60,
        20,
        "--config.eval_every_steps=20",
        "--config.early_stopping.metric=loss",
        "--config.keep_best_checkpoints=2",
      )
    )
    == 0
  )
  return workdir


@pytest.mark.parametrize("retention", ["best_checkpoints", "checkpoints"])
def test_12_a_flipped_byte_is_refused_by_every_reader_naming_step_and_array(
  kept_best, data_dir, tmp_path, capsys, retention
):
  """export, export --best/--newest, predict, init_from and inspect read both retention sets
  verified: a rotten checkpoint is never used silently, and nothing on disk is touched."""
  workdir = tmp_path / "w"
  import shutil

  shutil.copytree(kept_best, workdir)
  best = retention == "best_checkpoints"
  step = (
    json.loads((workdir / "best_checkpoints" / "best.json").read_text())["best_step"]
    if best
    else checkpoint.saved_steps(str(workdir))[-1]
  )
  _flip_a_byte(workdir / retention / str(step))
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
  np.savez(tmp_path / "rows.npz", image=np.zeros((2, 8, 8, 1), np.uint8))
  which = "--best" if best else "--newest"
  refused = [
    ("export", "--workdir", str(workdir), "--output", str(tmp_path / "e1"), which),
    (
      "predict",
      "--workdir",
      str(workdir),
      "--input",
      str(tmp_path / "rows.npz"),
      "--output",
      str(tmp_path / "p1.csv"),
      which,
    ),
  ]
  if best:  # by default both read the best: the checkpoint the test measured
    refused += [
      ("export", "--workdir", str(workdir), "--output", str(tmp_path / "e2")),
      (
        "predict",
        "--workdir",
        str(workdir),
        "--input",
        str(tmp_path / "rows.npz"),
        "--output",
        str(tmp_path / "p2.csv"),
      ),
    ]
  refused.append(
    tuple(
      _args(
        tmp_path / "tuned",
        data_dir,
        20,
        10,
        f"--config.init_from.workdir={workdir}",
        f"--config.init_from.best={best}",
      )
    )
  )
  for argv in refused:
    code, err = _one_line(capsys, *argv)
    assert code == 1 and len(err) == 1, (argv, err)
    assert f"the checkpoint of step {step} in {workdir / retention} is unusable" in err[0], err
    assert re.search(r"checksum of (params|opt_state)/\S+ ", err[0]), err  # the array named
  assert not (tmp_path / "e1").exists() and not (tmp_path / "p1.csv").exists()
  assert not (tmp_path / "tuned").exists()
  # init_from.checkpoint, a path to any Orbax pytree: a jaxtrain item is verified too.
  item = workdir / retention / str(step) / "state"
  code, err = _one_line(
    capsys, *_args(tmp_path / "tuned", data_dir, 20, 10, f"--config.init_from.checkpoint={item}")
  )
  assert code == 1 and len(err) == 1, err
  assert f"init_from: cannot read {item}: Unusable: checksum of " in err[0], err
  assert not (tmp_path / "tuned").exists()
  # The other set is intact and still serves.
  other = "--newest" if best else "--best"
  code, err = _one_line(
    capsys, "export", "--workdir", str(workdir), "--output", str(tmp_path / "e3"), other
  )
  assert code == 0 and (tmp_path / "e3" / "model.jaxexport").is_file(), err
  # inspect names it in one line and reads the newest checkpoint that verifies.
  capsys.readouterr()
  assert main(["inspect", str(workdir), "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  bad = report["bad_best_checkpoints" if best else "bad_checkpoints"]
  assert list(bad) == [str(step)] and re.search(r"checksum of (params|opt_state)/", bad[str(step)])
  assert report["bad_checkpoints" if best else "bad_best_checkpoints"] == {}
  assert report["latest_step"] == (60 if best else checkpoint.saved_steps(str(workdir))[-2])
  assert main(["inspect", str(workdir)]) == 0
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("bad ")]
  assert lines == [
    f"bad {'best ' if best else ''}checkpoint {step}"
    f"{f' ({workdir / retention})' if best else ''}: {bad[str(step)]}"
  ]
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file()) == before


# 13 --------------------------------------------------------------------------------------
def _scalars(logdir) -> dict[str, list[int]]:
  """{tag: steps} of the event files in `logdir`, read by TensorBoard's own reader with its
  purging off, so that a second history of the same steps would show."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(logdir), purge_orphaned_data=False)
  events.Reload()
  return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_13_tensorboard_shows_one_history_after_kill_9_and_resume(data_dir, tmp_path):
  workdir = tmp_path / "w"
  proc = _spawn(_args(workdir, data_dir, 300_000, 100))

  def trained_past_a_checkpoint():
    steps = checkpoint.saved_steps(str(workdir))
    events = [e["step"] for e in read_metrics(str(workdir)) if e["split"] == "train"]
    return bool(steps) and bool(events) and events[-1] >= steps[-1] + 40

  _wait_for(trained_past_a_checkpoint, proc)
  proc.kill()
  proc.wait()
  resumed_at = checkpoint.saved_steps(str(workdir))[-1]
  retrained = [e for e in read_metrics(str(workdir)) if e["step"] > resumed_at]
  assert retrained, "the killed run logged nothing past its last checkpoint"
  assert _scalars(workdir / "tensorboard")["train/loss"][-1] > resumed_at  # to be trained again
  assert main(_args(workdir, data_dir, 300_000, 100, f"--stop_at_step={resumed_at + 100}")) == 0
  after = _scalars(workdir / "tensorboard")
  logged = {}
  for e in read_metrics(str(workdir)):
    for k, v in e.items():
      if k not in ("step", "split", "time") and isinstance(v, (int, float)):
        logged.setdefault(f"{e['split']}/{k}", []).append(e["step"])
  assert after == logged  # exactly one value per step, the same steps as metrics.jsonl
  assert after["train/loss"] == list(range(10, resumed_at + 101, 10))
  assert all(steps == sorted(set(steps)) for steps in after.values())
  abandoned = [
    json.loads(line) for line in (workdir / "metrics.abandoned.jsonl").read_text().splitlines()
  ]
  assert [(e["step"], e["split"]) for e in abandoned] == [
    (e["step"], e["split"]) for e in retrained
  ]


def test_12_a_rotten_best_checkpoint_is_passed_over_by_the_test_in_one_warning(
  data_dir, tmp_path, capsys
):
  """The test measures the best intact checkpoint: mode=max on the loss makes the earliest
  evaluation the best, so the run's own later checkpoints cannot hide the rotten one."""
  workdir = tmp_path / "w"
  best = (
    "--config.eval_every_steps=20",
    "--config.early_stopping.metric=loss",
    "--config.early_stopping.mode=max",
    "--config.keep_best_checkpoints=2",
  )
  assert main(_args(workdir, data_dir, 60, 20, "--stop_at_step=40", *best)) == 0
  assert json.loads((workdir / "best_checkpoints" / "best.json").read_text())["kept_steps"] == [
    20,
    40,
  ]
  _flip_a_byte(workdir / "best_checkpoints" / "20")
  capsys.readouterr()
  assert main(_args(workdir, data_dir, 60, 20, *best)) == 0
  out = capsys.readouterr().out
  [warning] = [l for l in out.splitlines() if "is unusable" in l]
  assert "best checkpoint at step 20 is unusable (Unusable: checksum of " in warning
  assert warning.endswith("passing over it")
  assert "testing the best checkpoint (step 40)" in out
  assert [e["step"] for e in read_metrics(str(workdir)) if e["split"] == "test"] == [40]
  assert sorted(p.name for p in (workdir / "best_checkpoints").iterdir() if p.name.isdigit()) == [
    "20",
    "40",
  ]
