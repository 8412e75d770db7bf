"""Tables read column-wise in bounded chunks: CSV (any delimiter, zipped or not), JSON Lines,
Parquet.

`chunks(path, ...)` yields `Chunk`s of at most about `block_bytes` of the
file, as pyarrow arrays (CSV and JSON values as strings, Parquet as typed),
so an import holds one chunk at a time whatever the file's size.
`Stats` accumulates what inferring a column's kind needs over the chunks;
`to_numpy` converts a chunk's column once its kind is known. A bad value is
located (file, line) only when one is found: `line_of` rereads the file up
to that row.

Missing values: an empty cell, or (any case, trimmed) NA, N/A, NaN, null,
None, ?. A numeric column with missing values stays numeric (NaN, imputed by
the preprocessing); in a category, missing is a value of its own.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jaxtrain.errors import UserError

MISSING = ("", "na", "n/a", "nan", "null", "none", "?")
_INT = r"^[+-]?\d+(\.0*)?$"
_FLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_DATE = r"^\d{4}[-/]\d{2}[-/]\d{2}"
_CODE_WORD = re.compile(r"(^|[_\W])(id|code|zip|zipcode|postcode|key)$", re.I)  # user_id, zip
_CODE_CAMEL = re.compile(r"[a-z0-9](Id|ID|Code|Key)$")  # userId, itemID
DISTINCT_CAP = 10_000  # distinct values counted per feature column (a label's are all kept)
_TABLE_SUFFIXES = (".csv", ".tsv", ".tab", "")  # "": a text table without a suffix


@dataclasses.dataclass
class Chunk:
  path: str  # the file (a zip's member as archive.zip:member.csv)
  columns: dict[str, pa.Array]
  first_row: int  # the file's data row of the chunk's first row (0-based)

  def __len__(self) -> int:
    return len(next(iter(self.columns.values()))) if self.columns else 0


# --- reading ------------------------------------------------------------------------------


def is_table(path: Path) -> bool:
  """A file `chunks` reads: .jsonl/.json, .parquet, .zip, or delimited text.

  Text tables come with any suffix (MovieLens' u.data and ratings.dat, a
  RecBole .inter, an export without one): a file whose first bytes hold no
  NUL byte is read as text, its delimiter sniffed (or --delimiter).
  """
  suffix = path.suffix.lower()
  if suffix in _TABLE_SUFFIXES + (".jsonl", ".json", ".parquet", ".zip"):
    return True
  if suffix == ".npz" or not path.is_file():
    return False
  with open(path, "rb") as f:
    head = f.read(8192)
  return bool(head) and b"\0" not in head  # images, archives and arrays all hold NULs early


def chunks(
  path: Path, *, delimiter: str = "", names: str = "", block_bytes: int = 32 << 20
) -> Iterator[Chunk]:
  suffix = path.suffix.lower()
  if suffix == ".parquet":
    yield from _parquet_chunks(path, block_bytes)
  elif suffix in (".jsonl", ".json"):
    yield from _jsonl_chunks(path, block_bytes)
  elif suffix == ".zip":
    yield from _zip_chunks(path, delimiter, names, block_bytes)
  else:
    yield from _csv_chunks(
      str(path), lambda: open(path, "rb"), suffix, delimiter, names, block_bytes
    )


def _zip_chunks(path: Path, delimiter, names, block_bytes):
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise UserError(f"{path} is not a readable zip archive ({e})") from None
  with archive:
    members = sorted(
      m
      for m in archive.namelist()
      if not m.endswith("/") and not any(p.startswith((".", "__MACOSX")) for p in m.split("/"))
    )
    tables = [m for m in members if Path(m).suffix.lower() in _TABLE_SUFFIXES]
    if not tables:
      raise UserError(f"{path} holds no CSV or text table (members: {', '.join(members[:5])})")
    for member in tables:
      yield from _csv_chunks(
        f"{path}:{member}",
        lambda m=member: archive.open(m),
        Path(member).suffix.lower(),
        delimiter,
        names,
        block_bytes,
      )


def sniff_delimiter(sample: str, suffix: str) -> str:
  """The delimiter of a text table: tab for .tsv/.tab, else the one the first lines agree on."""
  if suffix in (".tsv", ".tab"):
    return "\t"
  lines = [l for l in sample.splitlines()[:20] if l.strip()]
  if len(lines) > 1:
    lines = lines[:-1]  # the sample may end mid-line
  best, best_count = ",", 0
  for d in (",", "\t", ";", "|"):
    counts = {l.count(d) for l in lines}
    if len(counts) == 1 and (n := counts.pop()) > best_count:
      best, best_count = d, n
  return best


def not_utf8(name: str, e: UnicodeDecodeError) -> UserError:
  return UserError(
    f"{name} is not UTF-8 text ({e.reason}: byte {e.object[e.start : e.start + 1]!r} "
    f"at offset {e.start}); convert it, e.g. iconv -f latin1 -t utf-8"
  )


def _decode(raw: bytes, name: str) -> str:
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise not_utf8(name, e) from None


def _decode_start(raw: bytes, name: str) -> str:
  """The text of a file's first bytes (a character cut at the end is left out)."""
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    if e.start >= len(raw) - 3:
      return raw[: e.start].decode("utf-8-sig")
    return _decode(raw, name)


