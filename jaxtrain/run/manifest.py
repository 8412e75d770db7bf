"""`manifest.json`: everything needed to reproduce a run, and checks against it.

Written when a run starts in an empty workdir: the resolved config, the
environment (Python and library versions, devices, processes, XLA flags, the
project's git commit) and the dataset (name, version, splits and a
fingerprint of its files). Each resume appends what changed in the
environment. `jaxtrain rerun` trains the manifest's config again and names
what differs when the bits do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import jax

from jaxtrain import files
from jaxtrain.config import base_config
from jaxtrain.errors import UserError
from jaxtrain.run import workdir as wd

PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "orbax-checkpoint",
  "tensorflow-datasets",
  "grain",
  "ml-collections",
  "numpy",
)

# Fields that cannot change the steps already taken: a resumed run may differ here.
RESUMABLE_FIELDS = (
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "async_checkpointing",
  "dataset.prefetch",
  "dataset.eval_split",
  "dataset.test_split",
  "nan_policy",
  "nan_max_consecutive_skips",
  "parallel.fsdp",
  "parallel.fsdp_min_size",
  "parallel.prefetch_to_device",
  "parallel.stall_timeout_s",
  "parallel.startup_timeout_s",
  "parallel.stop_grace_s",
  "parallel.stop_check_every_steps",
  "dataset.cache_max_mb",
  "dataset.device_cache_max_mb",
  "eval_top_k",
  "early_stopping.metric",
  "early_stopping.mode",
  "early_stopping.patience",
  "early_stopping.min_delta",
  "keep_best_checkpoints",
)
# Sections that only matter when a run starts (importing data, fitting preprocessing
# and the init_from source are read then, and saved in the workdir).
START_ONLY_SECTIONS = ("data_import", "init_from", "preprocess")
# Schedules whose values do not depend on the run's length.
HORIZON_FREE_SCHEDULES = ("constant", "piecewise")
# Above this many bytes a dataset's fingerprint covers names and sizes, not contents.
FULL_HASH_LIMIT = 1 << 30


def _git_commit() -> str | None:
  here = Path(__file__).resolve().parent
  try:
    out = subprocess.run(
      ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
    )
    dirty = subprocess.run(
      ["git", "-C", str(here), "status", "--porcelain", "--", "."],
      capture_output=True,
      text=True,
      timeout=5,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  if out.returncode != 0:
    return None
  return out.stdout.strip() + ("+dirty" if dirty else "")


def environment() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  kinds: dict[str, int] = {}
  for d in jax.devices():
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  return {
    "python": platform.python_version(),
    "platform": platform.platform(),
    "versions": versions,
    "backend": jax.default_backend(),
    "devices": kinds,
    "process_count": jax.process_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "git_commit": _git_commit(),
  }


def dataset_fingerprint(directory: str) -> str:
  """SHA-256 over a prepared dataset's files (contents; names and sizes past 1 GiB)."""
  paths = sorted(p for p in Path(directory).rglob("*") if p.is_file())
  full = sum(p.stat().st_size for p in paths) <= FULL_HASH_LIMIT
  h = hashlib.sha256(b"contents" if full else b"names+sizes")
  for p in paths:
    h.update(f"{p.relative_to(directory)}:{p.stat().st_size}\n".encode())
    if full:
      with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  return h.hexdigest()


def dataset_record(builder, dataset_config) -> dict:
  return {
    "name": builder.name,
    "config": builder.builder_config.name if builder.builder_config else None,
    "version": str(builder.version),
    "source_path": dataset_config.path or None,
    "splits": {k: dataset_config[k] for k in ("train_split", "eval_split", "test_split")},
    "num_examples": {k: v.num_examples for k, v in builder.info.splits.items()},
    "fingerprint": dataset_fingerprint(builder.data_dir),
  }


def path(workdir: str) -> str:
  return wd.manifest(workdir)


REQUIRED = {"config": dict, "environment": dict, "dataset": dict, "resumes": list}


