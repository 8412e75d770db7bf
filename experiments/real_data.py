"""Real data, default configs: jaxtrain against the scikit-learn baseline a practitioner tries
first.

Each job imports a real table found offline with `jaxtrain data import`'s
own code, trains the shipped config for its kind of job (no sweep, no
tuning per data set), tests the best checkpoint, and fits the baselines on
the same splits, from the same model inputs (numbers standardised,
categories as integer codes, text as the raw strings), timing both:

  sms_spam    SMS Spam Collection (../shared/data/sms_spam): configs/spam.py vs
              TF-IDF character 2-5-grams + LinearSVC; F1 of spam, MCC
  wage        ISLP's Wage (3,000 workers; logwage left out): configs/diabetes.py
              (tabular regression) vs HistGradientBoosting, RandomForest; RMSE
  bike_table  ISLP's Bikeshare as a plain table (8,645 hours, split at random, no lags):
              configs/diabetes.py vs HistGradientBoosting, RandomForest; RMSE
  default     ISLP's Default (10,000 card holders, 3% default): configs/diabetes.py
              made a classifier vs HistGradientBoosting; F1, MCC, ROC-AUC, and F1 and MCC
              at the threshold that maximised F1 on validation (both models)
  bikeshare   ISLP's Bikeshare (Washington DC, 2011, hourly rentals; a timestamp made of
              its day and hour), the next hour from the weather, the calendar and lags 1, 2,
              24 h by time, split by time: configs/demand.py vs HistGradientBoosting on
              the same inputs and seasonal naive (24 h ago); RMSE
  movielens   MovieLens 100K (943 users, 1,682 films, 100,000 ratings; the copy RecBole's
              wheel ships), split at random: configs/ratings.py vs Surprise's SVD and
              its user+item biases (BaselineOnly); RMSE

ISLP ships its tables in its wheel; install it without its dependencies:
pip install --no-deps ISLP (a job whose data is missing is skipped, and says so); the
same for RecBole (pip install --no-deps recbole: only its data file is read) and Surprise
(pip install scikit-surprise).

    python experiments/real_data.py [--jobs sms_spam,wage,bike_table,default,bikeshare,movielens]
                                    [--seeds 0] [--set FIELD=VALUE ...]
    python experiments/real_data.py --quick    # what the test suite runs (no accuracy claims)
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import load_config  # noqa: E402
from jaxtrain.data import importing, preprocess  # noqa: E402
from jaxtrain.data.input_pipeline import InMemorySource  # noqa: E402
from jaxtrain.run.loop import train_and_evaluate  # noqa: E402
from jaxtrain.run.metric_writers import read_metrics  # noqa: E402

SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"


def package_file(package: str, *parts: str) -> Path | None:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
  return path if path.exists() else None


JOBS = {
  "sms_spam": dict(
    source=lambda tmp: SMS if SMS.exists() else None,
    kind="text",
    spec=dict(names="label,text", label="label"),
    config="spam",
  ),
  "wage": dict(
    source=lambda tmp: package_file("ISLP", "data", "Wage.csv"),
    kind="regression",
    spec=dict(label="wage", label_kind="value", ignore="logwage"),
    config="diabetes",
  ),
  "bike_table": dict(
    source=lambda tmp: package_file("ISLP", "data", "Bikeshare.csv"),
    kind="regression",
    spec=dict(label="bikers", label_kind="value", ignore="casual,registered"),
    config="diabetes",
  ),
  "default": dict(
    source=lambda tmp: package_file("ISLP", "data", "Default.csv"),
    kind="classification",
    spec=dict(label="default", label_kind="class"),
    config="diabetes",
  ),
  "bikeshare": dict(
    source=lambda tmp: bikeshare_csv(tmp),
    kind="forecast",
    spec=dict(
      label="bikers",
      label_kind="value",
      columns="time=time",
      ignore="casual,registered,day,mnth,season",
      lags="1,2,24",
      split="time:time",
      cutoffs="2011-10-01,2011-11-15",
      gaps="drop",
    ),  # hours without a rental are missing rows
    config="demand",
  ),
  "movielens": dict(
    source=lambda tmp: package_file("recbole", "dataset_example", "ml-100k", "ml-100k.inter"),
    kind="ratings",
    spec=dict(
      label="rating:float",
      label_kind="value",
      ignore="timestamp:float",
      columns="user_id:token=category,item_id:token=category",
    ),
    config="ratings",
    set=("preprocess.features=user_id:token,item_id:token",),
  ),
}


def job_config(job: dict, name: str, data_dir: str, quick: bool, seed: int, overrides=()):
  c = load_config(job["config"])
  # The job's own settings, then --set's ("model.ensemble_size=8": a change compared on every job).
  for override in job.get("set", ()) + tuple(overrides):
    key, _, text = override.partition("=")
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
      node = node[part]
    try:
      node[leaf] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      node[leaf] = text
  c.seed = seed
  c.dataset.update(name=name, data_dir=data_dir)
  c.data_import.sources = ()
  if job["kind"] == "classification":
    c.task = "classification"
    c.loss = {}
    c.preprocess.class_weights = "none"
    c.early_stopping.update(metric="loss", mode="min")
  if quick:
    c.num_train_steps, c.eval_every_steps, c.log_every_steps, c.checkpoint_every_steps = (
      40,
      20,
      20,
      20,
    )
  return c


def model_inputs(dataset_dir: str, workdir: str) -> dict:
  """Each split's model inputs as jaxtrain's fitted preprocessing makes them, and raw text."""
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(dataset_dir)
  prep, seen = preprocess.load(workdir)
  transform = preprocess.make_transform(prep, train=False)
  out = {}
  for split in ("train", "validation", "test"):
    raw = InMemorySource(builder.as_data_source(split)).arrays
    out[split] = (transform(raw), raw)
  return out


def baselines(kind: str, data: dict, seed: int) -> dict:
  from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
  )
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.svm import LinearSVC

  def table(split):
    inputs, _ = data[split]
    parts = [
      inputs[k].reshape(len(inputs["label"]), -1).astype(np.float64)
      for k in ("numeric", "categorical")
      if k in inputs
    ]
    return np.concatenate(parts, 1), inputs["label"]

  def categorical_mask(split):
    inputs, _ = data[split]
    numeric = inputs["numeric"].shape[1] if "numeric" in inputs else 0
    categorical = inputs["categorical"].shape[1] if "categorical" in inputs else 0
    return [False] * numeric + [True] * categorical

  results = {}
  if kind == "ratings":
    return _rating_baselines(data, seed)
  if kind == "text":
    texts = {s: [t.decode() for t in data[s][1]["text"]] for s in data}
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    model = LinearSVC(C=1.0).fit(
      vectorizer.fit_transform(texts["train"]), data["train"][0]["label"]
    )
    predicted = model.predict(vectorizer.transform(texts["test"]))
    results["tfidf_char_linear_svc"] = _classification(
      data["test"][0]["label"], predicted, None, time.perf_counter() - start
    )
    return results
  x, y = table("train")
  xt, yt = table("test")
  mask = categorical_mask("train")
  if kind == "classification":
    start = time.perf_counter()
    model = HistGradientBoostingClassifier(categorical_features=mask or None, random_state=seed)
    model.fit(x, y)
    scores = model.predict_proba(xt)[:, 1]
    results["hist_gradient_boosting"] = _classification(
      yt, model.predict(xt), scores, time.perf_counter() - start
    )
    xv, yv = table("validation")  # the threshold as jaxtrain picks it: F1-best on validation
    threshold = _best_f1_threshold(yv, model.predict_proba(xv)[:, 1])
    results["hist_gradient_boosting"].update(_at_threshold(yt, scores, threshold))
    return results
  for name, make in (
    (
      "hist_gradient_boosting",
      lambda: HistGradientBoostingRegressor(categorical_features=mask or None, random_state=seed),
    ),
    (
      "random_forest",
      lambda: RandomForestRegressor(n_estimators=300, n_jobs=-1, random_state=seed),
    ),
  ):
    start = time.perf_counter()
    model = make().fit(x, y)
    predicted = model.predict(xt)
    results[name] = {
      "rmse": float(np.sqrt(np.mean((predicted - yt) ** 2))),
      "seconds": time.perf_counter() - start,
    }
  if kind == "forecast":
    lag = data["test"][1]["bikers_lag_24"]
    results["seasonal_naive_24h"] = {
      "rmse": float(np.sqrt(np.mean((lag - yt) ** 2))),
      "seconds": 0.0,
    }
  return results


def _rating_baselines(data: dict, seed: int) -> dict:
  """Surprise's SVD (biased matrix factorization by SGD) and its user+item biases (ALS)."""
  try:
    import surprise
  except ImportError:
    print("ratings: Surprise's baselines skipped (pip install scikit-surprise)")
    return {}
  user, item, label = "user_id_token", "item_id_token", "label"  # as the import names them

  def triples(split):
    raw = data[split][1]
    return list(zip(map(bytes.decode, raw[user]), map(bytes.decode, raw[item]), raw[label]))

  train = triples("train")
  with tempfile.NamedTemporaryFile("w", suffix=".tsv") as f:  # Surprise reads a file (or pandas)
    f.writelines(f"{u}\t{i}\t{r}\n" for u, i, r in train)
    f.flush()
    reader = surprise.Reader(
      line_format="user item rating",
      sep="\t",
      rating_scale=(min(r for *_, r in train), max(r for *_, r in train)),
    )
    trainset = surprise.Dataset.load_from_file(f.name, reader).build_full_trainset()
  test = triples("test")
  results = {}
  for name, algo in (
    ("surprise_svd", surprise.SVD(random_state=seed)),
    ("surprise_biases", surprise.BaselineOnly(verbose=False)),
  ):
    start = time.perf_counter()
    algo.fit(trainset)
    predicted = np.array([algo.predict(u, i).est for u, i, _ in test])
    truth = np.array([r for *_, r in test])
    results[name] = {
      "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
      "seconds": time.perf_counter() - start,
    }
  return results