def _text_stream(opener, name: str):
  """A file as text, streamed (never whole in memory), for finding a line."""
  return io.TextIOWrapper(opener(), encoding="utf-8-sig", newline="")


def _csv_reader(text_stream, delimiter: str):
  # A tab-separated file does not quote (the IANA TSV convention; the SMS corpus has bare ")
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  return csv.reader(text_stream, delimiter=delimiter, quoting=quoting)


_UNIT_SEPARATOR = "\x1f"  # what a delimiter of several characters is read as


class _Redelimited(io.RawIOBase):
  """A text table's bytes with a delimiter of several characters (MovieLens 1M's "::")
  replaced by one unit separator, a block of whole lines at a time (a delimiter never
  spans a line break), for readers that take one character."""

  def __init__(self, raw, delimiter: bytes):
    self.raw, self.delimiter, self.pending = raw, delimiter, b""

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    if not self.pending:
      block = self.raw.read(1 << 20)
      if block and not block.endswith(b"\n"):
        block += self.raw.readline()
      self.pending = block.replace(self.delimiter, _UNIT_SEPARATOR.encode())
    n = min(len(buffer), len(self.pending))
    buffer[:n], self.pending = self.pending[:n], self.pending[n:]
    return n

  def close(self) -> None:
    self.raw.close()
    super().close()


def _one_character(opener, delimiter: str):
  """(opener, delimiter) with the delimiter one character, as pyarrow and csv need."""
  if any(c in delimiter for c in '\r\n"'):
    raise UserError(f"--delimiter={delimiter!r} cannot hold a quote or a line break")
  if len(delimiter) <= 1:
    return opener, delimiter
  return (lambda: io.BufferedReader(_Redelimited(opener(), delimiter.encode()))), _UNIT_SEPARATOR


def _csv_chunks(name: str, opener, suffix: str, delimiter: str, names: str, block_bytes: int):
  import pyarrow.csv as pacsv

  opener, delimiter = _one_character(opener, delimiter)
  with opener() as f:
    sample = _decode_start(f.read(1 << 16), name)
  delimiter = delimiter or sniff_delimiter(sample, suffix)
  if names:
    header = [n.strip() for n in names.split(",")]
  else:
    lines = _csv_reader(io.StringIO(sample), delimiter)
    header = next((row for row in lines if row), None)
    if header is None:
      raise UserError(f"{name} is empty (expected a header row)")
  check_header(name, header)
  read = pacsv.ReadOptions(
    column_names=header, skip_rows=0 if names else 1, block_size=block_bytes, encoding="utf8"
  )
  parse = pacsv.ParseOptions(
    delimiter=delimiter,
    newlines_in_values=delimiter != "\t",
    quote_char=False if delimiter == "\t" else '"',
  )
  convert = pacsv.ConvertOptions(
    column_types={h: pa.string() for h in header},
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
  )
  row = 0
  with opener() as f:
    try:
      reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
      for batch in reader:
        if batch.num_rows:
          yield Chunk(name, {h: batch.column(i) for i, h in enumerate(header)}, row)
          row += batch.num_rows
    except pa.ArrowInvalid as e:
      raise _csv_error(name, opener, header, delimiter, e) from None


