"""`jaxtrain data import`: a user's files as a versioned TFDS dataset in a data_dir.

    jaxtrain data import messages.csv --name spam --label label --data_dir data

Reads CSV, Parquet, JSON Lines, NumPy .npz, or a folder with one sub-folder
per class (of text or image files); every value is checked against its
column's kind (declared, or inferred from all rows) before anything is
written, and a bad value is reported with its file, line and column. Rows are
split by seeded fraction, by a column naming each row's split, or by time
(everything before a cutoff trains: the honest split for forecasting).

Each import is a TFDS dataset (array_record) at `<data_dir>/<name>/<version>/`
with `schema.json` beside its files. The version's fingerprint covers the
source bytes and the import options: importing unchanged files again does
nothing, and changed or added files make the next version, which is what
`dataset.name="<name>"` then trains on (`"<name>:1.0.3"` pins one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_datasets as tfds

from jaxtrain.files import publish, write_text
from jaxtrain.data import columns, records, store
from jaxtrain.data.columns import RowError, parse_time  # noqa: F401  (re-exported)
from jaxtrain.errors import UserError, require

log = logging.getLogger("jaxtrain")

KINDS = ("int", "float", "category", "text", "time")
LABEL_KINDS = ("class", "value")
SPLITS = ("train", "validation", "test")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SCHEMA_FILE = "schema.json"


def _option(default, help_text: str):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class ImportSpec:
  """What `jaxtrain data import` does; the same fields as a config's `data_import`."""
  sources: tuple[str, ...] = _option((), "CSV, Parquet, JSON Lines or .npz files, or folders "
                                     "with one sub-folder per class (text files or images)")
  name: str = _option("", "the dataset's name (lower case, digits, _); configs train it by "
                      "dataset.name; each import of changed files is a new version NAME:1.0.k")
  label: str = _option("label", "the column to predict")
  label_kind: str = _option("", "class or value (default: inferred: decimals, and integers "
                            "with over 50 distinct values, are values; the rest classes)")
  columns: str = _option("", "declared kinds, e.g. 'date=time,store=category' (kinds: int, "
                         "float, category, text, time); the rest are inferred from all rows")
  ignore: str = _option("", "columns not to import, e.g. 'id,comment'")
  split: str = _option("fraction", "fraction (a seeded permutation), column:COL (COL names each "
                       "row's split: train, validation or test) or time:COL (by --cutoffs)")
  fractions: str = _option("0.8,0.1,0.1", "train, validation, test shares for --split fraction")
  cutoffs: str = _option("", "for --split time:COL: 'validation starts,test starts' (dates or "
                         "times); earlier rows train")
  seed: int = _option(0, "the permutation's seed for --split fraction")
  lags: str = _option("", "e.g. '1,7': add the label 1 and 7 periods (--frequency) earlier in "
                      "its series as columns; rows without that history are dropped")
  series: str = _option("", "the column naming each row's series, for --lags (e.g. store)")
  frequency: str = _option("", "the period of --lags: 30min, 1h, 1d, 7d (default: the most "
                           "common step between a series' consecutive times)")
  gaps: str = _option("refuse", "a lag whose time has no row (a gap in the series): refuse "
                      "(the import stops, naming it) or drop (the row is dropped, counted)")
  image_size: str = _option("", "'H,W': resize folder images to this (default: as they are, "
                            "which must then all be one size)")
  delimiter: str = _option("", "the field separator of text tables, one character or several "
                           "(MovieLens 1M's ::) (default: tab for .tsv, else sniffed from the "
                           "first lines: , tab ; |)")
  names: str = _option("", "column names for text tables without a header row, e.g. "
                       "'label,text'")
  beam: str = _option("", "write with Apache Beam (pip install 'jaxtrain[beam]'): its pipeline "
                      "options, e.g. '--runner=DirectRunner --direct_num_workers=4' or a Dataflow/"
                      "Spark/Flink runner's; each source file is read by one worker")
  max_memory_mb: int = _option(512, "about the most memory a table import holds at once: files "
                               "are read and written in chunks of 1/256 of this")

  @classmethod
  def from_config(cls, c) -> "ImportSpec":
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: c[k] for k in c.keys() if k in fields}
    values["sources"] = tuple(values.get("sources") or ())
    return cls(**values)

  def options(self) -> dict:
    """The options that shape the dataset (what, with the bytes, its fingerprint covers).

    Options added since an import was made count at their defaults, so the
    same files with the same options are still that import.
    """
    values = {k: v for k, v in dataclasses.asdict(self).items()
              if k not in ("sources", "name", "max_memory_mb", "beam")}
    for added, default in (("delimiter", ""), ("names", ""), ("frequency", ""), ("gaps", "refuse")):
      if values[added] == default:
        del values[added]
    return values


# --- reading rows: (file, line, {column: raw value}) ----------------------------------

