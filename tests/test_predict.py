"""`jaxtrain predict` and `jaxtrain export` give what evaluation measured, on the same rows."""

import csv
import datetime as dt
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtrain.tools import predict
from jaxtrain.data import preprocess
from jaxtrain.run import workdir as wd
from jaxtrain.tools.cli import main
from jaxtrain.data.input_pipeline import InMemorySource
from jaxtrain.run.metric_writers import read_metrics


def _train(tmp_path, capsys, config, *overrides):
  dd, workdir = tmp_path / "data", tmp_path / "run"
  assert main(["data", "import", "--config", f"configs/{config}.py", "--data_dir", str(dd)]) == 0
  assert (
    main(
      [
        "train",
        "--config",
        f"configs/{config}.py",
        "--workdir",
        str(workdir),
        "--quiet",
        f"--config.dataset.data_dir={dd}",
        *overrides,
      ]
    )
    == 0
  )
  capsys.readouterr()
  test = [e for e in read_metrics(workdir) if e["split"] == "test"][0]
  return dd, workdir, test


def _test_rows(dd, name):
  builder = tfds.builder_from_directory(str(next((dd / name).glob("1.0.*"))))
  return InMemorySource(builder.as_data_source("test")).arrays


def _write(path, columns):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values()))


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _exported_outputs(workdir, out, rows):
  """The exported artifact called on the run's own preprocessing of `rows`."""
  best = ["--best"] if (workdir / "best_checkpoints").exists() else []
  assert main(["export", "--workdir", str(workdir), "--output", str(out), *best]) == 0
  prep, seen = preprocess.load(wd.preprocess(str(workdir)))
  batch = preprocess.make_transform(prep, train=False, seen=seen)(rows)
  batch.pop("label", None)
  outputs = {k: np.asarray(v) for k, v in predict.load_exported(str(out))(batch).items()}
  if best:  # the default is the same checkpoint, and a relative workdir works
    again = str(out) + "-default"
    assert main(["export", "--workdir", os.path.relpath(workdir), "--output", again]) == 0
    for k, v in predict.load_exported(again)(batch).items():
      np.testing.assert_array_equal(np.asarray(v), outputs[k])
  return outputs


def test_classifier_predictions_and_export_reproduce_the_test_metrics(
  tmp_path, capsys, monkeypatch
):
  dd, workdir, test = _train(tmp_path, capsys, "spam")
  rows = _test_rows(dd, "spam")
  _write(
    tmp_path / "test.csv",
    {
      "text": [t.decode() for t in rows["text"]],
      "label": [["ham", "spam"][i] for i in rows["label"]],
    },
  )
  # As the README shows it: a relative workdir, and by default the checkpoint the test
  # metrics came from (this early-stopped run's best, not its newest).
  monkeypatch.chdir(tmp_path)
  assert (
    main(
      [
        "predict",
        "--workdir",
        "run",
        "--input",
        "test.csv",
        "--output",
        "preds.csv",
        "--batch_size",
        "48",
      ]
    )
    == 0
  )
  best_step = json.loads((workdir / "best_checkpoints" / "best.json").read_text())["best_step"]
  assert (
    capsys.readouterr().out.strip() == f"wrote 200 predictions of step {best_step} to preds.csv"
  )
  assert (
    main(
      ["predict", "--workdir", "run", "--input", "test.csv", "--output", "newest.csv", "--newest"]
    )
    == 0
  )
  newest = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert newest > best_step and f"of step {newest} " in capsys.readouterr().out
  preds = _read(tmp_path / "preds.csv")
  assert len(preds) == test["num_examples"] == len(rows["label"])
  probs = np.array([[float(p["prob_ham"]), float(p["prob_spam"])] for p in preds])
  labels = np.array([p["label"] == "spam" for p in preds], int)
  # Accuracy exactly, the class-weighted loss to float32 rounding, ROC-AUC to its binning.
  assert np.mean(probs.argmax(1) == labels) == test["accuracy"]
  weights = np.array(preprocess.load(wd.preprocess(str(workdir)))[0]["label"]["class_weights"])[
    labels
  ]
  loss = np.mean(-np.log(probs[np.arange(len(labels)), labels]) * weights)
  assert loss == pytest.approx(test["loss"], rel=1e-4)
  from sklearn.metrics import roc_auc_score

  assert roc_auc_score(labels, probs[:, 1]) == pytest.approx(test["roc_auc"], abs=5e-3)
  assert [p["predicted"] for p in preds] == [["ham", "spam"][i] for i in probs.argmax(1)]
  # The class at the threshold the checkpoint's validation chose: the test's F1 at it.
  from sklearn.metrics import f1_score

  at_threshold = np.array([p["predicted_at_threshold"] == "spam" for p in preds], int)
  assert at_threshold.tolist() == (probs[:, 1] >= test["validation_threshold"]).astype(int).tolist()
  assert f1_score(labels, at_threshold) == pytest.approx(
    test["f1_at_validation_threshold"], abs=5e-3
  )

  exported = _exported_outputs(workdir, tmp_path / "export", rows)
  np.testing.assert_allclose(exported["probabilities"], probs, rtol=1e-5, atol=1e-7)