def _csv_error(name, opener, header, delimiter, error) -> UserError:
  """The first record the fast reader refused, found again with Python's csv module."""
  with _text_stream(opener, name) as text:
    reader = _csv_reader(text, delimiter)
    try:
      for values in reader:
        if values and len(values) != len(header) and reader.line_num > 1:
          return UserError(
            f"{name} line {reader.line_num}: {len(values)} fields, but the header "
            f"has {len(header)} ({', '.join(header)})"
          )
    except csv.Error as e:
      return UserError(f"{name} line {reader.line_num}: {e}")
    except UnicodeDecodeError as e:
      return UserError(
        f"{name} is not UTF-8 text ({e.reason}) after line {reader.line_num}; "
        "convert it, e.g. iconv -f latin1 -t utf-8"
      )
  return UserError(f"cannot read {name}: {str(error).splitlines()[0]}")


def check_header(name: str, header: list[str]) -> None:
  names = [h.strip() for h in header]
  if not all(names):
    raise UserError(f"{name}: column {names.index('') + 1} of the header has no name")
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise UserError(
      f"{name}: the header names {', '.join(map(repr, repeated))} more than once; "
      "rename the columns so each is one"
    )


def _jsonl_chunks(path: Path, block_bytes: int):
  """JSON Lines, parsed by Python a block at a time; every value as its text (null: missing)."""
  rows: list[dict] = []
  size, first = 0, 0
  with open(path, "rb") as f:
    line_no = 0
    for raw in f:
      line_no += 1
      line = _decode(raw, str(path)) if line_no > 1 else _decode(raw, str(path)).lstrip("\ufeff")
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path} line {line_no}: not a JSON object: {e.msg}") from None
      if not isinstance(row, dict):
        raise UserError(f"{path} line {line_no}: not a JSON object")
      for col, v in row.items():
        if isinstance(v, (dict, list)):
          raise UserError(f"{path} line {line_no}, column {col!r}: {v!r} is not a single value")
      rows.append(row)
      size += len(raw)
      if size >= block_bytes:
        yield _json_chunk(str(path), rows, first)
        first, rows, size = first + len(rows), [], 0
  if rows:
    yield _json_chunk(str(path), rows, first)


def json_text(v) -> str:
  """A JSON value as the text a CSV cell of it would be (null: missing)."""
  if v is None:
    return ""
  if isinstance(v, float):
    return repr(v)
  return str(v)


def _json_chunk(name, rows, first) -> Chunk:
  names = list(dict.fromkeys(c for r in rows for c in r))
  return Chunk(
    name, {c: pa.array([json_text(r.get(c)) for r in rows], pa.string()) for c in names}, first
  )


