"""Preprocessing: fitted on the training split alone, applied the same way everywhere."""

import numpy as np
import pytest

from jaxtrain import tasks
from jaxtrain.run.inputs import build_task
from jaxtrain.data import preprocess
from jaxtrain.config import base_config
from jaxtrain.errors import UserError

SCHEMA = {
  "columns": {"amount": "float", "city": "category", "note": "text", "when": "time"},
  "features": {"amount": "amount", "city": "city", "note": "note", "when": "when"},
  "label": "label",
  "label_kind": "class",
  "class_names": ["no", "yes"],
}
TRAIN = {
  "amount": np.array([1.0, 2.0, 3.0, 6.0], np.float32),
  "city": np.array([b"Oslo", b"Rome", b"Oslo", b"Lima"], object),
  "note": np.array([b"Free cash now", b"see you", b"free FREE", b"call me"], object),
  "when": np.array([1704067200, 1704153600, 1706745600, 1709251200]),  # 2024-01-01 (Mon), ...
  "label": np.array([1, 0, 1, 0]),
}


def _config(**preprocess_fields):
  c = base_config()
  c.preprocess.update(**preprocess_fields)
  return c


def test_fit_uses_the_training_split_only_and_transform_applies_it():
  prep = preprocess.fit(SCHEMA, TRAIN, _config(max_length=4, calendar="dayofweek,month"))
  amount = prep["numeric"][0]
  assert (amount["mean"], amount["std"]) == (3.0, pytest.approx(np.std([1, 2, 3, 6])))
  assert prep["categorical"][0]["vocab"] == ["Oslo", "Lima", "Rome"]  # by count, then name
  assert prep["text"]["vocab"][:2] == ["free", "call"]  # lower-cased words
  new = {
    "amount": np.array([3.0], np.float32),
    "city": np.array([b"Paris"], object),
    "note": np.array([b"FREE unknownword cash"], object),
    "when": np.array([1704067200]),
    "label": np.array([1]),
  }
  batch = preprocess.make_transform(prep, train=False)(new)
  np.testing.assert_allclose(batch["numeric"][0, 0], 0.0)  # (3 - train mean) / train std
  vocab = prep["text"]["vocab"]
  assert batch["tokens"].tolist() == [
    [vocab.index("free") + 2, 1, vocab.index("cash") + 2, 0]
  ]  # 1: unknown, 0: pad
  # city Paris was never seen: 0; Monday is day-of-week 1; January is month 1.
  assert batch["categorical"].tolist() == [[0, 1, 1]]
  assert prep["label"]["class_weights"] == [1.0, 1.0]


def test_robust_scaling_centres_on_the_median_and_clips_a_long_tail_smoothly():
  schema = {
    "columns": {"income": "float"},
    "features": {"income": "income"},
    "label": "label",
    "label_kind": "class",
    "class_names": ["no", "yes"],
  }
  income = np.array([20, 30, 40, 50, 60, 70, 80, 90, 5000], np.float64)  # one fortune
  train = {"income": income, "label": np.arange(9) % 2}
  prep = preprocess.fit(schema, train, _config(numeric_scaling="robust"))
  q25, median, q75 = np.quantile(income, [0.25, 0.5, 0.75])
  spec = prep["numeric"][0]
  assert (spec["mean"], spec["std"]) == (median, pytest.approx((q75 - q25) / 1.349))
  z = preprocess.make_transform(prep, train=False)(train)["numeric"][:, 0]
  r = (income - median) / ((q75 - q25) / 1.349)
  np.testing.assert_allclose(z, r / np.sqrt(1 + (r / 3) ** 2), rtol=1e-6)
  assert z[4] == 0 and z.max() < 3 < r.max()  # the median is 0; the fortune is just under 3
  standard = preprocess.fit(schema, train, _config())["numeric"][0]
  assert "smooth_clip" not in standard and standard["mean"] == income.mean()
  with pytest.raises(
    UserError, match="preprocess.numeric_scaling='minmax' should be standard or robust"
  ):
    preprocess.fit(schema, train, _config(numeric_scaling="minmax"))


def test_hashing_tokenizer_and_balanced_class_weights():
  labels = dict(TRAIN, label=np.array([1, 0, 0, 0]))
  prep = preprocess.fit(
    SCHEMA, labels, _config(tokenizer="hashing", num_buckets=64, class_weights="balanced")
  )
  assert prep["text"]["size"] == 64 and "vocab" not in prep["text"]
  tokens = preprocess.make_transform(prep, train=True)(TRAIN)["tokens"]
  assert (
    tokens[0, 0] == tokens[2, 0] == tokens[2, 1] and (tokens[:, :2] >= 2).all()
  )  # "free" thrice
  assert prep["label"]["class_weights"] == [4 / (2 * 3), 4 / (2 * 1)]  # scikit-learn's "balanced"
  with pytest.raises(UserError, match="class_weights='1,2,3' must be none, balanced, or 2 numbers"):
    preprocess.fit(SCHEMA, TRAIN, _config(class_weights="1,2,3"))


