"""Each task, end to end through the CLI from its sample file, against its trivial baseline.

import (jaxtrain data import --config) -> train (jaxtrain train) -> the test
split's metrics from metrics.jsonl, compared with a baseline computed here
from the same imported splits: majority class, the training mean, or
recommending the most popular items. The margin each must beat is stated.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtrain import tasks
from jaxtrain.data import preprocess
from jaxtrain.run import workdir as wd
from jaxtrain.tools.cli import main
from jaxtrain.data.input_pipeline import InMemorySource
from jaxtrain.run.metric_writers import read_metrics


def _run(tmp_path, capsys, config, *overrides):
  dd, workdir = tmp_path / "data", tmp_path / "run"
  name, _, arg = config.partition(":")
  config = f"{name}.py" + (f":{arg}" if arg else "")
  capsys.readouterr()
  assert main(["data", "import", "--config", f"configs/{config}", "--data_dir", str(dd)]) == 0, (
    capsys.readouterr().err
  )
  assert (
    main(
      [
        "train",
        "--config",
        f"configs/{config}",
        "--workdir",
        str(workdir),
        "--quiet",
        f"--config.dataset.data_dir={dd}",
        *overrides,
      ]
    )
    == 0
  )
  test = [e for e in read_metrics(workdir) if e["split"] == "test"]
  assert len(test) == 1
  return test[0], dd, workdir


def _arrays(dd, name, split):
  builder = tfds.builder_from_directory(str(next((dd / name).glob("1.0.*"))))
  return InMemorySource(builder.as_data_source(split)).arrays


@pytest.mark.parametrize("model", ["bag", "transformer"])
def test_spam_classifier_beats_the_majority_class(tmp_path, capsys, model):
  test, dd, workdir = _run(tmp_path, capsys, f"spam:{model}")
  train, held_out = _arrays(dd, "spam", "train"), _arrays(dd, "spam", "test")
  majority = np.mean(held_out["label"] == np.bincount(train["label"]).argmax())
  assert majority == pytest.approx(0.735)
  assert test["accuracy"] >= majority + 0.12, (test, majority)
  assert test["f1"] >= 0.75 and test["roc_auc"] >= 0.9
  # Early stopping kept the best two checkpoints and tested the best.
  best = sorted(int(p.name) for p in (workdir / "best_checkpoints").iterdir() if p.name.isdigit())
  assert 1 <= len(best) <= 2
  # The test applies the threshold its checkpoint's validation chose.
  [chosen] = [
    e for e in read_metrics(workdir) if e["split"] == "eval" and e["step"] == test["step"]
  ]
  assert test["validation_threshold"] == chosen["best_f1_threshold"]
  assert test["f1_at_validation_threshold"] >= 0.75


def test_tabular_classifier_on_real_data_beats_the_majority_class(tmp_path, capsys):
  test, dd, _ = _run(tmp_path, capsys, "breast_cancer")
  train, held_out = _arrays(dd, "breast_cancer", "train"), _arrays(dd, "breast_cancer", "test")
  majority = np.mean(held_out["label"] == np.bincount(train["label"]).argmax())
  assert test["accuracy"] >= majority + 0.25, (test, majority)


@pytest.mark.parametrize(
  "config, name, margin",
  [("diabetes", "diabetes", 0.9), ("demand", "demand", 0.5), ("ratings", "ratings", 0.9)],
)
def test_regression_beats_the_training_mean(tmp_path, capsys, config, name, margin):
  """RMSE at most `margin` x the RMSE of always predicting the training split's mean."""
  test, dd, _ = _run(tmp_path, capsys, config)
  mean = _arrays(dd, name, "train")["label"].astype(np.float64).mean()
  y = _arrays(dd, name, "test")["label"].astype(np.float64)
  baseline_rmse = np.sqrt(np.mean((y - mean) ** 2))
  assert test["rmse"] <= margin * baseline_rmse, (test, baseline_rmse)
  assert test["mae"] < np.mean(np.abs(y - mean))


def test_two_tower_recommender_beats_popularity(tmp_path, capsys):
  """recall@10 at least 1.25x that of recommending the most popular unseen items."""
  test, dd, workdir = _run(tmp_path, capsys, "recommend")
  prep, seen = preprocess.load(wd.preprocess(str(workdir)))
  batch = preprocess.make_transform(prep, train=False, seen=seen)(
    _arrays(dd, "interactions", "test")
  )
  popularity = seen["popularity"].astype(np.float64)
  hits = []
  for item, user_seen in zip(batch["categorical"][:, 1], batch["seen"]):
    scores = popularity.copy()
    scores[0] = scores[user_seen[user_seen >= 0]] = -1  # unknown and already-seen items excluded
    hits.append(item > 0 and np.sum(scores > scores[item]) < 10)
  baseline = np.mean(hits)
  assert baseline > 0.05  # popularity is a real baseline here, not a strawman
  assert test["recall@10"] >= 1.25 * baseline, (test, baseline)
  assert 0 < test["ndcg@10"] <= test["recall@10"]


