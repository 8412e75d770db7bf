"""`jaxtrain data import`: every format, every split, versions, lags, and bad rows named."""

import csv
import datetime as dt
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxtrain.data import importing as data_import
from jaxtrain.data import datasets
from jaxtrain.tools.cli import main
from jaxtrain.errors import UserError
from jaxtrain.data.input_pipeline import InMemorySource

from conftest import ROOT

SAMPLES = ROOT / "jaxtrain" / "sample_data"


def _import(capsys, *argv):
  capsys.readouterr()
  assert main(["data", "import", *map(str, argv)]) == 0, capsys.readouterr().err
  return capsys.readouterr().out.strip()


def _split(dataset_dir, split):
  return InMemorySource(tfds.builder_from_directory(dataset_dir).as_data_source(split)).arrays


def test_csv_import_infers_kinds_splits_by_seed_and_is_versioned(tmp_path, capsys):
  dd = tmp_path / "data"
  out = _import(capsys, SAMPLES / "spam.csv", "--name", "spam", "--data_dir", dd, "--seed", 3)
  assert out.startswith("imported spam:1.0.0 (test 200, train 1600, validation 200)")
  schema = data_import.read_schema(dd / "spam" / "1.0.0")
  assert schema["columns"] == {"text": "text"} and schema["class_names"] == ["ham", "spam"]
  train = _split(dd / "spam" / "1.0.0", "train")
  rows = list(csv.DictReader(open(SAMPLES / "spam.csv")))
  # The documented seeded split: a permutation's first 80% train, kept in file order.
  chosen = np.sort(np.random.default_rng(3).permutation(len(rows))[:1600])
  assert [t.decode() for t in train["text"]] == [rows[i]["text"] for i in chosen]
  assert [["ham", "spam"][i] for i in train["label"]] == [rows[i]["label"] for i in chosen]

  # Unchanged files: nothing happens. A changed file: the next version, which training then reads.
  assert _import(
    capsys, SAMPLES / "spam.csv", "--name", "spam", "--data_dir", dd, "--seed", 3
  ).startswith("unchanged, already imported as spam:1.0.0")
  changed = tmp_path / "spam.csv"
  changed.write_text((SAMPLES / "spam.csv").read_text() + "Claim your free prize now,spam\n")
  assert _import(capsys, changed, "--name", "spam", "--data_dir", dd, "--seed", 3).startswith(
    "imported spam:1.0.1 (test 200, train 1601"
  )
  history = json.loads((dd / "spam" / "imports.json").read_text())
  assert [h["version"] for h in history] == ["1.0.0", "1.0.1"]
  assert history[0]["fingerprint"] != history[1]["fingerprint"]
  from ml_collections import ConfigDict

  newest = datasets.get_builder(ConfigDict(dict(name="spam", data_dir=str(dd), path="")))
  pinned = datasets.get_builder(ConfigDict(dict(name="spam:1.0.0", data_dir=str(dd), path="")))
  assert (str(newest.version), str(pinned.version)) == ("1.0.1", "1.0.0")
  with pytest.raises(UserError, match=r"no such version .* \(imported: 1.0.0, 1.0.1\)"):
    datasets.get_builder(ConfigDict(dict(name="spam:2.0.0", data_dir=str(dd), path="")))


def test_parquet_and_jsonl_are_read_with_declared_kinds(tmp_path, capsys):
  dd = tmp_path / "data"
  _import(
    capsys,
    SAMPLES / "diabetes.parquet",
    "--name",
    "diabetes",
    "--label",
    "progression",
    "--columns",
    "sex=category",
    "--data_dir",
    dd,
  )
  schema = data_import.read_schema(dd / "diabetes" / "1.0.0")
  assert schema["label_kind"] == "value" and schema["columns"]["sex"] == "category"
  assert schema["columns"]["bmi"] == "float" and sum(schema["num_examples"].values()) == 442
  _import(
    capsys,
    SAMPLES / "breast_cancer.jsonl",
    "--name",
    "cancer",
    "--label",
    "diagnosis",
    "--data_dir",
    dd,
  )
  schema = data_import.read_schema(dd / "cancer" / "1.0.0")
  assert schema["class_names"] == ["benign", "malignant"] and len(schema["columns"]) == 30
  assert schema["features"]["mean radius"] == "mean_radius"