def test_regression_losses_are_in_standardised_units_and_metrics_in_the_labels():
  batch = {"label": np.array([10.0, 30.0], np.float32)}
  outputs = np.array([1.0, -1.0], np.float32)  # standardised: 20 + 10 * out = [30, 10]
  mse = tasks.regression_loss(outputs, batch, mean=20.0, std=10.0)
  np.testing.assert_allclose(mse["loss"], [4.0, 4.0])
  np.testing.assert_allclose(mse["mae"], [20.0, 20.0])
  np.testing.assert_allclose(mse["ape"], [2.0, 2 / 3], rtol=1e-6)
  q = tasks.regression_loss(outputs, batch, mean=20.0, std=10.0, loss="quantile", quantile=0.9)
  np.testing.assert_allclose(
    q["loss"], [0.1 * 2, 0.9 * 2], rtol=1e-6
  )  # over- costs 0.1, under- 0.9
  h = tasks.regression_loss(outputs, batch, mean=20.0, std=10.0, loss="huber", huber_delta=1.0)
  np.testing.assert_allclose(h["loss"], [1.5, 1.5])
  out = tasks.finalize_regression(
    {"loss": 4.0, "mae": 20.0, "squared_error": 400.0, "ape": 1.0, "nonzero_label": 1.0}
  )
  assert out["rmse"] == 20.0 and out["mape"] == 1.0 and out["mape_zero_labels"] == 0.0


def test_tasks_refuse_data_they_cannot_use():
  prep = preprocess.fit(SCHEMA, TRAIN, _config())
  config = base_config()
  config.task = "regression"
  with pytest.raises(UserError, match="needs an imported dataset with a numeric label"):
    build_task(config, prep)
  config.task = "retrieval"
  config.preprocess.features = "amount"
  with pytest.raises(UserError, match="needs a user and an item column"):
    build_task(config, preprocess.fit(SCHEMA, TRAIN, config))


def test_calendar_fields_match_python_datetime():
  import datetime as dt

  seconds = np.random.default_rng(0).integers(-(10**9), 3 * 10**9, 500)  # 1938..2065
  when = [dt.datetime.fromtimestamp(int(s), dt.timezone.utc) for s in seconds]
  expected = {
    "dayofweek": [t.weekday() + 1 for t in when],
    "month": [t.month for t in when],
    "hour": [t.hour + 1 for t in when],
    "dayofmonth": [t.day for t in when],
  }
  for field, values in expected.items():
    assert preprocess._calendar(seconds, field).tolist() == values, field


def test_time_columns_give_calendar_fields_down_to_the_minute_and_a_trend_only_where_asked():
  from jaxtrain.config import base_config
  from jaxtrain.data import preprocess

  t0 = 1709251200  # 2024-03-01T00:00:00Z, a Friday
  times = np.array([t0, t0 + 30 * 60, t0 + 13 * 3600 + 45 * 60, t0 + 86400 * 40], np.int64)
  schema = {
    "columns": {"when": "time"},
    "features": {"when": "when"},
    "label": "y",
    "label_kind": "value",
    "options": {"split": "time:when"},
  }
  train = {"when": times, "label": np.arange(4, dtype=np.float32)}
  config = base_config()
  config.preprocess.calendar = "dayofweek,halfhour,minuteofday,dayofyear"
  prep = preprocess.fit(schema, train, config)
  assert prep["numeric"] == []  # split by time: "auto" leaves the trend out
  batch = preprocess.make_transform(prep, train=True)(train)
  assert batch["categorical"].tolist() == [
    [5, 1, 1, 61],
    [5, 2, 31, 61],
    [5, 28, 826, 61],
    [3, 1, 1, 101],
  ]
  schema["options"]["split"] = "fraction"
  assert [s["feature"] for s in preprocess.fit(schema, train, config)["numeric"]] == ["when"]
  config.preprocess.time_trend = "off"
  assert preprocess.fit(schema, train, config)["numeric"] == []


def test_saved_preprocessing_reads_back_and_a_workdir_still_works_with_a_warning(tmp_path):
  from jaxtrain.run import workdir as wd

  prep, seen = {"kind": "table", "numeric": []}, {"offsets": np.arange(3), "items": np.arange(2)}
  preprocess.save(wd.preprocess(str(tmp_path)), prep, seen)
  assert sorted(p.name for p in (tmp_path / "preprocess").iterdir()) == [
    "preprocess.json",
    "seen.npz",
  ]
  got, got_seen = preprocess.load(wd.preprocess(str(tmp_path)))
  assert got == prep and all(np.array_equal(got_seen[k], seen[k]) for k in seen)
  with pytest.warns(DeprecationWarning, match=r"pass the folder, jaxtrain.run.workdir.preprocess"):
    assert preprocess.load(str(tmp_path))[0] == prep  # a workdir, as before
  with pytest.raises(UserError, match="has no preprocess.json"):
    preprocess.load(str(tmp_path / "nothing"))