@contextlib.contextmanager
def _text_file(path: Path):
  """A UTF-8 text file (a byte-order mark is dropped); bytes that are not UTF-8 are one line."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      yield f
  except UnicodeDecodeError as e:
    raise columns.not_utf8(str(path), e) from None


def _text_table_rows(path: Path, delimiter: str, names: str):
  """Delimited text read as the streamed import reads it (sniffed delimiter, --names, zips)."""
  header_lines = 0 if names else 1
  for chunk in columns.chunks(path, delimiter=delimiter, names=names):
    values = {k: v.to_pylist() for k, v in chunk.columns.items()}
    for i in range(len(chunk)):
      yield chunk.first_row + i + 1 + header_lines, {k: v[i] for k, v in values.items()}


def _jsonl_rows(path: Path):
  with _text_file(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path} line {line_no}: not a JSON object: {e.msg}") from None
      if not isinstance(row, dict):
        raise UserError(f"{path} line {line_no}: not a JSON object")
      yield line_no, row


def _parquet_rows(path: Path):
  import pyarrow.parquet as pq
  try:
    table = pq.read_table(path)
  except Exception as e:
    raise UserError(f"cannot read Parquet file {path}: {str(e).splitlines()[0]}") from None
  for i, row in enumerate(table.to_pylist(), 1):
    yield i, row


def _npz_rows(path: Path):
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # object arrays (pickles) are refused here too
    raise UserError(f"cannot read {path} as .npz without pickle: {str(e).splitlines()[0]}") from None
  scalars = sorted(k for k, v in arrays.items() if v.ndim == 0)
  if scalars:
    raise UserError(f"{path}: arrays {', '.join(scalars)} hold one value, not a row per example")
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise UserError(f"{path}: arrays have different lengths {lengths}")
  for i in range(next(iter(lengths.values()), 0)):
    yield i + 1, {k: v[i] for k, v in arrays.items()}


def _folder_rows(path: Path, label: str, image_size):
  """One row per file in `path/<class>/`: {"text": ...} or {"image": ...}, plus the label.

  Files beside the class folders (a README) are not examples; hidden files
  (.DS_Store) are skipped; a folder of images holds images only.
  """
  by_class: dict[str, list[Path]] = {}
  for f in source_files([str(path)]):
    parts = f.relative_to(path).parts
    if len(parts) > 1:
      by_class.setdefault(parts[0], []).append(f)
  if not by_class:
    raise UserError(f"{path} has no class sub-folders (expected {path}/<class>/<file>)")
  images = any(f.suffix.lower() in _IMAGE_SUFFIXES for files in by_class.values() for f in files)
  for name in sorted(by_class):
    for f in by_class[name]:
      if images and f.suffix.lower() not in _IMAGE_SUFFIXES:
        raise UserError(f"{f} is not an image ({f.suffix or 'no suffix'}), but {path} holds "
                        f"images ({', '.join(_IMAGE_SUFFIXES)}): move it out of the folder")
      if images:
        yield f, 1, {"image": _read_image(f, image_size), label: name}
      else:
        try:
          yield f, 1, {"text": f.read_text(encoding="utf-8"), label: name}
        except UnicodeDecodeError as e:
          raise UserError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_image(path: Path, size):
  Image = require("PIL.Image", "images", "importing images")
  try:
    with Image.open(path) as im:
      im = im.convert("L" if im.mode in ("L", "1", "P") and size is None else "RGB")
      if size is not None:
        im = im.resize((size[1], size[0]))
      array = np.asarray(im, np.uint8)
  except Exception as e:
    raise UserError(f"{path}: cannot read image: {e}") from None
  return array[..., None] if array.ndim == 2 else array


_READERS = {".jsonl": _jsonl_rows, ".json": _jsonl_rows,
            ".parquet": _parquet_rows, ".npz": _npz_rows}


def source_files(sources) -> list[Path]:
  """Every file the import reads, in a fixed order (what the fingerprint covers)."""
  files = []
  for s in sources:
    p = Path(s).expanduser()
    if p.is_dir():
      inside = p.resolve()
      for f in sorted(f for f in p.rglob("*") if f.is_file()):
        if any(part.startswith(".") for part in f.relative_to(p).parts):
          continue  # hidden files and folders (.DS_Store, .git) are not data
        if not f.resolve().is_relative_to(inside):
          raise UserError(f"{f} links to {f.resolve()}, outside {p}: an import reads only what "
                          "its folder holds; copy the file in instead")
        files.append(f)
    elif p.is_file():
      files.append(p)
    else:
      raise UserError(f"data source {s} does not exist")
  if not files:
    raise UserError(f"the data sources {', '.join(sources)} hold no files")
  return files


def read_rows(spec: ImportSpec) -> Iterator[tuple[Path, int, dict]]:
  image_size = tuple(int(x) for x in spec.image_size.split(",")) if spec.image_size else None
  for s in spec.sources:
    p = Path(s).expanduser()
    if p.is_dir():
      yield from _folder_rows(p, spec.label, image_size)
      continue
    reader = _READERS.get(p.suffix.lower())
    if reader is None and columns.is_table(p):
      reader = functools.partial(_text_table_rows, delimiter=spec.delimiter, names=spec.names)
    if reader is None:
      raise UserError(f"{p}: unknown file type {p.suffix!r} (expected delimited text, "
                      f"{', '.join(sorted(_READERS))}, .zip, or a folder per class)")
    for line, row in reader(p):
      yield p, line, row


# --- kinds: parsing each value, inferring each column ----------------------------------

def parse(value, kind: str):
  """`value` as `kind`; a RowError says why it is not one."""
  if kind == "float" and (value is None or (isinstance(value, str) and
                                            value.strip().lower() in columns.MISSING)):
    return math.nan  # a missing number: imputed by the preprocessing (columns.py)
  if value is None or (isinstance(value, str) and not value.strip() and kind not in ("text", "category")):
    raise RowError("missing value")
  if kind in ("int",):
    if isinstance(value, (bool, np.bool_)):
      raise RowError(f"{value!r} is not an integer")
    try:
      number = float(value)
      if not number.is_integer():
        raise ValueError
      return int(number)
    except (TypeError, ValueError):
      raise RowError(f"{value!r} is not an integer") from None
  if kind in ("float", "value"):
    try:
      number = float(value)
    except (TypeError, ValueError):
      raise RowError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
      raise RowError(f"{value!r} is not a finite number")
    return number
  if kind == "time":
    return parse_time(value)
  if kind in ("category", "text", "class"):
    if isinstance(value, (dict, list)):
      raise RowError(f"{value!r} is not a single value")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
      value = int(value)
    return value.decode() if isinstance(value, bytes) else str(value)
  if kind == "tensor":
    return np.asarray(value)
  raise ValueError(kind)


def _infer(values: list) -> str:
  """The narrowest kind every value of a column parses as.

  "nan" and "inf" read as numbers here, so a column of numbers stays numeric
  and validation names the cell that is not finite (instead of the column
  becoming a category).
  """
  if any(isinstance(v, np.ndarray) and v.ndim > 0 for v in values):
    return "tensor"
  for kind in ("int", "float"):
    try:
      for v in values:
        try:
          parse(v, kind)
        except RowError as e:
          if kind != "float" or "finite" not in str(e):
            raise
      return kind
    except RowError:
      pass
  strings = [str(v) for v in values if v is not None]
  if strings and all(re.match(r"^\d{4}[-/]\d{2}[-/]\d{2}", s) for s in strings):
    try:
      for s in strings:
        parse_time(s)
      return "time"
    except RowError:
      pass
  words = sum(len(s.split()) for s in strings) / max(len(strings), 1)
  return "text" if words > 3 else "category"


def _declared(text: str, what: str) -> dict[str, str]:
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    col, sep, kind = part.partition("=")
    if not sep or kind not in KINDS:
      raise UserError(f"{what}: {part!r} should be column=kind with kind one of {', '.join(KINDS)}")
    out[col.strip()] = kind
  return out


def feature_name(column: str) -> str:
  """A column name as a TFDS feature name (lower case letters, digits, underscores)."""
  name = re.sub(r"[^0-9a-zA-Z_]+", "_", column.strip()).strip("_").lower()
  return name if name and not name[0].isdigit() else f"c_{name}"


def _checked_declarations(declared: dict, names: list[str], spec: ImportSpec) -> str:
  """Refuses --columns naming absent columns and an unknown --label_kind; returns the latter."""
  unknown = set(declared) - set(names)
  if unknown:
    raise UserError(f"--columns names {', '.join(sorted(unknown))}, not in the data "
                    f"(columns: {', '.join(names)})")
  if spec.label_kind and spec.label_kind not in LABEL_KINDS:
    raise UserError(f"--label_kind={spec.label_kind!r} must be one of {', '.join(LABEL_KINDS)}")
  return spec.label_kind


def infer_schema(rows: list[tuple[Path, int, dict]], spec: ImportSpec) -> dict:
  """{"columns": {column: kind}, "label": ..., "label_kind": ..., "class_names": [...]}."""
  ignored = {c.strip() for c in spec.ignore.split(",") if c.strip()}
  if spec.split.startswith("column:"):
    ignored.add(spec.split.partition(":")[2])
  declared = _declared(spec.columns, "--columns")
  names = list(dict.fromkeys(c for _, _, row in rows for c in row))
  if spec.label not in names:
    raise UserError(f"no column {spec.label!r} to use as the label (columns: {', '.join(names)}); "
                    "set --label")
  columns = {}
  for col in names:
    if col in ignored or col == spec.label:
      continue
    columns[col] = declared.get(col) or _infer([row.get(col) for _, _, row in rows])
  label_kind = _checked_declarations(declared, names, spec)
  if not label_kind:
    values = [row.get(spec.label) for _, _, row in rows]
    kind = _infer(values)
    few = len({str(v) for v in values}) <= 50
    label_kind = "value" if kind == "float" or (kind == "int" and not few) else "class"
  return {"columns": columns, "label": spec.label, "label_kind": label_kind}


def _class_order(names: set[str]) -> list[str]:
  if all(re.fullmatch(r"-?\d+", n) for n in names):
    return sorted(names, key=int)
  return sorted(names)


def validate_rows(rows, schema) -> tuple[dict[str, list], list[tuple[Path, int]]]:
  """Column-wise parsed values; every bad value of every row is one error, reported together."""
  columns = dict(schema["columns"], **{schema["label"]: schema["label_kind"]})
  parsed: dict[str, list] = {c: [] for c in columns}
  where, errors = [], []
  for path, line, row in rows:
    values = {}
    for col, kind in columns.items():
      try:
        values[col] = parse(row.get(col), kind)
      except RowError as e:
        errors.append(f"{path} line {line}, column {col!r}: {e}")
    if len(values) == len(columns):
      for col, v in values.items():
        parsed[col].append(v)
      where.append((path, line))
  if errors:
    more = f" (and {len(errors) - 1} more bad values)" if len(errors) > 1 else ""
    raise UserError(errors[0] + more)
  for col, kind in schema["columns"].items():
    if kind == "tensor":
      shapes = {np.shape(v) for v in parsed[col]}
      if len(shapes) > 1:
        raise UserError(f"column {col!r} holds arrays of different shapes {sorted(shapes)[:3]}; "
                        "set --image_size for a folder of images")
  return parsed, where


# --- derived columns and splits -------------------------------------------------------

_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_frequency(text: str) -> int:
  """Seconds from '30min', '1h', '1d', '7d', '1w' or a number of seconds."""
  match = re.fullmatch(r"\s*(\d+)\s*(s|min|h|d|w)?\s*", text or "")
  if not match or int(match.group(1)) <= 0:
    raise UserError(f"--frequency={text!r} should be a count and a unit: 30min, 1h, 1d, 7d "
                    "(or seconds)")
  return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _describe_seconds(seconds: int) -> str:
  for unit in ("w", "d", "h", "min"):
    if seconds % _UNITS[unit] == 0:
      return f"{seconds // _UNITS[unit]}{unit}"
  return f"{seconds}s"


def add_lags(parsed: dict[str, list], schema: dict, spec: ImportSpec, where: list):
  """Adds `<label>_lag_k`: the label k periods earlier in the row's series.

  A period is `--frequency` (e.g. 1h), or the most common step between a
  series' consecutive times. The lag is found by time, not by counting rows:
  a row whose lag time is before its series' first row has no history and is
  dropped; one whose lag time falls in a gap (a missing hour) is refused,
  naming it, or with `--gaps drop` dropped and counted. Never misaligned.
  """
  lags = [int(k) for k in spec.lags.split(",") if k.strip()]
  if not lags:
    return parsed, where
  time_cols = [c for c, k in schema["columns"].items() if k == "time"]
  if not time_cols:
    raise UserError("--lags needs a time column (declare one with --columns col=time)")
  if spec.series and spec.series not in parsed:
    raise UserError(f"--series={spec.series!r} is not a column")
  if spec.gaps not in ("refuse", "drop"):
    raise UserError(f"--gaps={spec.gaps!r} must be refuse or drop")
  n = len(where)
  names, codes = np.unique(np.asarray([str(v) for v in (parsed[spec.series] if spec.series
                                                        else [""] * n)]), return_inverse=True)
  times = np.asarray(parsed[time_cols[0]], np.int64)
  target = np.asarray(parsed[schema["label"]], np.float64)
  order = np.lexsort((times, codes))
  same = codes[order][1:] == codes[order][:-1]
  steps = np.diff(times[order])[same]
  if (steps == 0).any():
    at = np.flatnonzero(same & (np.diff(times[order]) == 0))[0]
    (_, l1), (p2, l2) = where[order[at]], where[order[at + 1]]
    raise UserError(f"{p2} line {l2}: series {str(names[codes[order[at]]])!r} already has a row at this "
                    f"time (line {l1}); lags need one row per series and time")
  if spec.frequency:
    freq, how = parse_frequency(spec.frequency), "declared"
  else:
    if not (steps > 0).any():
      raise UserError("--lags: no series has two rows; nothing to lag")
    values, counts = np.unique(steps, return_counts=True)
    freq, how = int(values[np.argmax(counts)]), "detected: the most common step"
  first = np.full(len(names), np.iinfo(np.int64).max)
  np.minimum.at(first, codes, times)
  span = int(times.max() - min(times.min(), first.min()) + 1 + max(lags) * freq)
  base = int(times.min() - max(lags) * freq)
  keys = codes.astype(np.int64) * span + (times - base)
  sorted_keys = keys[order]
  keep = np.ones(n, bool)
  lagged, gap_lag = {}, np.zeros(n, np.int64)  # the first lag of each row that falls in a gap
  for k in reversed(lags):
    pos = np.clip(np.searchsorted(sorted_keys, keys - k * freq), 0, n - 1)
    found = sorted_keys[pos] == keys - k * freq
    in_gap = (times - k * freq >= first[codes]) & ~found  # after the series began: a gap
    gap_lag[in_gap] = k
    keep &= found
    lagged[k] = np.where(found, target[order[pos]], 0.0)
  gaps = gap_lag > 0
  if gaps.any() and spec.gaps == "refuse":
    i = int(np.flatnonzero(gaps)[0])
    path, line = where[i]
    k = int(gap_lag[i])
    missing = dt.datetime.fromtimestamp(times[i] - k * freq, dt.timezone.utc).isoformat()
    raise UserError(f"{path} line {line}: series {str(names[codes[i]])!r} has no row at {missing} "
                    f"(lag {k} x {_describe_seconds(freq)}, the frequency {how}): "
                    f"{int(gaps.sum())} rows' lags fall in gaps; fill them in the file, set "
                    "--frequency, or pass --gaps drop")
  log.info("lags %s (every %s, %s): dropped %d rows with too little history and %d whose lags "
           "fall in gaps", lags, _describe_seconds(freq), how, int((~keep & ~gaps).sum()),
           int(gaps.sum()))
  keep_rows = np.flatnonzero(keep)
  out = {c: [v[i] for i in keep_rows] for c, v in parsed.items()}
  for k in lags:
    out[f"{schema['label']}_lag_{k}"] = [float(x) for x in lagged[k][keep_rows]]
    schema["columns"][f"{schema['label']}_lag_{k}"] = "float"
  schema["lag_frequency_seconds"] = freq
  return out, [where[i] for i in keep_rows]


def fraction_codes(spec: ImportSpec, n: int) -> np.ndarray:
  """`--split fraction`: each of n rows' split (an index into SPLITS), by a seeded permutation."""
  try:
    fractions = [float(x) for x in spec.fractions.split(",")]
  except ValueError:
    raise UserError(f"--fractions={spec.fractions!r} should be three numbers, e.g. 0.8,0.1,0.1") from None
  if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
    raise UserError(f"--fractions={spec.fractions!r} should be three fractions (train, "
                    "validation, test) summing to 1")
  order = np.random.default_rng(spec.seed).permutation(n)
  bounds = np.round(np.cumsum(fractions) * n).astype(int)
  codes = np.empty(n, np.uint8)
  for i, (lo, hi) in enumerate(zip([0, *bounds[:2]], bounds)):
    codes[order[lo:hi]] = i
  return codes