def test_binary_roc_auc_matches_scikit_learn():
  from sklearn.metrics import roc_auc_score

  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 500)
  logits = np.stack([np.zeros(500), labels * 1.5 + rng.normal(0, 1, 500)], 1).astype(np.float32)
  metrics = tasks.classification_loss_and_counts(logits, {"label": labels}, binary=True)
  means = {k: np.asarray(v, np.float64).mean(0) for k, v in metrics.items()}
  probs = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
  assert tasks.finalize_classification(means)["roc_auc"] == pytest.approx(
    roc_auc_score(labels, probs), abs=2e-3
  )


@pytest.mark.parametrize("separation", [1.5, 8.0])  # 8: a confident model, scores near 0 and 1
def test_roc_auc_pr_auc_and_mcc_match_scikit_learn(separation):
  from sklearn.metrics import average_precision_score, matthews_corrcoef, roc_auc_score

  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 4000)
  margin = (labels * 2 - 1) * separation / 2 + rng.normal(0, 2, 4000)
  logits = np.stack([np.zeros(4000), margin], 1).astype(np.float32)
  means = {
    k: np.asarray(v, np.float64).mean(0)
    for k, v in tasks.classification_loss_and_counts(logits, {"label": labels}, binary=True).items()
  }
  out = tasks.finalize_classification(means)
  probs = 1 / (1 + np.exp(-margin.astype(np.float32)))
  assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-3)
  assert out["pr_auc"] == pytest.approx(average_precision_score(labels, probs), abs=1e-3)
  assert out["mcc"] == pytest.approx(matthews_corrcoef(labels, margin > 0), abs=1e-9)
  if separation > 4:  # the 1,000-bin probability histogram this replaced was off by > 1e-2 here
    assert roc_auc_score(labels, probs) > 0.99


def test_the_f1_threshold_is_chosen_on_validation_and_applied_to_the_test():
  """3% positives: F1 at 0.5 is poor; the validation's F1-best threshold, applied to the
  test split, gives the F1 and MCC scikit-learn computes at that threshold (bin edges)."""
  from sklearn.metrics import f1_score, matthews_corrcoef, precision_recall_curve

  rng = np.random.default_rng(3)

  def split(n):
    labels = (rng.random(n) < 0.03).astype(np.int64)
    margin = labels * 3.0 - 4.5 + rng.normal(0, 1.2, n)
    logits = np.stack([np.zeros(n), margin], 1).astype(np.float32)
    means = {
      k: np.asarray(v, np.float64).mean(0)
      for k, v in tasks.classification_loss_and_counts(
        logits, {"label": labels}, binary=True
      ).items()
    }
    return labels, 1 / (1 + np.exp(-margin.astype(np.float32))), means

  labels_v, probs_v, means_v = split(20_000)
  labels_t, probs_t, means_t = split(20_000)
  validation = tasks.finalize_classification(means_v)
  precision, recall, _ = precision_recall_curve(labels_v, probs_v)
  best_f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
  threshold = validation["best_f1_threshold"]  # F1 is flat near its best: compare F1, not cuts
  assert f1_score(labels_v, probs_v >= threshold) == pytest.approx(best_f1, abs=2e-3)
  test = tasks.finalize_classification(means_t, validation)
  assert test["validation_threshold"] == threshold
  assert test["f1_at_validation_threshold"] == pytest.approx(
    f1_score(labels_t, probs_t >= threshold), abs=1e-3
  )
  assert test["mcc_at_validation_threshold"] == pytest.approx(
    matthews_corrcoef(labels_t, probs_t >= threshold), abs=1e-3
  )
  assert (
    test["f1_at_validation_threshold"] > test["f1"] + 0.1
  )  # the argmax's 0.5 misses most positives
  assert "validation_threshold" not in tasks.finalize_classification(means_t)


def test_multiclass_mcc_matches_scikit_learn():
  from sklearn.metrics import matthews_corrcoef

  rng = np.random.default_rng(2)
  labels = rng.integers(0, 4, 1000)
  logits = rng.normal(0, 1, (1000, 4)).astype(np.float32) + 1.2 * np.eye(4)[labels]
  means = {
    k: np.asarray(v, np.float64).mean(0)
    for k, v in tasks.classification_loss_and_counts(logits, {"label": labels}).items()
  }
  assert tasks.finalize_classification(means)["mcc"] == pytest.approx(
    matthews_corrcoef(labels, logits.argmax(1)), abs=1e-9
  )


