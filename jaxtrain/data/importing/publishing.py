"""Publishing an import: a new version written under the dataset's lock, and its history."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import re
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxtrain.files import publish
from jaxtrain.data import columns, store
from jaxtrain.data.importing.spec import (
  ImportSpec,
  SCHEMA_FILE,
  SPLITS,
  _class_order,
  _write_json,
  feature_name,
  fingerprints,
  source_files,
)
from jaxtrain.data.importing.tables import (
  _features,
  _scan_tables,
  _split_codes,
  _write_tables,
  _write_with_beam,
)
from jaxtrain.data.importing.lags import add_lags, assign_splits
from jaxtrain.data.importing.rows import infer_schema, read_rows, validate_rows
from jaxtrain.errors import UserError


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
    if (
      entry["fingerprint"] in fingerprints_ and (Path(data_dir) / name / entry["version"]).is_dir()
    ):
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
  if not spec.lags and all(
    Path(s).expanduser().is_file() and columns.is_table(Path(s)) for s in spec.sources
  ):
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
  shapes = {
    c: (np.shape(parsed[c][0]), np.asarray(parsed[c][0]).dtype)
    for c, k in schema["columns"].items()
    if k == "tensor"
  }
  schema["features"] = {c: feature_name(c) for c in schema["columns"]}
  if len(set(schema["features"].values()) | {"label"}) != len(schema["features"]) + 1:
    raise UserError(
      f"columns {list(schema['features'])} do not have distinct names once "
      "made feature names (letters, digits, _); rename or --ignore one"
    )
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
    builder = TableDataset(
      name=spec.name,
      version=version,
      features=_features(schema, class_names, shapes),
      examples=examples,
      data_dir=data_dir,
      file_format="array_record",
    )
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own banner
      builder.download_and_prepare()
    schema.update(
      version=version,
      fingerprint=fp,
      files=[str(f) for f in files],
      options=spec.options(),
      num_examples={s: len(e) for s, e in examples.items()},
    )
    _write_json(Path(builder.data_dir) / SCHEMA_FILE, schema)
    history.append(
      {
        "version": version,
        "fingerprint": fp,
        "files": [str(f) for f in files],
        "num_examples": schema["num_examples"],
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
      }
    )
    _write_json(store.history_path(data_dir, spec.name), history)
  return str(builder.data_dir), True


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
    raise UserError(
      f"columns {list(schema['features'])} do not have distinct names once "
      "made feature names (letters, digits, _); rename or --ignore one"
    )
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
    schema.update(
      version=version,
      fingerprint=fp,
      files=[str(f) for f in files],
      options=spec.options(),
      num_examples={s: int(n) for s, n in zip(SPLITS, counts) if n},
    )
    if spec.beam:  # TFDS's Beam writer publishes the version's folder itself
      _write_with_beam(spec, data_dir, version, schema, class_names, codes, file_rows)
      _write_json(final / SCHEMA_FILE, schema)
    else:
      _write_tables(spec, schema, class_names, codes, counts, partial)
      publish(partial, final)
    history.append(
      {
        "version": version,
        "fingerprint": fp,
        "files": schema["files"],
        "num_examples": schema["num_examples"],
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
      }
    )
    _write_json(store.history_path(data_dir, spec.name), history)
  return str(final), True