def read(workdir: str) -> dict:
  """The manifest, checked: a damaged one is a UserError naming the file, never a traceback."""
  try:
    with open(path(workdir), "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    raise UserError(f"{workdir} has no manifest.json (not a jaxtrain workdir?)") from None
  except (UnicodeDecodeError, ValueError) as e:
    raise UserError(
      f"{path(workdir)} is not valid JSON ({e}): it is damaged; move it aside to "
      "resume without its record"
    ) from None
  wrong = [
    k
    for k, kind in REQUIRED.items()
    if not isinstance(record, dict) or not isinstance(record.get(k), kind)
  ]
  if wrong:
    raise UserError(
      f"{path(workdir)} is not a jaxtrain manifest (no valid {', '.join(wrong)}): it "
      "is damaged; move it aside to resume without its record"
    )
  return record


def _write(workdir: str, record: dict) -> None:
  files.write_json(path(workdir), record, sort_keys=True)


def record_start(
  workdir: str,
  config_dict: dict,
  dataset: dict,
  step: int,
  *,
  code: dict | None = None,
  config_dir: str | None = None,
) -> None:
  """Writes the manifest of a new run, or appends this start's changes to an existing one.

  `code`: the user files the run loaded, with their SHA-256 (run/inputs.py);
  `config_dir`: the directory their relative paths start from.
  """
  env = environment()
  if step == 0 or not os.path.exists(path(workdir)):
    _write(
      workdir,
      {
        "config": config_dict,
        "seed": config_dict["seed"],
        "environment": env,
        "dataset": dataset,
        "code": code or {},
        "config_dir": config_dir,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumes": [],
      },
    )
    return
  record = read(workdir)
  record["resumes"].append(
    {
      "step": step,
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "environment_changes": differences(record["environment"], env),
      "config_changes": differences(record["config"], config_dict),
      "code_changes": differences(record.get("code", {}), code or {}),
    }
  )
  record.update(config=config_dict, code=code or {}, config_dir=config_dir)
  _write(workdir, record)


def code_changes(old: dict, new: dict) -> list[str]:
  """One line per user file whose content differs between two runs' `code` records.

  The same content at another path (a checkout moved, another machine) is no change.
  """
  lines = []
  for field in sorted(set(old) | set(new)):
    before, after = old.get(field), new.get(field)
    if before is not None and after is not None and before["sha256"] == after["sha256"]:
      continue
    if before is None or after is None:
      which = after or before
      lines.append(
        f"{which['file']} ({field}={which['name']!r}) was "
        f"{'not used' if before is None else 'used'} before and is "
        f"{'used' if before is None else 'not used'} now"
      )
    else:
      moved = "" if before["file"] == after["file"] else f" (read from {before['file']} before)"
      lines.append(
        f"{after['file']} ({field}={after['name']!r}) changed{moved}: sha256 "
        f"{before['sha256'][:12]}... -> {after['sha256'][:12]}..."
      )
  return lines


def differences(old, new, prefix: str = "") -> dict[str, list]:
  """{dotted.path: [old, new]} for every leaf that differs between two JSON trees."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = {}
    for key in sorted(set(old) | set(new)):
      out.update(differences(old.get(key), new.get(key), f"{prefix}{key}."))
    return out
  return {} if old == new else {prefix.rstrip("."): [old, new]}


def _get_path(tree, dotted: str, missing=None):
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return missing
    tree = tree[part]
  return tree


def _has_path(tree, dotted: str) -> bool:
  return _get_path(tree, dotted, _MISSING) is not _MISSING


_MISSING = object()


def blocking_config_changes(old: dict, new: dict) -> dict[str, list]:
  """The config changes that would make a resumed run differ from the one started."""
  changes = differences(old, new)
  for field in RESUMABLE_FIELDS:
    changes.pop(field, None)
  for field in list(changes):
    if field.split(".")[0] in START_ONLY_SECTIONS:
      changes.pop(field)
  defaults = json.loads(base_config().to_json_best_effort())
  for field in list(changes):  # a run from before a field existed ran as its default
    if not _has_path(old, field) and _get_path(new, field) == _get_path(defaults, field, object()):
      changes.pop(field)
  schedule = _get_path(new, "optimizer.schedule")
  if schedule in HORIZON_FREE_SCHEDULES and _get_path(old, "optimizer.schedule") == schedule:
    changes.pop("num_train_steps", None)
    changes.pop("num_epochs", None)
  return changes
