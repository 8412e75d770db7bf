"""Managed training: a run under SageMaker's (simulated) environment puts its files where the
service looks, and a preempted job resumes; Vertex AI's gs:// paths go through its mount."""

import os
import signal
import subprocess
import sys
import time

import pytest

from jaxtrain.errors import UserError
from jaxtrain.run import checkpoint
from jaxtrain.run.metric_writers import read_metrics
from jaxtrain.tools import managed
from jaxtrain.tools.cli import main

from conftest import ROOT


def test_sagemaker_job_writes_where_sagemaker_looks_and_resumes_after_sigterm(tmp_path, data_dir):
  ml = tmp_path / "opt" / "ml"
  env = dict(
    os.environ,
    SM_MODEL_DIR=str(ml / "model"),
    SM_INPUT_DIR=str(ml / "input"),
    SM_OUTPUT_DIR=str(ml / "output"),
    SM_CHANNEL_DATA=data_dir,
    SM_HPS='{"num_train_steps": 60, "optimizer.learning_rate": 0.002}',
  )
  cmd = [
    sys.executable,
    "-m",
    "jaxtrain.tools.cli",
    "train",
    "--config",
    "digits",
    "--quiet",
    "--config.checkpoint_every_steps=10",
    "--config.eval_every_steps=30",
    "--config.log_every_steps=10",
  ]
  workdir = ml / "checkpoints"  # SageMaker's checkpoint folder: synced to S3, restored on restart
  proc = subprocess.Popen(
    cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.monotonic() + 300
  while not checkpoint.saved_steps(str(workdir)) and proc.poll() is None:
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)  # a spot interruption
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]
  assert not (ml / "model").exists()  # an unfinished run exports nothing
  again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert checkpoint.saved_steps(str(workdir))[-1] == 60
  config = (workdir / "config.json").read_text()
  assert '"learning_rate": 0.002' in config and '"num_train_steps": 60' in config
  assert f'"data_dir": "{data_dir}"' in config
  assert (
    list((ml / "output" / "tensorboard").glob("events*")) and not (workdir / "tensorboard").exists()
  )
  assert (ml / "model" / "model.jaxexport").exists() and (ml / "model" / "signature.json").exists()
  assert [e["step"] for e in read_metrics(str(workdir)) if e["split"] == "test"] == [60]


def test_vertex_ai_gs_paths_go_through_the_fuse_mount(tmp_path):
  env = {
    "AIP_CHECKPOINT_DIR": "gs://bucket/job/checkpoints",
    "AIP_MODEL_DIR": "gs://bucket/job/model",
    "AIP_TENSORBOARD_LOG_DIR": "gs://bucket/job/logs",
    "JAXTRAIN_GCS_MOUNT": str(tmp_path),
  }
  m = managed.from_environment(env)
  assert (m.service, m.workdir, m.model_dir, m.tensorboard_dir) == (
    "Vertex AI",
    f"{tmp_path}/bucket/job/checkpoints",
    f"{tmp_path}/bucket/job/model",
    f"{tmp_path}/bucket/job/logs",
  )
  with pytest.raises(
    UserError, match="AIP_CHECKPOINT_DIR gs://bucket/job/checkpoints is a URL: .*mount the bucket"
  ):
    managed.from_environment(dict(env, JAXTRAIN_GCS_MOUNT=str(tmp_path / "no_such_mount")))
  assert managed.from_environment({}) == managed.Managed()


def test_a_remote_workdir_is_refused_in_one_line(capsys):
  assert main(["train", "--config", "digits", "--workdir", "s3://bucket/runs/x"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
    "jaxtrain: error: --workdir s3://bucket/runs/x is a URL"
  )
  assert not os.path.exists("s3:")


def test_bad_hyperparameters_are_one_line():
  with pytest.raises(UserError, match="SM_HPS is not JSON"):
    managed.from_environment({"SM_MODEL_DIR": "/x", "SM_HPS": "{lr: 1"})
