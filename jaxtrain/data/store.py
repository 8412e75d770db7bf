"""A data_dir on disk: where datasets live, who may write them, and imported versions.

`jaxtrain data import` writes `<data_dir>/<name>/<version>/` (a TFDS dataset)
and appends to `<data_dir>/<name>/imports.json`, the history of versions.
Preparing or importing a dataset holds a lock file per dataset, so the
processes of a multi-host job (or two imports) never write one together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from jaxtrain.errors import UserError


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


@contextlib.contextmanager
def lock(data_dir: str, name: str):
  """Holds `<data_dir>/.<name>.lock` (waiting for it): one writer at a time among processes.

  Preparing or importing one dataset; a sweep directory's study being created.
  """
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def history_path(data_dir: str, name: str) -> Path:
  return Path(data_dir) / name / "imports.json"


def read_history(data_dir: str, name: str) -> list[dict]:
  path = history_path(data_dir, name)
  if not path.exists():
    return []
  with open(path) as f:
    return json.load(f)


def latest_version(data_dir: str, name: str) -> str | None:
  versions = [
    e["version"]
    for e in read_history(data_dir, name)
    if (Path(data_dir) / name / e["version"]).is_dir()
  ]
  return max(versions, key=lambda v: tuple(int(x) for x in v.split("."))) if versions else None


def imported_dir(data_dir: str, name: str) -> str | None:
  """The directory of a `jaxtrain data import` dataset `name` or `name:version` (None if not
  one)."""
  base, _, version = name.partition(":")
  if not history_path(data_dir, base).exists():
    return None
  version = version or latest_version(data_dir, base)
  path = Path(data_dir) / base / (version or "")
  if not version or not (path / "dataset_info.json").exists():
    known = [e["version"] for e in read_history(data_dir, base)]
    raise UserError(
      f"dataset.name={name!r}: no such version in {data_dir}/{base} "
      f"(imported: {', '.join(known) or 'none'})"
    )
  return str(path)