def test_time_split_and_lags_look_only_backwards(tmp_path, capsys):
  dd = tmp_path / "data"
  _import(
    capsys,
    SAMPLES / "demand.csv",
    "--name",
    "demand",
    "--label",
    "demand",
    "--columns",
    "date=time",
    "--split",
    "time:date",
    "--cutoffs",
    "2024-09-01,2024-11-01",
    "--lags",
    "1,7",
    "--series",
    "store",
    "--data_dir",
    dd,
  )
  cut1, cut2 = (int(dt.datetime(2024, m, 1, tzinfo=dt.timezone.utc).timestamp()) for m in (9, 11))
  splits = {s: _split(dd / "demand" / "1.0.0", s) for s in ("train", "validation", "test")}
  assert splits["train"]["date"].max() < cut1 <= splits["validation"]["date"].min()
  assert splits["validation"]["date"].max() < cut2 <= splits["test"]["date"].min()
  rows = list(csv.DictReader(open(SAMPLES / "demand.csv")))
  by_key = {(r["store"], r["date"]): float(r["demand"]) for r in rows}
  test = splits["test"]
  for i in range(0, len(test["date"]), 97):
    day = dt.datetime.fromtimestamp(int(test["date"][i]), dt.timezone.utc).date()
    store = test["store"][i].decode()
    for k in (1, 7):
      earlier = (day - dt.timedelta(days=k)).isoformat()
      assert test[f"demand_lag_{k}"][i] == np.float32(by_key[(store, earlier)])
  # 8 stores x 7 days have no 7-day history: dropped, not filled.
  assert sum(len(s["date"]) for s in splits.values()) == len(rows) - 8 * 7


def test_split_by_column_and_npz(tmp_path, capsys):
  from sklearn.datasets import load_digits

  digits = load_digits()
  n = len(digits.target)
  split = np.where(
    np.arange(n) < 1500, "train", np.where(np.arange(n) < 1650, "validation", "test")
  )
  np.savez(
    tmp_path / "digits.npz",
    image=(digits.images * 15).astype(np.uint8)[..., None],
    label=digits.target,
    split=split,
  )
  dd = tmp_path / "data"
  out = _import(
    capsys,
    tmp_path / "digits.npz",
    "--name",
    "npz_digits",
    "--split",
    "column:split",
    "--data_dir",
    dd,
  )
  assert "(test 147, train 1500, validation 150)" in out
  test = _split(dd / "npz_digits" / "1.0.0", "test")
  assert test["image"].shape == (147, 8, 8, 1) and test["image"].dtype == np.uint8
  np.testing.assert_array_equal(test["label"], digits.target[1650:])


def test_class_folders_of_text_and_images(tmp_path, capsys):
  from PIL import Image

  for cls, words in (("billing", "invoice refund charge"), ("tech", "crash error login")):
    (tmp_path / "tickets" / cls).mkdir(parents=True)
    for i in range(10):
      (tmp_path / "tickets" / cls / f"{i}.txt").write_text(f"{words} ticket {i}")
  rng = np.random.default_rng(0)
  for cls in ("cat", "dog"):
    (tmp_path / "pets" / cls).mkdir(parents=True)
    for i in range(6):
      Image.fromarray(rng.integers(0, 255, (12 + i, 10, 3), dtype=np.uint8)).save(
        tmp_path / "pets" / cls / f"{i}.png"
      )
  dd = tmp_path / "data"
  assert "train 16" in _import(capsys, tmp_path / "tickets", "--name", "tickets", "--data_dir", dd)
  schema = data_import.read_schema(dd / "tickets" / "1.0.0")
  assert schema["columns"] == {"text": "text"} and schema["class_names"] == ["billing", "tech"]
  with pytest.raises(UserError, match="arrays of different shapes"):
    data_import.run_import(
      data_import.ImportSpec(sources=(str(tmp_path / "pets"),), name="pets"), str(dd)
    )
  _import(capsys, tmp_path / "pets", "--name", "pets", "--image_size", "8,8", "--data_dir", dd)
  train = _split(dd / "pets" / "1.0.0", "train")
  assert train["image"].shape[1:] == (8, 8, 3)


