"""manifest.json, refusing to resume under a changed config, and `jaxtrain rerun`."""

import json
import os

import pytest

from jaxtrain import train_and_evaluate
from jaxtrain.run import manifest
from jaxtrain.errors import UserError
from test_cli import jaxtrain


def test_manifest_records_config_environment_and_data(small_config, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(small_config, workdir, stop_at_step=30)
  record = manifest.read(workdir)
  assert record["config"]["batch_size"] == 50 and record["seed"] == 0
  env = record["environment"]
  assert set(manifest.PACKAGES) <= set(env["versions"]) and env["versions"]["jax"]
  assert env["devices"] == {"cpu": 1} and env["process_count"] == 1 and "xla_flags" in env
  assert record["dataset"]["name"] == "digits" and record["dataset"]["version"]
  assert record["dataset"]["splits"]["train_split"] == "train[:90%]"
  assert len(record["dataset"]["fingerprint"]) == 64
  # Resuming appends the start; same environment, so no changes recorded.
  small_config.log_every_steps = 10
  train_and_evaluate(small_config, workdir)
  resumes = manifest.read(workdir)["resumes"]
  assert [r["step"] for r in resumes] == [30]
  assert resumes[0]["environment_changes"] == {}
  assert resumes[0]["config_changes"] == {"log_every_steps": [20, 10]}


def test_resume_under_a_changed_config_is_refused_with_the_fields(small_config, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(small_config, workdir, stop_at_step=30)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  small_config.optimizer.learning_rate = 0.1
  small_config.batch_size = 64
  with pytest.raises(UserError) as info:
    train_and_evaluate(small_config, workdir)
  message = str(info.value)
  assert "holds a run of a different config" in message
  assert "batch_size: 50 -> 64" in message and "optimizer.learning_rate: 0.003 -> 0.1" in message
  assert "--allow_config_change" in message
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert json.load(open(os.path.join(workdir, "config.json")))["batch_size"] == 50
  # Explicitly allowed: it resumes, and the manifest records what changed.
  small_config.batch_size = 50
  state = train_and_evaluate(small_config, workdir, allow_config_change=True)
  assert int(state.step) == 60
  assert manifest.read(workdir)["resumes"][0]["config_changes"] == {
    "optimizer.learning_rate": [0.003, 0.1]
  }


def test_intervals_and_horizon_free_extensions_resume_without_complaint(small_config, tmp_path):
  small_config.optimizer.update(schedule="constant", warmup_steps=0)
  workdir = str(tmp_path / "run")
  train_and_evaluate(small_config, workdir)  # 60 steps
  small_config.update(
    num_train_steps=80,
    log_every_steps=40,
    eval_every_steps=40,
    checkpoint_every_steps=40,
    keep_checkpoints=4,
  )
  assert int(train_and_evaluate(small_config, workdir).step) == 80
  # A cosine schedule's horizon is the run length: extending it changes past steps.
  small_config.optimizer.update(schedule="warmup_cosine")
  assert manifest.blocking_config_changes(
    {"num_train_steps": 60, "optimizer": {"schedule": "warmup_cosine"}},
    {"num_train_steps": 80, "optimizer": {"schedule": "warmup_cosine"}},
  ) == {"num_train_steps": [60, 80]}


def test_rerun_matches_and_names_what_differs(tmp_path, data_dir):
  common = [
    "--config",
    "configs/digits.py",
    f"--config.dataset.data_dir={data_dir}",
    "--config.num_train_steps=40",
    "--config.model.name=mlp",
  ]
  assert (
    jaxtrain(
      "train", *common, "--workdir", str(tmp_path / "a"), "--config.deterministic_gpu_ops=true"
    ).returncode
    == 0
  )
  assert (
    "--xla_gpu_deterministic_ops=true"
    in manifest.read(str(tmp_path / "a"))["environment"]["xla_flags"]
  )
  # An altered version string in the manifest is named as the one difference
  # (the rerun set the deterministic-ops flag too, so xla_flags agree).
  path = tmp_path / "a" / "manifest.json"
  record = json.loads(path.read_text())
  real_jax = record["environment"]["versions"]["jax"]
  record["environment"]["versions"]["jax"] = "0.4.1"
  path.write_text(json.dumps(record))
  same = jaxtrain(
    "rerun", str(tmp_path / "a"), "--into", str(tmp_path / "b"), "--json", "--data_dir", data_dir
  )
  assert same.returncode == 0, same.stderr[-1500:]
  report = json.loads(same.stdout)
  assert report["match"]
  assert report["environment_differences"] == {"versions.jax": ["0.4.1", real_jax]}

  # A run made under other XLA flags really differs, and the report says which flag.
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_enable_fast_math=true")
  assert jaxtrain("train", *common, "--workdir", str(tmp_path / "fast"), env=env).returncode == 0
  differs = jaxtrain(
    "rerun", str(tmp_path / "fast"), "--into", str(tmp_path / "d"), "--data_dir", data_dir
  )
  assert differs.returncode == 1
  assert "params digest DIFFERS" in differs.stdout
  assert (
    "environment.xla_flags: '--xla_cpu_enable_fast_math=true' (original) vs ''" in differs.stdout
  )


def test_rerun_refuses_a_non_empty_target(tmp_path):
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "keep.txt").write_text("mine")
  result = jaxtrain("rerun", str(tmp_path / "a"), "--into", str(tmp_path / "b"))
  assert result.returncode == 2
  assert (
    result.stderr.strip()
    == f"jaxtrain: error: --into {tmp_path / 'b'} is not empty: rerun into a new directory"
  )
  assert (tmp_path / "b" / "keep.txt").read_text() == "mine"


def test_user_code_changes_are_content_not_paths():
  record = {
    "config.model.name": {"name": "model.py:Net", "file": "/a/model.py", "sha256": "1" * 64}
  }
  moved = {"config.model.name": dict(record["config.model.name"], file="/b/model.py")}
  assert manifest.code_changes(record, moved) == []  # the same file on another machine
  edited = {"config.model.name": dict(moved["config.model.name"], sha256="2" * 64)}
  assert manifest.code_changes(record, edited) == [
    "/b/model.py (config.model.name='model.py:Net') changed (read from /a/model.py before): "
    "sha256 111111111111... -> 222222222222..."
  ]
  assert manifest.code_changes(record, {}) == [
    "/a/model.py (config.model.name='model.py:Net') was used before and is not used now"
  ]