def time_codes(spec: ImportSpec, times: np.ndarray) -> np.ndarray:
  """`--split time:COL`: before the first cutoff trains, then validation, then test."""
  cuts = [parse_time(c) for c in spec.cutoffs.split(",") if c.strip()] if spec.cutoffs else []
  if len(cuts) != 2 or cuts[0] > cuts[1]:
    raise UserError(f"--cutoffs={spec.cutoffs!r} should be two times, where validation then "
                    "test start (e.g. 2024-05-01,2024-06-01)")
  return np.where(times < cuts[0], 0, np.where(times < cuts[1], 1, 2)).astype(np.uint8)


def assign_splits(parsed, rows_where, spec: ImportSpec, raw_split_column=None) -> np.ndarray:
  """The split name of every row."""
  n = len(rows_where)
  kind, _, column = spec.split.partition(":")
  if kind == "fraction":
    return np.asarray(SPLITS, object)[fraction_codes(spec, n)]
  if kind == "column":
    return np.asarray([str(v) for v in raw_split_column], object)
  if kind == "time":
    if column not in parsed:
      raise UserError(f"--split=time:{column}: no column {column!r}")
    return np.asarray(SPLITS, object)[time_codes(spec, np.asarray(parsed[column], np.int64))]
  raise UserError(f"--split={spec.split!r} must be fraction, column:COL or time:COL")