def test_bad_rows_are_all_found_and_nothing_is_written(tmp_path):
  bad = tmp_path / "trips.csv"
  # An empty number is missing (imputed later), not bad; "7 min" is bad.
  bad.write_text(
    "pickup,minutes,label\n2024-01-01,12.5,a\nyesterday,7,b\n2024-01-03,,a\n2024-01-04,7 min,b\n"
  )
  spec = data_import.ImportSpec(
    sources=(str(bad),), name="trips", columns="pickup=time,minutes=float"
  )
  with pytest.raises(UserError) as info:
    data_import.run_import(spec, str(tmp_path / "data"))
  assert str(info.value) == (
    f"{bad} line 3, column 'pickup': 'yesterday' is not a date or time "
    "(expected ISO 8601, e.g. 2024-05-31) (and 1 more bad values)"
  )
  assert not (tmp_path / "data").exists()


def test_missing_numbers_stay_numeric_and_are_imputed_with_a_flag(tmp_path, capsys):
  rows = ["rooms,area,zip_code,label"] + [
    f"{i % 5 + 1},{'' if i % 10 == 3 else 50 + i},{i % 7:05d},{100 + 3 * i}" for i in range(200)
  ]
  (tmp_path / "houses.csv").write_text("\n".join(rows) + "\n")
  out = _import(capsys, tmp_path / "houses.csv", "--name", "houses", "--data_dir", tmp_path / "dd")
  schema = data_import.read_schema(tmp_path / "dd" / "houses" / "1.0.0")
  # 20 empty cells do not make `area` a category; a zero-padded code is not a quantity.
  assert schema["columns"] == {"rooms": "int", "area": "float", "zip_code": "category"}
  assert [(c["column"], c["missing"]) for c in schema["summary"]] == [
    ("rooms", 0),
    ("area", 20),
    ("zip_code", 0),
    ("label", 0),
  ]
  assert "\n  area      float               20  50, 51, 52\n" in out  # the printed schema table
  from jaxtrain.data import preprocess
  from jaxtrain.config import base_config

  arrays = {
    k: np.asarray(v) for k, v in _split(tmp_path / "dd" / "houses" / "1.0.0", "train").items()
  }
  assert np.isnan(arrays["area"]).sum() > 0
  config = base_config()
  prep = preprocess.fit(schema, arrays, config)
  numeric = preprocess.make_transform(prep, train=True)(arrays)["numeric"]
  assert [s["feature"] for s in prep["numeric"]] == ["area", "rooms"]
  assert numeric.shape[1] == 3  # area, area's missing flag, rooms
  missing = np.isnan(arrays["area"])
  assert np.array_equal(numeric[:, 1], missing.astype(np.float32))
  assert np.all(numeric[missing, 0] == 0) and np.isfinite(numeric).all()


def test_tsv_headerless_and_zipped_tables_import(tmp_path, capsys):
  import zipfile

  lines = [("ham" if i % 4 else "spam") + "\t" + f'Call "now" £{i}! or not {i}' for i in range(60)]
  (tmp_path / "SMSCollection").write_text("\n".join(lines) + "\n")  # no suffix, no header
  _import(
    capsys,
    tmp_path / "SMSCollection",
    "--name",
    "sms",
    "--names",
    "label,text",
    "--data_dir",
    tmp_path / "dd",
  )
  train = _split(tmp_path / "dd" / "sms" / "1.0.0", "train")
  texts = {t.decode() for t in train["text"]}
  assert len(texts) == 48 and all("£" in t and '"now"' in t for t in texts)  # kept whole
  csv_text = "a;b;label\n" + "".join(f"{i};{i * 2.5};{i % 2}\n" for i in range(40))
  with zipfile.ZipFile(tmp_path / "parts.zip", "w") as z:
    z.writestr("part1.csv", csv_text)
    z.writestr("__MACOSX/._part1.csv", "junk")
  _import(capsys, tmp_path / "parts.zip", "--name", "zipped", "--data_dir", tmp_path / "dd")
  schema = data_import.read_schema(tmp_path / "dd" / "zipped" / "1.0.0")
  assert schema["columns"] == {"a": "int", "b": "float"} and schema["class_names"] == ["0", "1"]
  assert sum(schema["num_examples"].values()) == 40


