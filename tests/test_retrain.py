"""experiments/retrain.py: promote a better model, refuse a worse one, record every decision."""

import importlib.util
import json
import os

from conftest import ROOT

spec = importlib.util.spec_from_file_location("retrain", ROOT / "experiments" / "retrain.py")
retrain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(retrain)


def _retrain(tmp_path, capsys, source, *extra):
  capsys.readouterr()
  argv = [
    "--config",
    "configs/spam.py",
    "--home",
    str(tmp_path / "home"),
    "--source",
    str(source),
    "--data_dir",
    str(tmp_path / "data"),
    *extra,
  ]
  assert retrain.main(argv) == 0, capsys.readouterr().err
  out = capsys.readouterr().out.strip().splitlines()[-1]
  path = out.rsplit("decision record: ", 1)[1].rstrip(")")
  with open(path) as f:
    return json.load(f)


def test_promotes_better_refuses_worse_and_skips_unchanged_data(tmp_path, capsys):
  lines = (ROOT / "jaxtrain" / "sample_data" / "spam.csv").read_text().splitlines(keepends=True)
  (tmp_path / "week1.csv").write_text("".join(lines[:1001]))
  (tmp_path / "week2.csv").write_text("".join(lines))
  (tmp_path / "week3.csv").write_text("".join(lines) + "Free cash prize claim now,spam\n")
  link = tmp_path / "home" / "production"

  # Week 1: no model in production, so the first candidate (an undertrained one) goes in.
  first = _retrain(
    tmp_path,
    capsys,
    tmp_path / "week1.csv",
    "--config.num_train_steps=20",
    "--config.early_stopping.patience=0",
    "--config.eval_every_steps=10",
  )
  assert first["decision"] == "promoted" and first["reason"] == "no model was in production"
  assert os.path.realpath(link) == first["candidate"] and first["dataset"] == "spam:1.0.0"

  # Week 2: more data, a full run warm-started from production: better on the new test split.
  second = _retrain(tmp_path, capsys, tmp_path / "week2.csv")
  assert second["decision"] == "promoted", second
  assert second["candidate_metrics"]["loss"] < second["production_metrics"]["loss"]
  assert (
    second["production"] == first["candidate"] and os.path.realpath(link) == second["candidate"]
  )
  init = json.loads((tmp_path / "home" / "runs" / "spam-1.0.1" / "init_from.json").read_text())
  assert init["source"] == first["candidate"] and init["initialised"] == []

  # Week 3: a candidate that cannot have learned (learning rate 0, no warm start) is refused.
  third = _retrain(
    tmp_path,
    capsys,
    tmp_path / "week3.csv",
    "--no_warm_start",
    "--config.optimizer.learning_rate=0.0",
  )
  assert third["decision"] == "refused" and third["dataset"] == "spam:1.0.2"
  assert third["candidate_metrics"]["loss"] > third["production_metrics"]["loss"]
  assert os.path.realpath(link) == second["candidate"]  # production untouched
  assert third["reason"].startswith("not better by more than 0.0: loss ")

  # The same files again: nothing to do.
  fourth = _retrain(tmp_path, capsys, tmp_path / "week3.csv")
  assert fourth["decision"] == "no new data" and os.path.realpath(link) == second["candidate"]
  assert len(os.listdir(tmp_path / "home" / "decisions")) == 4