def test_mape_skips_zero_labels_and_says_how_many():
  batch = {"label": np.array([10.0, 0.0, 40.0, 0.0], np.float32)}
  outputs = np.array([0.0, 0.0, 0.0, 0.0], np.float32)  # predicts the mean, 20
  metrics = tasks.regression_loss(outputs, batch, mean=20.0, std=10.0)
  out = tasks.finalize_regression({k: float(np.mean(v)) for k, v in metrics.items()})
  assert out["mape"] == pytest.approx((10 / 10 + 20 / 40) / 2)  # over the two non-zero labels
  assert out["mape_zero_labels"] == 0.5


def test_macro_f1_and_class_weights():
  from sklearn.metrics import f1_score

  labels = np.array([0, 0, 1, 2, 2, 2])
  logits = np.eye(3, dtype=np.float32)[[0, 1, 1, 2, 0, 2]] * 5
  metrics = tasks.classification_loss_and_counts(
    logits, {"label": labels}, class_weights=(1.0, 2.0, 0.5)
  )
  means = {k: np.asarray(v, np.float64).mean(0) for k, v in metrics.items()}
  assert tasks.finalize_classification(means)["f1"] == pytest.approx(
    f1_score(labels, logits.argmax(1), average="macro")
  )
  unweighted = tasks.classification_loss_and_counts(logits, {"label": labels})
  np.testing.assert_allclose(
    metrics["loss"], unweighted["loss"] * np.array([1, 1, 2, 0.5, 0.5, 0.5]), rtol=1e-6
  )


def test_image_classifier_from_an_imported_npz(tmp_path, capsys):
  """Images from a user's .npz (here scikit-learn's digits) through the core's CNN."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  np.savez(
    tmp_path / "digits.npz",
    image=np.round(digits.images * 255 / 16).astype(np.uint8)[..., None],
    label=digits.target,
  )
  dd, workdir = tmp_path / "data", tmp_path / "run"
  assert (
    main(
      ["data", "import", str(tmp_path / "digits.npz"), "--name", "my_digits", "--data_dir", str(dd)]
    )
    == 0
  )
  assert (
    main(
      [
        "train",
        "--config",
        "configs/digits.py",
        "--workdir",
        str(workdir),
        "--quiet",
        f"--config.dataset.data_dir={dd}",
        "--config.dataset.name=my_digits",
        "--config.dataset.train_split=train",
        "--config.dataset.eval_split=validation",
        "--config.dataset.test_split=test",
        "--config.num_train_steps=300",
      ]
    )
    == 0
  )
  test = [e for e in read_metrics(workdir) if e["split"] == "test"][0]
  held_out = _arrays(dd, "my_digits", "test")["label"]
  majority = np.mean(held_out == np.bincount(_arrays(dd, "my_digits", "train")["label"]).argmax())
  assert test["accuracy"] >= majority + 0.7, (test, majority)


def test_a_log1p_label_is_learned_in_logs_and_reported_in_its_units():
  from jaxtrain.config import base_config
  from jaxtrain.data import preprocess

  batch = {"label": np.array([0.0, np.e - 1, 3.0], np.float32)}
  outputs = np.array([0.0, 1.0, 0.0], np.float32)  # standardised logs (mean 0, std 1)
  m = tasks.regression_loss(outputs, batch, mean=0.0, std=1.0, transform="log1p")
  np.testing.assert_allclose(m["loss"], [0.0, 0.0, np.log(4.0) ** 2], rtol=1e-6)
  np.testing.assert_allclose(m["mae"], [0.0, 0.0, 3.0], atol=1e-6)  # in the label's units
  prediction = tasks.predict_regression(outputs, batch, mean=0.0, std=1.0, transform="log1p")
  np.testing.assert_allclose(prediction["prediction"], [0.0, np.e - 1, 0.0], rtol=1e-6)
  schema = {"columns": {}, "features": {}, "label": "y", "label_kind": "value"}
  config = base_config()
  config.preprocess.label_transform = "auto"
  counts = {"label": np.array([1, 1, 2, 1, 30], np.float32)}  # never negative, right-skewed
  prep = preprocess.fit(schema, counts, config)
  assert prep["label"]["transform"] == "log1p"
  assert prep["label"]["mean"] == pytest.approx(np.log1p(counts["label"]).mean())
  assert preprocess.task_kwargs(prep)["label_transform"] == "log1p"
  assert (
    preprocess.fit(schema, {"label": np.array([-1, 0, 5], np.float32)}, config)["label"][
      "transform"
    ]
    == "none"
  )


def test_the_old_name_of_the_counting_loss_warns_and_gives_the_same_values():
  logits, labels = jnp.asarray([[2.0, -1.0], [0.5, 1.5]]), jnp.asarray([0, 0])
  with pytest.warns(DeprecationWarning, match="use jaxtrain.tasks.classification_loss_and_counts"):
    old = tasks.classification_loss(logits, {"label": labels}, binary=True)
  new = tasks.classification_loss_and_counts(logits, {"label": labels}, binary=True)
  assert sorted(old) == sorted(new) and all(np.array_equal(old[k], new[k]) for k in new)