def _parquet_chunks(path: Path, block_bytes: int):
  import pyarrow.parquet as pq

  try:
    table = pq.ParquetFile(path)
    width = max(
      1,
      sum(
        c.total_uncompressed_size
        for g in range(table.num_row_groups)
        for c in [table.metadata.row_group(g).column(i) for i in range(table.metadata.num_columns)]
      )
      // max(table.metadata.num_rows, 1),
    )
    row = 0
    for batch in table.iter_batches(batch_size=max(1024, block_bytes // width)):
      yield Chunk(
        str(path), {n: _plain(batch.column(i)) for i, n in enumerate(batch.schema.names)}, row
      )
      row += batch.num_rows
  except (pa.ArrowException, OSError) as e:
    raise UserError(f"cannot read Parquet file {path}: {str(e).splitlines()[0]}") from None


def _plain(array: pa.Array) -> pa.Array:
  """A Parquet column as a string, integer, float or timestamp array."""
  t = array.type
  if pa.types.is_dictionary(t):
    return _plain(array.dictionary_decode())
  if pa.types.is_integer(t):
    return array.cast(pa.int64())
  if pa.types.is_floating(t):
    return array.cast(pa.float64())
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    return array.cast(pa.timestamp("s")) if pa.types.is_date(t) else array
  if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
    return pc.fill_null(array.cast(pa.string()), "")
  raise UserError(f"Parquet column of type {t} is not a single value per row")


def line_of(path: str, row: int, *, delimiter: str = "", names: str = "") -> int:
  """The line of data row `row` (0-based) of a table file, for error messages (streamed)."""
  if path.lower().endswith(".parquet"):
    return row + 1
  if ".zip:" in path:
    archive, member = path.split(".zip:", 1)
    opener = lambda: zipfile.ZipFile(archive + ".zip").open(member)
  else:
    opener = lambda: open(path, "rb")
  opener, delimiter = _one_character(opener, delimiter)
  with _text_stream(opener, path) as text:
    if path.lower().endswith((".jsonl", ".json")):
      seen = -1
      for no, line in enumerate(text, 1):
        seen += bool(line.strip())
        if seen == row:
          return no
      return 0
    if not delimiter:
      with opener() as f:
        delimiter = sniff_delimiter(_decode_start(f.read(1 << 16), path), Path(path).suffix.lower())
    reader = _csv_reader(text, delimiter)
    seen = -1 if names else -2  # the header is not a data row
    for values in reader:
      if values:
        seen += 1
        if seen == row:
          return reader.line_num
  return 0


# --- kinds -------------------------------------------------------------------------------


class RowError(Exception):
  """A value that is not of its column's kind (the message says why)."""


def parse_time(value) -> int:
  """Unix seconds from a number or an ISO 8601 date/datetime (naive = UTC); 2024/05/31 too."""
  if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
    return int(value)
  if isinstance(value, dt.datetime):
    when = value
  else:
    text = str(value).strip()
    if re.match(r"^\d{4}/\d{2}/\d{2}", text):
      text = text[:10].replace("/", "-") + text[10:]
    try:
      when = dt.datetime.fromisoformat(text)
    except ValueError:
      raise RowError(
        f"{value!r} is not a date or time (expected ISO 8601, e.g. 2024-05-31)"
      ) from None
  if when.tzinfo is None:
    when = when.replace(tzinfo=dt.timezone.utc)
  return int(when.timestamp())


def class_strings(array: pa.Array) -> pa.Array:
  """A label column as class names: 1.0 is the class "1" (as a CSV's 1 is), text as it is."""
  if pa.types.is_floating(array.type):
    whole = pc.equal(pc.floor(array), array)
    return pc.if_else(
      whole,
      pc.cast(pc.cast(array, pa.int64(), safe=False), pa.string()),
      pc.cast(array, pa.string()),
    )
  return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


def is_code_name(column: str) -> bool:
  """A column named like an identifier or a code (user_id, userId, ID, zip, item code):
  its integers are names, not quantities. "paid" and "valid" are not."""
  return bool(_CODE_WORD.search(column) or _CODE_CAMEL.search(column))


def missing_mask(array: pa.Array) -> pa.Array:
  if pa.types.is_string(array.type):
    return pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(array)), pa.array(MISSING))
  if pa.types.is_floating(array.type):
    return pc.or_(pc.is_null(array), pc.is_nan(array))
  return pc.is_null(array)


def _first_false(mask: pa.Array) -> int | None:
  """Index of the first false of a boolean array, or None."""
  bad = pc.index(mask, False).as_py()
  return None if bad < 0 else bad


