"""Writes the sample files in jaxtrain/sample_data/ (run once; the files are committed).

Two are real data from scikit-learn's wheel (no download): breast_cancer.jsonl
(569 tumours, benign/malignant) and diabetes.parquet (442 patients, disease
progression). Three are generated with structure a model can learn and a
trivial baseline cannot:
  spam.csv     messages; spam draws a share of its words from a spam
               vocabulary, ham mostly not (25% spam: majority baseline 0.75)
  ratings.csv  user, item, rating, timestamp from 3 latent factors; which items
               a user rates also follows the factors (so retrieval can learn it)
  demand.csv   daily demand of 8 stores over two years: weekly season, promotions,
               temperature, and a persistent store-level shock (lags carry it)

    python experiments/make_samples.py [--out jaxtrain/sample_data]
"""

import argparse
import csv
import datetime as dt
import json
import os

import numpy as np

HAM = (
  "meeting tomorrow lunch call later home dinner thanks love see you soon ok sure "
  "project report office train bus weekend movie game coffee mum dad kids school "
  "class notes running late sorry traffic plan trip photo birthday party"
).split()
SPAM = (
  "free winner prize claim cash urgent offer click now guaranteed bonus credit "
  "loan deal limited exclusive reward voucher subscribe congratulations selected"
).split()


def spam(rng, n=2000):
  rows = []
  for _ in range(n):
    is_spam = rng.random() < 0.25
    length = rng.integers(5, 16)
    share = 0.45 if is_spam else 0.04  # ham sometimes says "free" too
    words = [rng.choice(SPAM) if rng.random() < share else rng.choice(HAM) for _ in range(length)]
    rows.append(
      {
        "text": " ".join(words).capitalize() + rng.choice([".", "!", "?"]),
        "label": "spam" if is_spam else "ham",
      }
    )
  return rows


def ratings(rng, users=300, items=400, per_user=50, dim=3):
  u, v = rng.normal(size=(users, dim)), rng.normal(size=(items, dim))
  item_bias, user_bias = rng.normal(0, 0.5, items), rng.normal(0, 0.3, users)
  start = dt.datetime(2024, 1, 1)
  rows = []
  for a in range(users):
    affinity = u[a] @ v.T + item_bias
    p = np.exp(2.5 * affinity)
    chosen = rng.choice(items, size=per_user, replace=False, p=p / p.sum())
    for b in chosen:
      score = 2.4 + 0.7 * (u[a] @ v[b]) + item_bias[b] + user_bias[a] + rng.normal(0, 0.3)
      when = start + dt.timedelta(minutes=int(rng.integers(0, 365 * 24 * 60)))
      rows.append(
        {
          "user": f"u{a}",
          "item": f"i{b}",
          "rating": int(np.clip(np.round(score), 1, 5)),
          "timestamp": when.isoformat(),
        }
      )
  rows.sort(key=lambda r: r["timestamp"])
  return rows


def demand(rng, stores=8, days=730):
  start = dt.date(2023, 1, 1)
  base = rng.uniform(50, 200, stores)
  weekly = np.array([0.9, 0.85, 0.9, 1.0, 1.2, 1.45, 1.3])
  rows = []
  for s in range(stores):
    shock = 0.0
    for d in range(days):
      day = start + dt.timedelta(days=d)
      temp = 15 + 10 * np.sin(2 * np.pi * (d - 100) / 365) + rng.normal(0, 3)
      promo = int(rng.random() < 0.1)
      shock = 0.9 * shock + rng.normal(0, 0.08)  # persistent: yesterday's demand tells
      level = (
        base[s]
        * weekly[day.weekday()]
        * (1 + 0.35 * promo)
        * (1 + 0.01 * (temp - 15))
        * np.exp(shock)
      )
      rows.append(
        {
          "store": f"s{s}",
          "date": day.isoformat(),
          "temperature": round(float(temp), 1),
          "promo": promo,
          "demand": round(float(level + rng.normal(0, 3)), 1),
        }
      )
  return rows


def write_prompts(spam_csv, path, n=400):
  """Prompt/response pairs for causal-LM fine-tuning (configs/finetune_lm.py): the first `n`
  messages of spam.csv, asked whether each is spam, answered in one word."""
  with open(spam_csv, newline="") as f:
    rows = list(csv.DictReader(f))[:n]
  with open(path, "w") as f:
    for row in rows:
      pair = {
        "prompt": f"Message: {row['text']}\nIs it spam? Answer:",
        "response": f" {row['label']}",
      }
      f.write(json.dumps(pair) + "\n")


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument(
    "--out", default=os.path.join(os.path.dirname(__file__), "..", "jaxtrain", "sample_data")
  )
  out = parser.parse_args().out
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(20261123)
  write_csv(os.path.join(out, "spam.csv"), spam(rng))
  write_csv(os.path.join(out, "ratings.csv"), ratings(rng))
  write_csv(os.path.join(out, "demand.csv"), demand(rng))

  from sklearn.datasets import load_breast_cancer, load_diabetes

  cancer = load_breast_cancer()
  with open(os.path.join(out, "breast_cancer.jsonl"), "w") as f:
    for x, y in zip(cancer.data, cancer.target):
      row = {name: float(v) for name, v in zip(cancer.feature_names, x)}
      row["diagnosis"] = str(cancer.target_names[y])
      f.write(json.dumps(row) + "\n")
  import pyarrow as pa
  import pyarrow.parquet as pq

  diabetes = load_diabetes(scaled=False)
  columns = {name: diabetes.data[:, i] for i, name in enumerate(diabetes.feature_names)}
  columns["progression"] = diabetes.target
  pq.write_table(pa.table(columns), os.path.join(out, "diabetes.parquet"))
  write_prompts(os.path.join(out, "spam.csv"), os.path.join(out, "prompts.jsonl"))
  for name in sorted(os.listdir(out)):
    print(f"{name:22s} {os.path.getsize(os.path.join(out, name)):>8d} bytes")


if __name__ == "__main__":
  main()