# --- fingerprints, versions, writing ---------------------------------------------------

def fingerprints(spec: ImportSpec) -> tuple[str, str]:
  """(this import's fingerprint, the one versions up to 0.1 recorded), in one read of the files.

  The fingerprint covers the options and what the rows depend on: each file's
  bytes in the order read, its type (suffix) and, inside a class folder, its
  path there (the class). Not where the files are or what they are called: the
  same bytes imported from elsewhere are the same version. Older versions
  hashed file names too; an import that matches either is unchanged.
  """
  options = json.dumps(spec.options(), sort_keys=True).encode()
  new, legacy = hashlib.sha256(options), hashlib.sha256(options)
  for source in spec.sources:
    root = Path(source).expanduser()
    for f in source_files([source]):
      meaning = f.relative_to(root).as_posix() if root.is_dir() else f.suffix.lower()
      new.update(meaning.encode() + b"\0")
      legacy.update(f.name.encode() + b"\0")
      with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
          new.update(chunk)
          legacy.update(chunk)
  return new.hexdigest(), legacy.hexdigest()


def _features(schema, class_names, shapes):
  kinds = {"int": tfds.features.Scalar(np.int64), "float": tfds.features.Scalar(np.float32),
           "time": tfds.features.Scalar(np.int64), "category": tfds.features.Text(),
           "text": tfds.features.Text()}
  features = {}
  for col, kind in schema["columns"].items():
    if kind == "tensor":
      shape, dtype = shapes[col]
      features[feature_name(col)] = tfds.features.Tensor(shape=shape, dtype=dtype)
    else:
      features[feature_name(col)] = kinds[kind]
  features["label"] = (tfds.features.ClassLabel(names=class_names) if schema["label_kind"] == "class"
                       else tfds.features.Scalar(np.float32))
  return tfds.features.FeaturesDict(features)


class TableDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """An imported table: the examples are given, so the builder only writes them."""
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, name, version, features, examples, **kwargs):
    self.name, self.VERSION = name, tfds.core.Version(version)
    self._features, self._examples = features, examples
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=self._features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: iter(examples) for split, examples in self._examples.items()}

  def _generate_examples(self):
    raise NotImplementedError


def _imported_as(data_dir: str, name: str, fingerprints_: tuple[str, ...]) -> str | None:
  """The directory of the version imported with one of these fingerprints, if any."""
  for entry in store.read_history(data_dir, name):
    if entry["fingerprint"] in fingerprints_ and (Path(data_dir) / name / entry["version"]).is_dir():
      return str(Path(data_dir) / name / entry["version"])
  return None


def run_import(spec: ImportSpec, data_dir: str) -> tuple[str, bool]:
  """Imports `spec.sources`; returns (the version's directory, whether it is new)."""
  if not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name or ""):
    raise UserError(f"--name={spec.name!r} must be lower case letters, digits and underscores")
  files = source_files(spec.sources)
  fp, legacy = fingerprints(spec)
  imported = _imported_as(data_dir, spec.name, (fp, legacy))
  if imported is not None:
    return imported, False
  if not spec.lags and all(Path(s).expanduser().is_file() and columns.is_table(Path(s))
                           for s in spec.sources):
    return _import_tables(spec, data_dir, files, fp, legacy)

  rows = list(read_rows(spec))
  if not rows:
    raise UserError(f"{', '.join(spec.sources)}: no rows")
  schema = infer_schema(rows, spec)
  parsed, where = validate_rows(rows, schema)
  split_column = None
  if spec.split.startswith("column:"):
    col = spec.split.partition(":")[2]
    if any(col not in r for _, _, r in rows):
      raise UserError(f"--split={spec.split}: some rows have no column {col!r}")
    split_column = [r[col] for _, _, r in rows]
  parsed, where = add_lags(parsed, schema, spec, where)
  splits = assign_splits(parsed, where, spec, split_column)
  unknown = sorted(set(splits) - set(SPLITS))
  if unknown:
    raise UserError(f"--split={spec.split}: values {unknown} are not train, validation or test")

  class_names = None
  if schema["label_kind"] == "class":
    class_names = _class_order(set(parsed[schema["label"]]))
    schema["class_names"] = class_names
  shapes = {c: (np.shape(parsed[c][0]), np.asarray(parsed[c][0]).dtype)
            for c, k in schema["columns"].items() if k == "tensor"}
  schema["features"] = {c: feature_name(c) for c in schema["columns"]}
  if len(set(schema["features"].values()) | {"label"}) != len(schema["features"]) + 1:
    raise UserError(f"columns {list(schema['features'])} do not have distinct names once "
                    "made feature names (letters, digits, _); rename or --ignore one")
  examples = {s: [] for s in SPLITS}
  for i, split in enumerate(splits):
    example = {schema["features"][c]: parsed[c][i] for c in schema["columns"]}
    example["label"] = parsed[schema["label"]][i]
    examples[split].append((i, example))
  examples = {s: e for s, e in examples.items() if e}
  if "train" not in examples:
    raise UserError(f"--split={spec.split}: no row falls in the train split")

  with store.lock(data_dir, spec.name):
    imported = _imported_as(data_dir, spec.name, (fp, legacy))
    if imported is not None:  # another import of the same files finished while this one read
      return imported, False
    history = store.read_history(data_dir, spec.name)
    version = f"1.0.{max((int(e['version'].split('.')[-1]) + 1 for e in history), default=0)}"
    # A folder of this version without a history entry is what an import killed after
    # writing it left behind: not a dataset anyone trained on. It is replaced.
    shutil.rmtree(Path(data_dir) / spec.name / version, ignore_errors=True)
    builder = TableDataset(name=spec.name, version=version,
                           features=_features(schema, class_names, shapes), examples=examples,
                           data_dir=data_dir, file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own banner
      builder.download_and_prepare()
    schema.update(version=version, fingerprint=fp, files=[str(f) for f in files],
                  options=spec.options(), num_examples={s: len(e) for s, e in examples.items()})
    _write_json(Path(builder.data_dir) / SCHEMA_FILE, schema)
    history.append({"version": version, "fingerprint": fp, "files": [str(f) for f in files],
                    "num_examples": schema["num_examples"],
                    "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    _write_json(store.history_path(data_dir, spec.name), history)
  return str(builder.data_dir), True


# --- tables, column-wise and in bounded chunks (columns.py, records.py) -------------------

def _table_chunks(spec: ImportSpec):
  # A chunk's rows take several times their bytes in the file once parsed, converted
  # and encoded (a length array per protobuf part), and pyarrow's streaming CSV reader
  # holds more the larger its blocks: 1/256 of the budget per chunk.
  block = max(1 << 20, (spec.max_memory_mb << 20) // 256)
  for source in spec.sources:
    yield from columns.chunks(Path(source).expanduser(), delimiter=spec.delimiter,
                              names=spec.names, block_bytes=block)


class _Errors:
  """The first bad value (in file and row order) and how many there are, across chunks."""

  def __init__(self):
    self.count, self.first, self.order = 0, None, None

  def add(self, count: int, error, order) -> None:
    if count:
      self.count += count
      if self.first is None or order < self.order:
        self.first, self.order = error, order

  def raise_any(self, spec: ImportSpec) -> None:
    if self.first is not None:
      raise columns.located(self.first, delimiter=spec.delimiter, names=spec.names,
                            more=self.count - 1)


def _scan_tables(spec: ImportSpec):
  """Pass 1: every column's kind (declared, or inferred from all rows), checked; row count;
  the split column's values where the split needs them."""
  ignored = {c.strip() for c in spec.ignore.split(",") if c.strip()}
  split_kind, _, split_col = spec.split.partition(":")
  if split_kind == "column":
    ignored.add(split_col)
  declared = _declared(spec.columns, "--columns")
  names: list[str] = []
  stats: dict[str, columns.Stats] = {}
  errors, split_values, rows, files = _Errors(), [], 0, {}
  file_rows: dict[str, int] = {}
  for chunk in _table_chunks(spec):
    files.setdefault(chunk.path, len(files))
    for col in chunk.columns:
      if col not in stats:
        names.append(col)
        # A label's classes are its distinct values, all of them; a label with more than
        # the cap of distinct values is not a class label unless declared one.
        cap = (1 << 62 if spec.label_kind == "class" else 10 * columns.DISTINCT_CAP
               ) if col == spec.label else columns.DISTINCT_CAP
        stats[col] = columns.Stats(cap=cap)
    if spec.label not in chunk.columns:
      raise UserError(f"no column {spec.label!r} to use as the label (columns: "
                      f"{', '.join(chunk.columns)}); set --label")
    for order, col in enumerate(names):
      if col in ignored and col != split_col:
        continue
      kind = "value" if col == spec.label and spec.label_kind == "value" else declared.get(col)
      stats[col].update(chunk, col, infer=kind is None)
      count, error = columns.check(chunk, col, kind or "", required=col == spec.label)
      errors.add(count, error, (files[chunk.path], error.row if error else 0, order))
    if split_kind == "column":
      if split_col not in chunk.columns:
        raise UserError(f"--split={spec.split}: some rows have no column {split_col!r}")
      split_values.append(chunk.columns[split_col])
    elif split_kind == "time" and split_col in chunk.columns:
      split_values.append(chunk.columns[split_col])
    rows += len(chunk)
    file_rows[chunk.path] = file_rows.get(chunk.path, 0) + len(chunk)
  if not rows:
    raise UserError(f"{', '.join(spec.sources)}: no rows")
  errors.raise_any(spec)
  label_kind = _checked_declarations(declared, names, spec)
  kinds = {}
  try:
    for col in names:
      if col not in ignored and col != spec.label:
        kinds[col] = declared.get(col) or stats[col].kind(col)
    if not label_kind:
      label_stats = stats[spec.label]
      kind = label_stats.kind(spec.label)
      few = len(label_stats.distinct) <= 50
      label_kind = "value" if kind == "float" or (kind == "int" and not few) else "class"
  except columns.LocatedError as e:
    raise columns.located(e, delimiter=spec.delimiter, names=spec.names) from None
  schema = {"columns": kinds, "label": spec.label, "label_kind": label_kind}
  if label_kind == "class":
    classes = stats[spec.label].distinct
    if len(classes) > stats[spec.label].cap:
      raise UserError(f"the label {spec.label!r} has over {stats[spec.label].cap:,} distinct values: "
                      "a value to predict? set --label_kind value (or --label_kind class to "
                      "keep them all as classes)")
    schema["class_names"] = _class_order(set(columns.class_strings(pa.array(list(classes)))
                                             .to_pylist()))
  schema["summary"] = [{"column": col, "missing": stats[col].missing,
                        "kind": kinds.get(col, "label" if col == spec.label else "ignored"),
                        "examples": [str(v)[:40] for v in stats[col].examples]}
                       for col in names if col in stats]  # a list: the file's column order
  schema["_file_rows"] = file_rows
  return schema, rows, split_values


def _split_codes(spec: ImportSpec, rows: int, split_values, schema) -> np.ndarray:
  """Each row's split as an index into SPLITS, the same assignment as `assign_splits`."""
  kind, _, column = spec.split.partition(":")
  if kind == "fraction":
    return fraction_codes(spec, rows)
  if kind == "column":
    values = pa.chunked_array(split_values).combine_chunks() if split_values else pa.array([])
    index = pc.index_in(values, value_set=pa.array(SPLITS))
    if pc.any(pc.is_null(index)).as_py():
      unknown = sorted(set(pc.filter(values, pc.is_null(index)).to_pylist()))
      raise UserError(f"--split={spec.split}: values {unknown[:5]} are not train, validation or test")
    return np.asarray(index).astype(np.uint8)
  if kind == "time":
    if column not in schema["columns"] or schema["columns"][column] != "time":
      raise UserError(f"--split=time:{column}: no time column {column!r} (declare it with "
                      f"--columns {column}=time)")
    return time_codes(spec, np.concatenate([columns.to_numpy(v, "time") for v in split_values]))
  raise UserError(f"--split={spec.split!r} must be fraction, column:COL or time:COL")


def _encoded(chunk, schema, class_index) -> dict[str, tuple[str, Any]]:
  out = {}
  for col, kind in schema["columns"].items():
    array = chunk.columns.get(col)
    if array is None:
      array = pa.array([""] * len(chunk), pa.string())
    if kind in ("category", "text"):
      if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
      out[schema["features"][col]] = ("bytes", array)
    else:
      try:
        values = columns.to_numpy(array, kind)
      except columns._BadTime as e:
        raise columns.located(columns.LocatedError(chunk.path, chunk.first_row + e.index, col, str(e)))
      out[schema["features"][col]] = ("float" if kind == "float" else "int", values)
  label = chunk.columns[schema["label"]]
  if schema["label_kind"] == "class":
    out["label"] = ("int", np.asarray(pc.index_in(columns.class_strings(label),
                                                  value_set=class_index)).astype(np.int64))
  else:
    out["label"] = ("float", columns.to_numpy(label, "value"))
  return out


def _import_tables(spec: ImportSpec, data_dir: str, files, fp: str, legacy: str):
  """CSV/TSV/zip/JSONL/Parquet: two passes over the files, one chunk in memory at a time."""
  schema, rows, split_values = _scan_tables(spec)
  file_rows = schema.pop("_file_rows")
  codes = _split_codes(spec, rows, split_values, schema)
  del split_values
  counts = np.bincount(codes, minlength=len(SPLITS))
  if not counts[0]:
    raise UserError(f"--split={spec.split}: no row falls in the train split")
  schema["features"] = {c: feature_name(c) for c in schema["columns"]}
  if len(set(schema["features"].values()) | {"label"}) != len(schema["features"]) + 1:
    raise UserError(f"columns {list(schema['features'])} do not have distinct names once "
                    "made feature names (letters, digits, _); rename or --ignore one")
  class_names = schema.get("class_names")
  with store.lock(data_dir, spec.name):
    imported = _imported_as(data_dir, spec.name, (fp, legacy))
    if imported is not None:
      return imported, False
    history = store.read_history(data_dir, spec.name)
    version = f"1.0.{max((int(e['version'].split('.')[-1]) + 1 for e in history), default=0)}"
    final = Path(data_dir) / spec.name / version
    partial = Path(data_dir) / spec.name / f"incomplete.{version}"
    shutil.rmtree(final, ignore_errors=True)  # see run_import: left by a killed import
    shutil.rmtree(partial, ignore_errors=True)
    schema.update(version=version, fingerprint=fp, files=[str(f) for f in files],
                  options=spec.options(),
                  num_examples={s: int(n) for s, n in zip(SPLITS, counts) if n})
    if spec.beam:  # TFDS's Beam writer publishes the version's folder itself
      _write_with_beam(spec, data_dir, version, schema, class_names, codes, file_rows)
      _write_json(final / SCHEMA_FILE, schema)
    else:
      _write_tables(spec, schema, class_names, codes, counts, partial)
      publish(partial, final)
    history.append({"version": version, "fingerprint": fp, "files": schema["files"],
                    "num_examples": schema["num_examples"],
                    "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    _write_json(store.history_path(data_dir, spec.name), history)
  return str(final), True


def _write_tables(spec: ImportSpec, schema: dict, class_names, codes: np.ndarray,
                  counts: np.ndarray, partial: Path) -> None:
  """Pass 2: every chunk converted, encoded and written to its split's shards, in `partial`
  (removed if anything fails: a version's folder is whole or absent)."""
  class_index = pa.array(class_names or [], pa.string())
  partial.mkdir(parents=True)
  try:
    writers = {s: records.SplitWriter(str(partial), spec.name, s, int(n))
               for s, n in zip(SPLITS, counts) if n}
    row = 0
    for chunk in _table_chunks(spec):
      encoded = _encoded(chunk, schema, class_index)
      chunk_codes = codes[row:row + len(chunk)]
      for i, split in enumerate(SPLITS):
        take = np.flatnonzero(chunk_codes == i)
        if len(take):
          picked = {k: (kind, v.take(pa.array(take)) if kind == "bytes" else v[take])
                    for k, (kind, v) in encoded.items()}
          writers[split].write(*records.encode_examples(picked))
      row += len(chunk)
    infos = [w.close() for w in writers.values()]
    records.write_metadata(str(partial), spec.name, schema["version"],
                           _features(schema, class_names, {}), infos)
    _write_json(partial / SCHEMA_FILE, schema)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise


# --- Apache Beam: the second pass as a TFDS Beam pipeline ------------------------------------

def _write_with_beam(spec: ImportSpec, data_dir: str, version: str, schema: dict,
                     class_names, codes: np.ndarray, file_rows: dict[str, int]) -> None:
  """Writes the dataset with TFDS's Beam writer: one work item per source file.

  The first pass (kinds, checks, splits) has run here, in bounded memory;
  each Beam worker rereads its file in chunks and yields the rows of a split
  keyed by their global row number (so the order is the file order, as
  without Beam). TFDS's Beam writer serializes and shards them. Runs
  wherever the pipeline options say (DirectRunner locally; Dataflow, Spark or
  Flink on a cluster, where the files and data_dir must be on storage every
  worker reads, such as gs:// or a shared mount).
  """
  beam = require("apache_beam", "beam", "--beam imports")
  from apache_beam.options.pipeline_options import PipelineOptions
  items, start = [], 0
  for path, n in file_rows.items():
    items.append((path, start, codes[start:start + n]))
    start += n
  features = _features(schema, class_names, {})
  builder = BeamTableDataset(name=spec.name, version=version, features=features, items=items,
                             spec=spec, schema=schema, data_dir=data_dir,
                             file_format="array_record")
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_options=PipelineOptions(spec.beam.split())))
  del beam


def _file_examples(item, *, split: int, spec: ImportSpec, schema: dict):
  """(global row, example) of one source file's rows in `split` (a Beam worker's work)."""
  path, start, codes = item
  class_index = pa.array(schema.get("class_names") or [], pa.string())
  source = path.split(".zip:")[0] + ".zip" if ".zip:" in path else path
  row = 0
  for chunk in columns.chunks(Path(source), delimiter=spec.delimiter, names=spec.names,
                              block_bytes=max(1 << 20, (spec.max_memory_mb << 20) // 256)):
    if chunk.path != path:
      continue  # another member of the same zip: its own work item
    encoded = _encoded(chunk, schema, class_index)
    for i in np.flatnonzero(codes[row:row + len(chunk)] == split):
      yield start + row + int(i), {k: (v[int(i)].as_py() if kind == "bytes" else v[int(i)])
                                   for k, (kind, v) in encoded.items()}
    row += len(chunk)


class BeamTableDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """An imported table written by a Beam pipeline (`--beam`)."""
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, name, version, features, items, spec, schema, **kwargs):
    self.name, self.VERSION = name, tfds.core.Version(version)
    self._features, self._items, self._spec, self._schema = features, items, spec, schema
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=self._features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    import apache_beam as beam
    out = {}
    for index, split in enumerate(SPLITS):
      if any((codes == index).any() for _, _, codes in self._items):
        out[split] = (beam.Create(self._items)
                      | f"read {split}" >> beam.FlatMap(
                          _file_examples, split=index, spec=self._spec, schema=self._schema))
    return out

  def _generate_examples(self):
    raise NotImplementedError


def _write_json(path: Path, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2, sort_keys=True))  # the bytes imports always had


def schema_table(schema: dict) -> str:
  """The columns as imported: kind, missing values, examples (what to check, and declare
  with --columns where the inference is wrong)."""
  summary = schema.get("summary") or [
      {"column": c, "kind": k} for c, k in dict(schema["columns"], **{schema["label"]: "label"}).items()]
  kind = lambda s: f"label ({schema['label_kind']})" if s["column"] == schema["label"] else s["kind"]
  width = max([len(s["column"]) for s in summary] + [6])
  lines = [f"  {'column':<{width}}  {'kind':<13} {'missing':>8}  examples"]
  for s in summary:
    lines.append(f"  {s['column']:<{width}}  {kind(s):<13} {s.get('missing', 0):>8,}  "
                 f"{', '.join(s.get('examples', []))}")
  return "\n".join(lines)


def read_schema(dataset_dir: str) -> dict | None:
  """The import's schema for a dataset directory (None for datasets jaxtrain did not import)."""
  path = Path(dataset_dir) / SCHEMA_FILE
  if not path.exists():
    return None
  with open(path) as f:
    return json.load(f)


def read_prediction_rows(path: str, schema: dict, needed: set[str] | None = None
                         ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
  """Feature arrays (and labels, if the file has them) of a file to predict on.

  `needed`: the feature names the run's preprocessing reads (default: all);
  other columns may be absent.
  """
  spec = ImportSpec(sources=(path,), name="predict", label=schema["label"])
  rows = list(read_rows(spec))
  if not rows:
    raise UserError(f"{path}: no rows")
  has_label = all(schema["label"] in r for _, _, r in rows)
  columns = {c: k for c, k in schema["columns"].items()
             if needed is None or schema["features"][c] in needed}
  lag_cols = [c for c in columns if "_lag_" in c and c.startswith(schema["label"])]
  missing = [c for c in columns if c not in rows[0][2]]
  if missing:
    hint = " (lag columns must be given: the label k rows earlier)" if set(missing) & set(lag_cols) else ""
    raise UserError(f"{path} has no column(s) {', '.join(missing)}{hint}")
  check = {"columns": columns, "label": schema["label"],
           "label_kind": "class" if schema["label_kind"] == "class" else "value"}
  if not has_label:
    rows = [(p, l, dict(r, **{schema["label"]: "0"})) for p, l, r in rows]
  parsed, _ = validate_rows(rows, check)
  features = {}
  for col, kind in columns.items():
    name = schema["features"][col]
    if kind in ("text", "category"):
      features[name] = np.asarray([v.encode() for v in parsed[col]], object)
    elif kind == "tensor":
      features[name] = np.stack(parsed[col])
    else:
      features[name] = np.asarray(parsed[col], np.float32 if kind == "float" else np.int64)
  labels = None
  if has_label:
    values = parsed[schema["label"]]
    if schema["label_kind"] == "class":
      index = {n: i for i, n in enumerate(schema["class_names"])}
      unknown = sorted(set(values) - set(index))
      if unknown:
        raise UserError(f"{path}: labels {unknown[:5]} were not in the training data")
      labels = np.asarray([index[v] for v in values], np.int64)
    else:
      labels = np.asarray(values, np.float32)
  return features, labels