def test_text_tables_with_any_suffix_import_with_lags_too(tmp_path, capsys):
  """MovieLens' u.data (tab, no header), a .dat; lags read the same way (tab, --names); "::"."""
  (tmp_path / "u.data").write_text(
    "".join(
      f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u}\n" for u in range(1, 21) for i in range(1, 11)
    )
  )
  _import(
    capsys,
    tmp_path / "u.data",
    "--name",
    "ml",
    "--names",
    "user,item,rating,timestamp",
    "--label",
    "rating",
    "--label_kind",
    "value",
    "--columns",
    "user=category,item=category",
    "--ignore",
    "timestamp",
    "--data_dir",
    tmp_path / "dd",
  )
  schema = data_import.read_schema(tmp_path / "dd" / "ml" / "1.0.0")
  assert schema["columns"] == {"user": "category", "item": "category"}
  assert sum(schema["num_examples"].values()) == 200
  start = dt.datetime(2024, 3, 1)
  (tmp_path / "load.dat").write_text(
    "".join(f"{(start + dt.timedelta(hours=h)).isoformat()}\t{h * 10}\n" for h in range(60))
  )
  spec = data_import.ImportSpec(
    sources=(str(tmp_path / "load.dat"),),
    name="load",
    label="load",
    label_kind="value",
    names="when,load",
    columns="when=time",
    lags="1",
    split="time:when",
    cutoffs="2024-03-02T12:00,2024-03-02T18:00",
  )
  directory, _ = data_import.run_import(spec, str(tmp_path / "dd"))
  rows = _split(directory, "train")
  assert np.array_equal(rows["load_lag_1"], rows["label"] - 10) and len(rows["label"]) == 35
  # MovieLens 1M's "::": a delimiter of two characters, errors located on their line.
  lines = [
    f"{u}::{i}::{1 + (u + i) % 5}::97830076{u}\n" for u in range(1, 11) for i in range(1, 11)
  ]
  (tmp_path / "ratings.dat").write_text("".join(lines))
  spec = data_import.ImportSpec(
    sources=(str(tmp_path / "ratings.dat"),),
    name="ml1m",
    label="rating",
    label_kind="value",
    names="user,item,rating,ts",
    delimiter="::",
    columns="user=category,item=category",
    ignore="ts",
    fractions="1,0,0",
  )
  rows = _split(data_import.run_import(spec, str(tmp_path / "dd"))[0], "train")
  users, items = rows["user"].astype(int), rows["item"].astype(int)
  assert len(users) == 100 and np.array_equal(rows["label"], 1 + (users + items) % 5)
  lines[56] = "6::7::x::978300766\n"
  (tmp_path / "ratings.dat").write_text("".join(lines))
  with pytest.raises(UserError, match=r"ratings.dat line 57, column 'rating': 'x' is not a number"):
    data_import.run_import(spec, str(tmp_path / "dd"))


