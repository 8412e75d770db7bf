"""`jaxtrain rerun`: train a workdir's manifest again and compare the bits.

The rerun stops at the original's latest checkpointed step, so an unfinished
original is compared like for like. When the params digests differ, the
report names what differs between the two manifests (a user's model, task
or dataset file that changed; library versions, devices, XLA flags, dataset
fingerprint), the usual causes.
"""

from __future__ import annotations

import os
import shutil

import ml_collections

from jaxtrain.data import store
from jaxtrain.run import checkpoint, manifest
from jaxtrain.run.loop import train_and_evaluate
from jaxtrain.tools.predict import trusted_code_dir


def rerun(
  workdir: str, into: str, *, data_dir: str | None = None, code_dir: str | None = None
) -> dict:
  """Trains `workdir`'s manifest again in `into` (a new or empty folder) and compares the bits.

  The manifest is data: datasets are prepared in `data_dir` (default: the
  standard one), never where the manifest says, and a run's own code is loaded
  only from `code_dir`. A rerun that fails or is stopped leaves `into` empty.
  """
  original = manifest.read(workdir)
  step, arrays = checkpoint.load_arrays(workdir)
  config = ml_collections.ConfigDict(original["config"])
  config.dataset.data_dir = data_dir or store.default_data_dir()
  code_dir = trusted_code_dir(workdir, original, code_dir)
  existed = os.path.isdir(into)
  try:
    train_and_evaluate(config, into, stop_at_step=step, config_dir=code_dir)
  except BaseException:
    shutil.rmtree(into, ignore_errors=True)
    if existed:
      os.makedirs(into, exist_ok=True)
    raise
  rerun_step, rerun_arrays = checkpoint.load_arrays(into)
  new = manifest.read(into)
  expected = checkpoint.tree_digest(arrays["params"])
  got = checkpoint.tree_digest(rerun_arrays["params"])
  return {
    "workdir": workdir,
    "into": into,
    "step": step,
    "rerun_step": rerun_step,
    "match": expected == got and step == rerun_step,
    "params_digest": expected,
    "rerun_params_digest": got,
    "environment_differences": manifest.differences(original["environment"], new["environment"]),
    "dataset_differences": manifest.differences(original["dataset"], new["dataset"]),
    "code_differences": manifest.code_changes(original.get("code", {}), new.get("code", {})),
  }


def describe(report: dict) -> str:
  lines = [
    f"rerun of {report['workdir']} in {report['into']} to step {report['step']}:",
    "params digest matches bit for bit"
    if report["match"]
    else f"params digest DIFFERS: {report['params_digest']} (original) vs "
    f"{report['rerun_params_digest']} (rerun)",
  ]
  differences = {
    **{f"environment.{k}": v for k, v in report["environment_differences"].items()},
    **{f"dataset.{k}": v for k, v in report["dataset_differences"].items()},
  }
  if differences or report["code_differences"]:
    lines.append("what differs between the two runs' manifests:")
    lines += [f"  {line}" for line in report["code_differences"]]
    lines += [
      f"  {k}: {old!r} (original) vs {new!r} (rerun)" for k, (old, new) in differences.items()
    ]
  elif not report["match"]:
    lines.append(
      "the manifests agree on versions, devices, XLA flags and data: "
      "look for nondeterministic ops (config.deterministic_gpu_ops)"
    )
  return "\n".join(lines)
