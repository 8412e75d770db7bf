"""Tables read column-wise and in bounded chunks (columns.py), written as they go (records.py);
or through TFDS's Beam writer.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_datasets as tfds

from jaxtrain.data import columns, records
from jaxtrain.data.importing.spec import (
  ImportSpec,
  SCHEMA_FILE,
  SPLITS,
  _checked_declarations,
  _class_order,
  _declared,
  _write_json,
  feature_name,
)
from jaxtrain.data.importing.lags import fraction_codes, time_codes
from jaxtrain.errors import UserError, require


def _features(schema, class_names, shapes):
  kinds = {
    "int": tfds.features.Scalar(np.int64),
    "float": tfds.features.Scalar(np.float32),
    "time": tfds.features.Scalar(np.int64),
    "category": tfds.features.Text(),
    "text": tfds.features.Text(),
  }
  features = {}
  for col, kind in schema["columns"].items():
    if kind == "tensor":
      shape, dtype = shapes[col]
      features[feature_name(col)] = tfds.features.Tensor(shape=shape, dtype=dtype)
    else:
      features[feature_name(col)] = kinds[kind]
  features["label"] = (
    tfds.features.ClassLabel(names=class_names)
    if schema["label_kind"] == "class"
    else tfds.features.Scalar(np.float32)
  )
  return tfds.features.FeaturesDict(features)


def _table_chunks(spec: ImportSpec):
  # A chunk's rows take several times their bytes in the file once parsed, converted
  # and encoded (a length array per protobuf part), and pyarrow's streaming CSV reader
  # holds more the larger its blocks: 1/256 of the budget per chunk.
  block = max(1 << 20, (spec.max_memory_mb << 20) // 256)
  for source in spec.sources:
    yield from columns.chunks(
      Path(source).expanduser(), delimiter=spec.delimiter, names=spec.names, block_bytes=block
    )


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
      raise columns.located(
        self.first, delimiter=spec.delimiter, names=spec.names, more=self.count - 1
      )


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
        cap = (
          (1 << 62 if spec.label_kind == "class" else 10 * columns.DISTINCT_CAP)
          if col == spec.label
          else columns.DISTINCT_CAP
        )
        stats[col] = columns.Stats(cap=cap)
    if spec.label not in chunk.columns:
      raise UserError(
        f"no column {spec.label!r} to use as the label (columns: "
        f"{', '.join(chunk.columns)}); set --label"
      )
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
    label_kind = label_kind or columns.label_kind(stats[spec.label], spec.label)
  except columns.LocatedError as e:
    raise columns.located(e, delimiter=spec.delimiter, names=spec.names) from None
  schema = {"columns": kinds, "label": spec.label, "label_kind": label_kind}
  if label_kind == "class":
    classes = stats[spec.label].distinct
    if len(classes) > stats[spec.label].cap:
      raise UserError(
        f"the label {spec.label!r} has over {stats[spec.label].cap:,} distinct values: "
        "a value to predict? set --label_kind value (or --label_kind class to "
        "keep them all as classes)"
      )
    schema["class_names"] = _class_order(
      set(columns.class_strings(pa.array(list(classes))).to_pylist())
    )
  schema["summary"] = columns.summary(names, stats, kinds, spec.label)
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
      raise UserError(
        f"--split={spec.split}: values {unknown[:5]} are not train, validation or test"
      )
    return np.asarray(index).astype(np.uint8)
  if kind == "time":
    if column not in schema["columns"] or schema["columns"][column] != "time":
      raise UserError(
        f"--split=time:{column}: no time column {column!r} (declare it with "
        f"--columns {column}=time)"
      )
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
        raise columns.located(
          columns.LocatedError(chunk.path, chunk.first_row + e.index, col, str(e))
        )
      out[schema["features"][col]] = ("float" if kind == "float" else "int", values)
  label = chunk.columns[schema["label"]]
  if schema["label_kind"] == "class":
    out["label"] = (
      "int",
      np.asarray(pc.index_in(columns.class_strings(label), value_set=class_index)).astype(np.int64),
    )
  else:
    out["label"] = ("float", columns.to_numpy(label, "value"))
  return out


def _write_tables(
  spec: ImportSpec, schema: dict, class_names, codes: np.ndarray, counts: np.ndarray, partial: Path
) -> None:
  """Pass 2: every chunk converted, encoded and written to its split's shards, in `partial`
  (removed if anything fails: a version's folder is whole or absent)."""
  class_index = pa.array(class_names or [], pa.string())
  partial.mkdir(parents=True)
  try:
    writers = {
      s: records.SplitWriter(str(partial), spec.name, s, int(n))
      for s, n in zip(SPLITS, counts)
      if n
    }
    row = 0
    for chunk in _table_chunks(spec):
      encoded = _encoded(chunk, schema, class_index)
      chunk_codes = codes[row : row + len(chunk)]
      for i, split in enumerate(SPLITS):
        take = np.flatnonzero(chunk_codes == i)
        if len(take):
          picked = {
            k: (kind, v.take(pa.array(take)) if kind == "bytes" else v[take])
            for k, (kind, v) in encoded.items()
          }
          writers[split].write(*records.encode_examples(picked))
      row += len(chunk)
    infos = [w.close() for w in writers.values()]
    records.write_metadata(
      str(partial), spec.name, schema["version"], _features(schema, class_names, {}), infos
    )
    _write_json(partial / SCHEMA_FILE, schema)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise


def _write_with_beam(
  spec: ImportSpec,
  data_dir: str,
  version: str,
  schema: dict,
  class_names,
  codes: np.ndarray,
  file_rows: dict[str, int],
) -> None:
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
    items.append((path, start, codes[start : start + n]))
    start += n
  features = _features(schema, class_names, {})
  builder = BeamTableDataset(
    name=spec.name,
    version=version,
    features=features,
    items=items,
    spec=spec,
    schema=schema,
    data_dir=data_dir,
    file_format="array_record",
  )
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(beam_options=PipelineOptions(spec.beam.split()))
    )
  del beam


def _file_examples(item, *, split: int, spec: ImportSpec, schema: dict):
  """(global row, example) of one source file's rows in `split` (a Beam worker's work)."""
  path, start, codes = item
  class_index = pa.array(schema.get("class_names") or [], pa.string())
  source = path.split(".zip:")[0] + ".zip" if ".zip:" in path else path
  row = 0
  for chunk in columns.chunks(
    Path(source),
    delimiter=spec.delimiter,
    names=spec.names,
    block_bytes=max(1 << 20, (spec.max_memory_mb << 20) // 256),
  ):
    if chunk.path != path:
      continue  # another member of the same zip: its own work item
    encoded = _encoded(chunk, schema, class_index)
    for i in np.flatnonzero(codes[row : row + len(chunk)] == split):
      yield (
        start + row + int(i),
        {
          k: (v[int(i)].as_py() if kind == "bytes" else v[int(i)])
          for k, (kind, v) in encoded.items()
        },
      )
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
        out[split] = beam.Create(self._items) | f"read {split}" >> beam.FlatMap(
          _file_examples, split=index, spec=self._spec, schema=self._schema
        )
    return out

  def _generate_examples(self):
    raise NotImplementedError