def _best_f1_threshold(labels, scores) -> float:
  from sklearn.metrics import precision_recall_curve

  precision, recall, thresholds = precision_recall_curve(labels, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  return float(thresholds[np.argmax(f1[:-1])])


def _at_threshold(labels, scores, threshold) -> dict:
  from sklearn.metrics import f1_score, matthews_corrcoef

  predicted = scores >= threshold
  return {
    "f1_at_validation_threshold": float(f1_score(labels, predicted)),
    "mcc_at_validation_threshold": float(matthews_corrcoef(labels, predicted)),
  }


def _classification(labels, predicted, scores, seconds) -> dict:
  from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score

  out = {
    "f1": float(f1_score(labels, predicted)),
    "mcc": float(matthews_corrcoef(labels, predicted)),
    "accuracy": float(np.mean(labels == predicted)),
    "seconds": seconds,
  }
  if scores is not None:
    out["roc_auc"] = float(roc_auc_score(labels, scores))
  return out


def bikeshare_csv(tmp: Path) -> Path | None:
  """ISLP's Bikeshare (2011, hourly) with a timestamp made of its day of year and hour."""
  source = package_file("ISLP", "data", "Bikeshare.csv")
  if source is None:
    return None
  import csv
  import datetime as dt

  out = tmp / "bikeshare.csv"
  with open(source, newline="") as f, open(out, "w", newline="") as g:
    rows = csv.DictReader(f)
    writer = csv.DictWriter(g, ["time"] + rows.fieldnames)
    writer.writeheader()
    for row in rows:
      when = dt.datetime(2011, 1, 1) + dt.timedelta(days=int(row["day"]) - 1, hours=int(row["hr"]))
      writer.writerow(dict(row, time=when.isoformat()))
  return out


def run_job(
  name: str, job: dict, tmp: Path, *, quick: bool, seed: int, overrides=()
) -> dict | None:
  source = job["source"](tmp)
  if source is None:
    print(f"{name}: skipped (its data is not installed; see this script's docstring)")
    return None
  data_dir = str(tmp / "data")
  spec = importing.ImportSpec(sources=(str(source),), name=name, **job["spec"])
  dataset_dir, _ = importing.run_import(spec, data_dir)
  config = job_config(job, name, data_dir, quick, seed, overrides)
  workdir = str(tmp / f"{name}-{seed}")
  start = time.perf_counter()
  train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  test = [e for e in read_metrics(workdir) if e["split"] == "test"][-1]
  ours = {
    k: test[k]
    for k in (
      "rmse",
      "f1",
      "mcc",
      "roc_auc",
      "accuracy",
      "f1_at_validation_threshold",
      "mcc_at_validation_threshold",
    )
    if k in test
  }
  ours.update(seconds=seconds, tested_step=test["step"])
  theirs = baselines(job["kind"], model_inputs(dataset_dir, workdir), seed)
  return {
    "job": name,
    "seed": seed,
    "rows": sum(importing.read_schema(dataset_dir)["num_examples"].values()),
    "jaxtrain": ours,
    "baselines": theirs,
  }


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--jobs", default=",".join(JOBS))
  parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
  parser.add_argument("--quick", action="store_true", help="40 steps; no accuracy claims")
  parser.add_argument("--out", default="real_data.json")
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="a config override for every job, e.g. model.ensemble_size=8",
  )
  args = parser.parse_args(argv)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.jobs.split(","):
      for seed in [int(s) for s in args.seeds.split(",")]:
        result = run_job(
          name, JOBS[name], Path(tmp), quick=args.quick, seed=seed, overrides=args.set
        )
        if result is not None:
          results.append(result)
  print(f"\n{'job':<10} {'rows':>7}  {'model':<24} {'metric':>28}  {'seconds':>8}")
  for r in results:
    for model, m in [("jaxtrain (default config)", r["jaxtrain"])] + list(r["baselines"].items()):
      shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("rmse", "f1", "mcc", "roc_auc") if k in m)
      if "f1_at_validation_threshold" in m:
        shown += (
          f"; at validation's threshold: f1 {m['f1_at_validation_threshold']:.4f}, "
          f"mcc {m['mcc_at_validation_threshold']:.4f}"
        )
      print(f"{r['job']:<10} {r['rows']:>7}  {model:<24} {shown:>28}  {m['seconds']:>8.1f}")
  with open(args.out, "w") as f:
    json.dump(
      {
        "benchmark": "real_data",
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "results": results,
      },
      f,
      indent=2,
    )
  return results


if __name__ == "__main__":
  main()