@dataclasses.dataclass
class Stats:
  """What one column's kind is inferred from, over every chunk."""

  rows: int = 0
  missing: int = 0
  not_int: int = 0
  not_float: int = 0
  not_time: int = 0
  words: int = 0
  leading_zero: bool = False
  typed: str = ""  # "int" / "float" / "time" for typed (Parquet) columns
  first_not_float: tuple | None = None  # (path, row, value) of the first non-number
  distinct: set = dataclasses.field(default_factory=set)
  examples: list = dataclasses.field(default_factory=list)
  cap: int = DISTINCT_CAP

  def update(self, chunk: Chunk, column: str, *, infer: bool = True) -> None:
    """Adds a chunk's values; `infer=False` (a declared kind) counts only missing values,
    examples and distinct values."""
    array = chunk.columns.get(column)
    n = len(chunk)
    if array is None:  # a JSON column absent from this block: all missing
      self.rows, self.missing = self.rows + n, self.missing + n
      return
    self.rows += n
    missing = missing_mask(array)
    self.missing += pc.sum(missing).as_py() or 0
    present = pc.filter(array, pc.invert(missing))
    if not len(present):
      return
    if len(self.distinct) <= self.cap:
      self.distinct.update(pc.unique(present).to_pylist()[: self.cap + 1 - len(self.distinct)])
    if len(self.examples) < 3:
      self.examples += [
        v for v in pc.unique(present.slice(0, 50)).to_pylist() if v not in self.examples
      ][: 3 - len(self.examples)]
    if not infer:
      return
    if not pa.types.is_string(array.type):
      kind = (
        "time"
        if pa.types.is_timestamp(array.type)
        else "float"
        if pa.types.is_floating(array.type)
        else "int"
      )
      if kind == "float" and pc.all(pc.equal(pc.floor(present), present)).as_py():
        kind = "int"
      self.typed = kind if self.typed in ("", kind) else "float"
      return
    text = pc.utf8_trim_whitespace(present)
    is_float = pc.match_substring_regex(text, _FLOAT)
    self.not_int += len(text) - (pc.sum(pc.match_substring_regex(text, _INT)).as_py() or 0)
    bad_float = len(text) - (pc.sum(is_float).as_py() or 0)
    if bad_float and self.first_not_float is None:
      at = pc.index(is_float, False).as_py()
      positions = pc.indices_nonzero(pc.invert(missing))
      self.first_not_float = (chunk.path, chunk.first_row + positions[at].as_py(), text[at].as_py())
    self.not_float += bad_float
    if bad_float:
      self.not_time += len(text) - (pc.sum(pc.match_substring_regex(text, _DATE)).as_py() or 0)
    self.leading_zero |= bool(pc.any(pc.match_substring_regex(text, r"^0\d")).as_py())
    self.words += pc.sum(pc.count_substring_regex(text, r"\S+")).as_py() or 0

  @property
  def present(self) -> int:
    return self.rows - self.missing

  def kind(self, column: str) -> str:
    """The narrowest kind every present value parses as (see the module docstring)."""
    if self.typed:
      if self.typed == "int" and (self.missing or is_code_name(column)):
        return "float" if self.missing else "category"
      return self.typed
    if not self.present:
      return "category"
    if self.not_int == 0:
      if is_code_name(column) or self.leading_zero:
        return "category"  # identifiers and codes are names, not quantities
      return "float" if self.missing else "int"
    if self.not_float == 0:
      return "float"
    if self.not_time == 0:
      return "time"
    if self.not_float <= self.present // 100 and self.present >= 100:
      path, row, value = self.first_not_float
      raise _LocatedError(
        path,
        row,
        column,
        f"{value!r} is not a number, in a column of "
        f"{self.present - self.not_float:,} numbers ({self.not_float} are not); "
        f"fix it, or declare the column's kind: --columns '{column}=category'",
      )
    return "text" if self.words / self.present > 3 else "category"


def label_kind(stats: Stats | None, column: str) -> str:
  """A label's kind, when not declared: decimals, and integers with over 50 distinct values,
  are values to predict; the rest classes (`stats` None: a column of arrays)."""
  kind = "tensor" if stats is None else stats.kind(column)
  few = stats is not None and len(stats.distinct) <= 50
  return "value" if kind == "float" or (kind == "int" and not few) else "class"