def test_forecast_predictions_and_export_reproduce_the_test_metrics(tmp_path, capsys):
  dd, workdir, test = _train(tmp_path, capsys, "demand", "--config.num_train_steps=300")
  rows = _test_rows(dd, "demand")
  day = lambda s: dt.datetime.fromtimestamp(int(s), dt.timezone.utc).date().isoformat()
  _write(
    tmp_path / "test.csv",
    {
      "store": [s.decode() for s in rows["store"]],
      "date": [day(s) for s in rows["date"]],
      "temperature": [repr(float(x)) for x in rows["temperature"]],
      "promo": rows["promo"].tolist(),
      "demand_lag_1": [repr(float(x)) for x in rows["demand_lag_1"]],
      "demand_lag_7": [repr(float(x)) for x in rows["demand_lag_7"]],
      "demand": [repr(float(x)) for x in rows["label"]],
    },
  )
  assert (
    main(
      [
        "predict",
        "--workdir",
        str(workdir),
        "--input",
        str(tmp_path / "test.csv"),
        "--output",
        str(tmp_path / "preds.csv"),
      ]
    )
    == 0
  )
  preds = _read(tmp_path / "preds.csv")
  prediction = np.array([float(p["prediction"]) for p in preds])
  y = np.array([float(p["label"]) for p in preds])
  assert np.mean(np.abs(prediction - y)) == pytest.approx(test["mae"], rel=1e-4)
  assert np.sqrt(np.mean((prediction - y) ** 2)) == pytest.approx(test["rmse"], rel=1e-4)
  exported = _exported_outputs(workdir, tmp_path / "export", rows)
  np.testing.assert_allclose(exported["prediction"], prediction, rtol=1e-5)


def test_recommendations_exclude_what_the_user_has_seen(tmp_path, capsys):
  dd, workdir, _ = _train(tmp_path, capsys, "recommend", "--config.num_train_steps=200")
  prep, seen = preprocess.load(wd.preprocess(str(workdir)))
  users = prep["categorical"][0]["vocab"][:20]
  _write(tmp_path / "users.csv", {"user": users})
  assert (
    main(
      [
        "predict",
        "--workdir",
        str(workdir),
        "--input",
        str(tmp_path / "users.csv"),
        "--output",
        str(tmp_path / "top.csv"),
      ]
    )
    == 0
  )
  items = prep["categorical"][1]["vocab"]
  for user, row in zip(users, _read(tmp_path / "top.csv")):
    u = prep["categorical"][0]["vocab"].index(user) + 1
    already = {items[i - 1] for i in seen["items"][seen["offsets"][u] : seen["offsets"][u + 1]]}
    top = row["items"].split()
    scores = [float(s) for s in row["scores"].split()]
    assert len(top) == len(set(top)) == 10 and not already & set(top)
    assert scores == sorted(scores, reverse=True)
