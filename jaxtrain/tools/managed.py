"""Managed training services: where SageMaker and Vertex AI say a job's files go.

A jaxtrain image runs as a managed training job unchanged: when a job's
environment variables are present, `jaxtrain train` takes from them what its
flags would otherwise say (a flag given on the command line still wins).

| variable | service | jaxtrain uses it as |
| --- | --- | --- |
| `SM_INPUT_DIR` (/opt/ml/input) | SageMaker | its parent's `checkpoints/` is the workdir: SageMaker's checkpoint folder, synced to S3 and restored when a spot job restarts |
| `SM_OUTPUT_DIR` (/opt/ml/output) | SageMaker | `<it>/tensorboard`: the event files (TensorBoardOutputConfig's folder) |
| `SM_MODEL_DIR` (/opt/ml/model) | SageMaker | the exported model (`jaxtrain export`) of a finished run |
| `SM_CHANNEL_DATA` | SageMaker | `dataset.data_dir` (prepared TFDS datasets, `jaxtrain data import`s) |
| `SM_CHANNEL_FILES` | SageMaker | `dataset.path` (source files, e.g. IDX) |
| `SM_HPS` | SageMaker | config overrides: `{"optimizer.learning_rate": 0.01, ...}` |
| `AIP_CHECKPOINT_DIR` | Vertex AI | the workdir |
| `AIP_TENSORBOARD_LOG_DIR` | Vertex AI | the event files |
| `AIP_MODEL_DIR` | Vertex AI | the exported model of a finished run |

Vertex AI gives `gs://` URLs; jaxtrain writes to a filesystem, so they are
read as Vertex AI's Cloud Storage FUSE mount, `/gcs/<bucket>/<path>`
(`$JAXTRAIN_GCS_MOUNT` names another mount point), and refused in one line
where that mount is absent. (Vertex passes
hyperparameters as command-line flags, `--config.FIELD=VALUE`, already.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from jaxtrain.errors import UserError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclasses.dataclass
class Managed:
  """What a managed job's environment says: `None` where it says nothing."""

  service: str | None = None
  workdir: str | None = None
  tensorboard_dir: str | None = None
  model_dir: str | None = None
  overrides: tuple[str, ...] = ()  # --config.FIELD=VALUE flags


def local_path(path: str, what: str, environ=os.environ) -> str:
  """`path` as a filesystem path: a `gs://` URL through Vertex AI's /gcs mount, else refused."""
  if not _URL.match(path):
    return path
  if path.startswith("gs://") and os.path.isdir(environ.get("JAXTRAIN_GCS_MOUNT", "/gcs")):
    return os.path.join(environ.get("JAXTRAIN_GCS_MOUNT", "/gcs"), path[len("gs://") :])
  raise UserError(
    f"{what} {path} is a URL: jaxtrain writes its checkpoints, metrics and manifest "
    "to a filesystem; mount the bucket (gcsfuse, s3fs; Vertex AI mounts gs://BUCKET "
    "at /gcs/BUCKET) and give that path"
  )


def _sagemaker_overrides(hps: str) -> tuple[str, ...]:
  try:
    values = json.loads(hps)
  except json.JSONDecodeError as e:
    raise UserError(f"SM_HPS is not JSON: {e}") from None
  if not isinstance(values, dict):
    raise UserError("SM_HPS must be a JSON object of config fields")
  return tuple(
    f"--config.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()
  )


def from_environment(environ=os.environ) -> Managed:
  """The managed service this process runs under, if any, and what it says."""
  if "SM_MODEL_DIR" in environ or "SM_TRAINING_ENV" in environ:
    root = os.path.dirname(environ.get("SM_INPUT_DIR", "/opt/ml/input").rstrip("/"))
    overrides = []
    if environ.get("SM_CHANNEL_DATA"):
      overrides.append(f"--config.dataset.data_dir={environ['SM_CHANNEL_DATA']}")
    if environ.get("SM_CHANNEL_FILES"):
      overrides.append(f"--config.dataset.path={environ['SM_CHANNEL_FILES']}")
    overrides += _sagemaker_overrides(environ.get("SM_HPS", "{}"))
    return Managed(
      "SageMaker",
      os.path.join(root, "checkpoints"),
      os.path.join(environ.get("SM_OUTPUT_DIR", os.path.join(root, "output")), "tensorboard"),
      environ.get("SM_MODEL_DIR", os.path.join(root, "model")),
      tuple(overrides),
    )
  if any(k in environ for k in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")):
    get = lambda k: local_path(environ[k], k, environ) if environ.get(k) else None
    return Managed(
      "Vertex AI", get("AIP_CHECKPOINT_DIR"), get("AIP_TENSORBOARD_LOG_DIR"), get("AIP_MODEL_DIR")
    )
  return Managed()