def test_a_stray_word_in_a_numeric_column_is_named(tmp_path):
  rows = ["x,label"] + [f"{i * 0.5},{i % 2}" for i in range(300)]
  rows[201] = "12.5.1,1"
  (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
  spec = data_import.ImportSpec(sources=(str(tmp_path / "t.csv"),), name="t")
  with pytest.raises(
    UserError,
    match=r"t.csv line 202, column 'x': '12.5.1' is not a number, in a "
    r"column of 299 numbers \(1 are not\); fix it, or declare",
  ):
    data_import.run_import(spec, str(tmp_path / "dd"))


def test_import_scale_quick(tmp_path):
  import subprocess
  import sys

  out = tmp_path / "scale.json"
  proc = subprocess.run(
    [sys.executable, "experiments/import_scale.py", "--quick", "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  [row] = result["results"]
  assert row["rows"] == 2000 and row["rows_per_s"] > 0 and row["legacy_rows_per_s"] > 0
  assert result["bad_row"]["status"] == 1
  assert result["bad_row"]["message"][0].endswith(
    "bad_2000.csv line 1501, column 'amount': '12.5.1' is not a number"
  )


def test_beam_import_writes_the_same_examples(tmp_path):
  pytest.importorskip("apache_beam", reason="--beam needs pip install 'jaxtrain[beam]'")
  parts = []
  for p in range(3):  # several files: one Beam work item each
    path = tmp_path / f"part{p}.csv"
    path.write_text(
      "x,colour,label\n"
      + "".join(f"{p * 100 + i},{'red' if i % 3 else ''},{(p + i) % 2}\n" for i in range(100))
    )
    parts.append(str(path))
  plain = data_import.ImportSpec(sources=tuple(parts), name="parts")
  beam = data_import.ImportSpec(
    sources=tuple(parts), name="parts", beam="--runner=DirectRunner --direct_num_workers=1"
  )
  a, _ = data_import.run_import(plain, str(tmp_path / "plain"))
  b, _ = data_import.run_import(beam, str(tmp_path / "beam"))
  for split in ("train", "validation", "test"):
    left, right = _split(a, split), _split(b, split)
    assert left.keys() == right.keys()
    assert all(np.array_equal(left[k], right[k]) for k in left), split
  assert data_import.read_schema(b)["num_examples"] == data_import.read_schema(a)["num_examples"]


def _hourly(tmp_path, skip=()):
  start = dt.datetime(2024, 3, 1)
  rows = ["when,load"] + [
    f"{(start + dt.timedelta(hours=h)).isoformat()},{h * 10}" for h in range(60) if h not in skip
  ]
  (tmp_path / "load.csv").write_text("\n".join(rows) + "\n")
  return data_import.ImportSpec(
    sources=(str(tmp_path / "load.csv"),),
    name="load",
    label="load",
    label_kind="value",
    columns="when=time",
    lags="1,24",
    split="time:when",
    cutoffs="2024-03-02T12:00,2024-03-02T18:00",
  )


def test_lags_follow_time_and_a_gap_is_refused_or_dropped_never_misaligned(tmp_path):
  # Hour 40 is missing: counting rows would give hour 41 the load of hour 39 as "1 hour ago".
  spec = _hourly(tmp_path, skip=(40,))
  with pytest.raises(
    UserError,
    match=r"load.csv line 42: series '' has no row at "
    r"2024-03-02T16:00:00\+00:00 \(lag 1 x 1h, the frequency detected: the most "
    r"common step\): 1 rows' lags fall in gaps; fill them",
  ):
    data_import.run_import(spec, str(tmp_path / "dd"))
  spec.gaps = "drop"
  directory, _ = data_import.run_import(spec, str(tmp_path / "dd"))
  for split in ("train", "validation", "test"):
    rows = _split(directory, split)
    hours = (
      rows["when"] - int(dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc).timestamp())
    ) // 3600
    assert np.array_equal(rows["load_lag_1"], (hours - 1) * 10)  # exactly an hour earlier
    assert np.array_equal(rows["load_lag_24"], (hours - 24) * 10)
    assert not set(hours.tolist()) & {40, 41}  # 40 is not in the file; 41's lag 1 is in the gap
  total = sum(data_import.read_schema(directory)["num_examples"].values())
  assert total == 59 - 24 - 1  # 59 rows; 24 before a day of history; hour 41


def test_frequency_can_be_declared(tmp_path):
  spec = _hourly(tmp_path)
  spec.frequency, spec.lags = "2h", "1"  # a lag of 1 is 2 hours back
  directory, _ = data_import.run_import(spec, str(tmp_path / "dd"))
  rows = _split(directory, "train")
  hours = (rows["when"] - int(dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc).timestamp())) // 3600
  assert np.array_equal(rows["load_lag_1"], (hours - 2) * 10) and hours.min() == 2
  with pytest.raises(UserError, match="--frequency='fortnightly' should be a count and a unit"):
    spec.frequency = "fortnightly"
    data_import.run_import(spec, str(tmp_path / "dd2"))


def test_identifier_names_are_recognised():
  from jaxtrain.data.columns import is_code_name

  assert [
    n
    for n in [
      "id",
      "user_id",
      "userId",
      "itemID",
      "zip",
      "item code",
      "paid",
      "valid",
      "humid",
      "barcode",
      "monkey",
    ]
    if is_code_name(n)
  ] == ["id", "user_id", "userId", "itemID", "zip", "item code"]


def test_a_gap_in_a_declared_int_column_is_named(tmp_path):
  (tmp_path / "t.csv").write_text("n,label\n1,a\n,b\n3,a\n")
  spec = data_import.ImportSpec(sources=(str(tmp_path / "t.csv"),), name="t", columns="n=int")
  with pytest.raises(
    UserError,
    match=r"t.csv line 3, column 'n': missing value \(an int column "
    r"holds no gaps: declare it float to have them imputed\)",
  ):
    data_import.run_import(spec, str(tmp_path / "dd"))


def test_a_character_cut_by_the_sniffed_sample_is_not_a_decoding_error(tmp_path):
  head = "label,text\n"
  filler = "a" * (65535 - len(head) - 2)
  text = head + "1," + filler + "é\n" + "".join(f"{i % 2},café\n" for i in range(50))
  assert text.encode()[65535:65537] == "é".encode()  # the 64 KB sample ends inside é
  (tmp_path / "t.csv").write_text(text)
  spec = data_import.ImportSpec(sources=(str(tmp_path / "t.csv"),), name="t")
  directory, _ = data_import.run_import(spec, str(tmp_path / "dd"))
  assert sum(data_import.read_schema(directory)["num_examples"].values()) == 51


def test_the_same_csv_gets_the_same_kinds_and_table_with_or_without_lags(tmp_path, capsys):
  """One kind rule (columns.Stats) for the streamed import and the one that adds lags."""
  start = dt.date(2024, 1, 1)
  lines = ["date,store_id,zip,price,promo,region,demand"]
  for day in range(40):
    for store in (3, 7):
      price = "" if (day + store) % 9 == 0 else f"{2.5 + 0.1 * (day % 5):.2f}"
      lines.append(
        f"{start + dt.timedelta(days=day)},{store},0{2100 + store},{price},{day % 2},"
        f"{'north' if store == 3 else 'south'},{10 + day + store}"
      )
  (tmp_path / "sales.csv").write_text("\n".join(lines) + "\n")
  tables = {}
  for name, extra in (("plain", ()), ("lagged", ("--lags", "1", "--series", "store_id"))):
    out = _import(
      capsys,
      tmp_path / "sales.csv",
      "--name",
      name,
      "--label",
      "demand",
      "--label_kind",
      "value",
      "--data_dir",
      tmp_path / "dd",
      *extra,
    )
    schema = data_import.read_schema(tmp_path / "dd" / name / "1.0.0")
    tables[name] = (
      schema["columns"],
      {s["column"]: s for s in schema["summary"]},
      [line for line in out.splitlines() if line.startswith("  ") and "_lag_" not in line],
    )
  (plain, plain_summary, plain_table), (lagged, lagged_summary, lagged_table) = tables.values()
  assert plain == {
    "date": "time",
    "store_id": "category",
    "zip": "category",
    "price": "float",
    "promo": "int",
    "region": "category",
  }
  assert {c: k for c, k in lagged.items() if c in plain} == plain
  assert set(lagged) - set(plain) == {"demand_lag_1"}
  assert {c: lagged_summary[c] for c in plain_summary} == plain_summary
  assert plain_summary["price"]["missing"] == 9 and plain_summary["zip"]["examples"][0] == "02103"
  assert plain_table == lagged_table  # the schema table printed, column for column
