"""What an import is: its options (ImportSpec), the kinds, fingerprints, the schema."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from jaxtrain.files import write_text
from jaxtrain.errors import UserError


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

  sources: tuple[str, ...] = _option(
    (),
    "CSV, Parquet, JSON Lines or .npz files, or folders "
    "with one sub-folder per class (text files or images)",
  )
  name: str = _option(
    "",
    "the dataset's name (lower case, digits, _); configs train it by "
    "dataset.name; each import of changed files is a new version NAME:1.0.k",
  )
  label: str = _option("label", "the column to predict")
  label_kind: str = _option(
    "",
    "class or value (default: inferred: decimals, and integers "
    "with over 50 distinct values, are values; the rest classes)",
  )
  columns: str = _option(
    "",
    "declared kinds, e.g. 'date=time,store=category' (kinds: int, "
    "float, category, text, time); the rest are inferred from all rows",
  )
  ignore: str = _option("", "columns not to import, e.g. 'id,comment'")
  split: str = _option(
    "fraction",
    "fraction (a seeded permutation), column:COL (COL names each "
    "row's split: train, validation or test) or time:COL (by --cutoffs)",
  )
  fractions: str = _option("0.8,0.1,0.1", "train, validation, test shares for --split fraction")
  cutoffs: str = _option(
    "", "for --split time:COL: 'validation starts,test starts' (dates or times); earlier rows train"
  )
  seed: int = _option(0, "the permutation's seed for --split fraction")
  lags: str = _option(
    "",
    "e.g. '1,7': add the label 1 and 7 periods (--frequency) earlier in "
    "its series as columns; rows without that history are dropped",
  )
  series: str = _option("", "the column naming each row's series, for --lags (e.g. store)")
  frequency: str = _option(
    "",
    "the period of --lags: 30min, 1h, 1d, 7d (default: the most "
    "common step between a series' consecutive times)",
  )
  gaps: str = _option(
    "refuse",
    "a lag whose time has no row (a gap in the series): refuse "
    "(the import stops, naming it) or drop (the row is dropped, counted)",
  )
  image_size: str = _option(
    "",
    "'H,W': resize folder images to this (default: as they are, which must then all be one size)",
  )
  delimiter: str = _option(
    "",
    "the field separator of text tables, one character or several "
    "(MovieLens 1M's ::) (default: tab for .tsv, else sniffed from the "
    "first lines: , tab ; |)",
  )
  names: str = _option("", "column names for text tables without a header row, e.g. 'label,text'")
  beam: str = _option(
    "",
    "write with Apache Beam (pip install 'jaxtrain[beam]'): its pipeline "
    "options, e.g. '--runner=DirectRunner --direct_num_workers=4' or a Dataflow/"
    "Spark/Flink runner's; each source file is read by one worker",
  )
  max_memory_mb: int = _option(
    512,
    "about the most memory a table import holds at once: files "
    "are read and written in chunks of 1/256 of this",
  )

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
    values = {
      k: v
      for k, v in dataclasses.asdict(self).items()
      if k not in ("sources", "name", "max_memory_mb", "beam")
    }
    for added, default in (("delimiter", ""), ("names", ""), ("frequency", ""), ("gaps", "refuse")):
      if values[added] == default:
        del values[added]
    return values


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
          raise UserError(
            f"{f} links to {f.resolve()}, outside {p}: an import reads only what "
            "its folder holds; copy the file in instead"
          )
        files.append(f)
    elif p.is_file():
      files.append(p)
    else:
      raise UserError(f"data source {s} does not exist")
  if not files:
    raise UserError(f"the data sources {', '.join(sources)} hold no files")
  return files


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
    raise UserError(
      f"--columns names {', '.join(sorted(unknown))}, not in the data (columns: {', '.join(names)})"
    )
  if spec.label_kind and spec.label_kind not in LABEL_KINDS:
    raise UserError(f"--label_kind={spec.label_kind!r} must be one of {', '.join(LABEL_KINDS)}")
  return spec.label_kind


def _class_order(names: set[str]) -> list[str]:
  if all(re.fullmatch(r"-?\d+", n) for n in names):
    return sorted(names, key=int)
  return sorted(names)


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


def _write_json(path: Path, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2, sort_keys=True))  # the bytes imports always had


def schema_table(schema: dict) -> str:
  """The columns as imported: kind, missing values, examples (what to check, and declare
  with --columns where the inference is wrong)."""
  summary = schema.get("summary") or [
    {"column": c, "kind": k}
    for c, k in dict(schema["columns"], **{schema["label"]: "label"}).items()
  ]
  kind = lambda s: (
    f"label ({schema['label_kind']})" if s["column"] == schema["label"] else s["kind"]
  )
  width = max([len(s["column"]) for s in summary] + [6])
  lines = [f"  {'column':<{width}}  {'kind':<13} {'missing':>8}  examples"]
  for s in summary:
    lines.append(
      f"  {s['column']:<{width}}  {kind(s):<13} {s.get('missing', 0):>8,}  "
      f"{', '.join(s.get('examples', []))}"
    )
  return "\n".join(lines)


def read_schema(dataset_dir: str) -> dict | None:
  """The import's schema for a dataset directory (None for datasets jaxtrain did not import)."""
  path = Path(dataset_dir) / SCHEMA_FILE
  if not path.exists():
    return None
  with open(path) as f:
    return json.load(f)