def summary(names: list[str], stats: dict, kinds: dict, label: str) -> list[dict]:
  """The schema table's rows, in the file's column order: kind, missing values, examples."""
  rows = []
  for col in names:
    s = stats.get(col)
    rows.append(
      {
        "column": col,
        "missing": s.missing if s else 0,
        "kind": kinds.get(col, "label" if col == label else "ignored"),
        "examples": [str(v)[:40] for v in s.examples] if s else [],
      }
    )
  return rows


class _LocatedError(Exception):
  """A bad value at (path, row, column): made a UserError once its line is found."""

  def __init__(self, path, row, column, message):
    super().__init__(message)
    self.path, self.row, self.column, self.message = path, row, column, message


def located(
  error: _LocatedError, *, delimiter: str = "", names: str = "", more: int = 0
) -> UserError:
  line = line_of(error.path, error.row, delimiter=delimiter, names=names)
  suffix = f" (and {more} more bad values)" if more else ""
  return UserError(f"{error.path} line {line}, column {error.column!r}: {error.message}{suffix}")


LocatedError = _LocatedError


# --- checking and converting a chunk's column ----------------------------------------------


def check(chunk: Chunk, column: str, kind: str, *, required: bool = False):
  """(count, first LocatedError) of the values of `column` that are not `kind`."""
  array = chunk.columns.get(column)
  if array is None:
    array = pa.nulls(len(chunk), pa.string())
  missing = missing_mask(array)
  if required or kind in ("time", "int"):
    if pc.any(missing).as_py():
      at = pc.index(missing, True).as_py()
      why = (
        "missing value (an int column holds no gaps: declare it float to have them imputed)"
        if kind == "int" and not required
        else "missing value"
      )
      return int(pc.sum(missing).as_py()), _LocatedError(
        chunk.path, chunk.first_row + at, column, why
      )
  if kind not in ("int", "float", "value", "time") or not pa.types.is_string(array.type):
    return 0, None
  text = pc.utf8_trim_whitespace(array)
  pattern = {"int": _INT, "time": _DATE}.get(kind, _FLOAT)
  ok = pc.or_(missing, pc.match_substring_regex(text, pattern))
  bad = len(array) - (pc.sum(ok).as_py() or 0)
  if kind == "time" and not bad:
    try:
      to_numpy(array, "time")
    except _BadTime as e:
      return 1, _LocatedError(chunk.path, chunk.first_row + e.index, column, str(e))
  if not bad:
    return 0, None
  at = _first_false(ok)
  what = {"int": "an integer", "time": "a date or time (expected ISO 8601, e.g. 2024-05-31)"}.get(
    kind, "a number"
  )
  return bad, _LocatedError(
    chunk.path, chunk.first_row + at, column, f"{array[at].as_py()!r} is not {what}"
  )


class _BadTime(ValueError):
  def __init__(self, message, index):
    super().__init__(message)
    self.index = index


def to_numpy(array: pa.Array, kind: str) -> np.ndarray:
  """A checked column as the dataset stores it: int64, float32 (NaN for missing), or unix
  seconds."""
  if kind in ("float", "value"):
    if pa.types.is_string(array.type):
      missing = missing_mask(array)
      array = pc.if_else(missing, "nan", pc.utf8_trim_whitespace(array)).cast(pa.float64())
    return np.asarray(pc.fill_null(array.cast(pa.float64()), np.nan)).astype(np.float32)
  if kind == "int":
    if pa.types.is_string(array.type):
      text = pc.utf8_trim_whitespace(array)
      try:
        return np.asarray(text.cast(pa.int64()))
      except pa.ArrowInvalid:
        return np.asarray(text.cast(pa.float64())).astype(np.int64)
    return np.asarray(array.cast(pa.int64()))
  if kind == "time":
    if pa.types.is_timestamp(array.type):
      return np.asarray(array.cast(pa.timestamp("s")).cast(pa.int64()))
    encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(array))
    seconds = []
    for i, value in enumerate(encoded.dictionary.to_pylist()):
      try:
        seconds.append(parse_time(value))
      except RowError as e:
        index = pc.index(encoded.indices, i).as_py()
        raise _BadTime(str(e), index) from None
    return np.asarray(seconds, np.int64)[np.asarray(encoded.indices)]
  raise ValueError(kind)
