"""Reading rows (file, line, {column: raw value}) from every format, their kinds, their values.

Kinds come from `columns.Stats`, the rule the streamed import applies to chunks, so a file
gets the same kinds whichever path reads it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from jaxtrain.data import columns
from jaxtrain.data.columns import RowError, parse_time
from jaxtrain.data.importing.spec import (
  ImportSpec,
  _IMAGE_SUFFIXES,
  _checked_declarations,
  _declared,
  source_files,
)
from jaxtrain.errors import UserError, require


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
  except (pa.ArrowException, OSError) as e:
    raise UserError(f"cannot read Parquet file {path}: {str(e).splitlines()[0]}") from None
  for i, row in enumerate(table.to_pylist(), 1):
    yield i, row


def _npz_rows(path: Path):
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # object arrays (pickles) are refused here too
    raise UserError(
      f"cannot read {path} as .npz without pickle: {str(e).splitlines()[0]}"
    ) from None
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
        raise UserError(
          f"{f} is not an image ({f.suffix or 'no suffix'}), but {path} holds "
          f"images ({', '.join(_IMAGE_SUFFIXES)}): move it out of the folder"
        )
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
  except Exception as e:  # Pillow: OSError for most files, its own types for bombs and modes
    raise UserError(f"{path}: cannot read image: {e}") from None
  return array[..., None] if array.ndim == 2 else array


_READERS = {
  ".jsonl": _jsonl_rows,
  ".json": _jsonl_rows,
  ".parquet": _parquet_rows,
  ".npz": _npz_rows,
}


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
      raise UserError(
        f"{p}: unknown file type {p.suffix!r} (expected delimited text, "
        f"{', '.join(sorted(_READERS))}, .zip, or a folder per class)"
      )
    for line, row in reader(p):
      yield p, line, row


def parse(value, kind: str):
  """`value` as `kind`; a RowError says why it is not one."""
  if kind == "float" and (
    value is None or (isinstance(value, str) and value.strip().lower() in columns.MISSING)
  ):
    return math.nan  # a missing number: imputed by the preprocessing (columns.py)
  if value is None or (
    isinstance(value, str) and not value.strip() and kind not in ("text", "category")
  ):
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


def _as_column(values: list, json_text: bool) -> pa.Array:
  """A column of rows' values as the streamed import reads the same file: text as strings
  (JSON values as their text, `json_text`), typed values (NumPy, Parquet's) as typed."""
  present = [v for v in values if v is not None]
  if not json_text and present and all(isinstance(v, (bool, np.bool_)) for v in present):
    values = [None if v is None else str(bool(v)) for v in values]  # yes/no: a category
  if json_text or all(isinstance(v, str) for v in values if v is not None):
    text = columns.json_text if json_text else (lambda v: "" if v is None else v)
    return pa.array([text(v) for v in values], pa.string())
  try:
    return pa.array([v.item() if isinstance(v, np.generic) else v for v in values])
  except (pa.ArrowException, TypeError, ValueError):  # mixed types: their text
    return pa.array(["" if v is None else str(v) for v in values], pa.string())


def _row_stats(
  rows: list[tuple[Path, int, dict]], col: str, *, infer: bool, cap: int, json_text: bool
) -> columns.Stats | None:
  """`col`'s Stats over `rows` (None for a column of arrays: a tensor), with the same rule as
  the streamed import's chunks: the same file gets the same kinds whichever path reads it.
  `json_text`: the rows come from JSON, whose values the streamed path reads as text."""
  values = [row.get(col) for _, _, row in rows]
  if any(isinstance(v, np.ndarray) and v.ndim > 0 for v in values):
    return None
  stats = columns.Stats(cap=cap)
  stats.update(columns.Chunk("", {col: _as_column(values, json_text)}, 0), col, infer=infer)
  return stats


def infer_schema(rows: list[tuple[Path, int, dict]], spec: ImportSpec) -> dict:
  """{"columns": {column: kind}, "label": ..., "label_kind": ..., "summary": [...]}: the kinds
  by `columns.Stats`, the rule the streamed import (`_scan_tables`) applies to chunks."""
  ignored = {c.strip() for c in spec.ignore.split(",") if c.strip()}
  if spec.split.startswith("column:"):
    ignored.add(spec.split.partition(":")[2])
  declared = _declared(spec.columns, "--columns")
  names = list(dict.fromkeys(c for _, _, row in rows for c in row))
  if spec.label not in names:
    raise UserError(
      f"no column {spec.label!r} to use as the label (columns: {', '.join(names)}); set --label"
    )
  label_kind = _checked_declarations(declared, names, spec)
  kinds, stats = {}, {}
  json_text = any(path.suffix.lower() in (".jsonl", ".json") for path, _, _ in rows)
  try:
    for col in names:
      if col in ignored:
        continue
      declared_kind = "value" if col == spec.label and label_kind == "value" else declared.get(col)
      cap = 1 << 62 if col == spec.label else columns.DISTINCT_CAP
      stats[col] = _row_stats(rows, col, infer=declared_kind is None, cap=cap, json_text=json_text)
      if col != spec.label:
        kinds[col] = declared.get(col) or ("tensor" if stats[col] is None else stats[col].kind(col))
    label_kind = label_kind or columns.label_kind(stats[spec.label], spec.label)
  except columns.LocatedError as e:
    path, line, _ = rows[e.row]
    raise UserError(f"{path} line {line}, column {e.column!r}: {e.message}") from None
  summary = columns.summary(names, stats, kinds, spec.label)
  return {"columns": kinds, "label": spec.label, "label_kind": label_kind, "summary": summary}


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
        raise UserError(
          f"column {col!r} holds arrays of different shapes {sorted(shapes)[:3]}; "
          "set --image_size for a folder of images"
        )
  return parsed, where


def read_prediction_rows(
  path: str, schema: dict, needed: set[str] | None = None
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
  columns = {
    c: k for c, k in schema["columns"].items() if needed is None or schema["features"][c] in needed
  }
  lag_cols = [c for c in columns if "_lag_" in c and c.startswith(schema["label"])]
  missing = [c for c in columns if c not in rows[0][2]]
  if missing:
    hint = (
      " (lag columns must be given: the label k rows earlier)"
      if set(missing) & set(lag_cols)
      else ""
    )
    raise UserError(f"{path} has no column(s) {', '.join(missing)}{hint}")
  check = {
    "columns": columns,
    "label": schema["label"],
    "label_kind": "class" if schema["label_kind"] == "class" else "value",
  }
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
