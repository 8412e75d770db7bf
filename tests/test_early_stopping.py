"""Early stopping and best-k checkpoints: the same stop whether or not the run was interrupted."""

import json

from jaxtrain.run import checkpoint
from jaxtrain.run import early_stopping
from jaxtrain.run import loop as train
from jaxtrain.run.metric_writers import read_metrics


def test_tracker_counts_evaluations_without_a_real_improvement():
  t = early_stopping.Tracker("min", min_delta=0.1, patience=2)
  for step, value in [(1, 1.0), (2, 0.95), (3, 0.85), (4, 0.8)]:
    t.update(step, value)
  assert (t.best, t.best_step, t.since_best, t.should_stop) == (0.85, 3, 1, False)
  t.update(5, 0.84)
  assert t.should_stop
  up = early_stopping.Tracker("max", min_delta=0.0, patience=0)
  for step, value in [(1, 0.5), (2, 0.7), (3, 0.7)]:
    up.update(step, value)
  assert (up.best, up.best_step, up.should_stop) == (
    0.7,
    2,
    False,
  )  # ties keep the first; patience 0 never stops


def _config(small_config):
  c = small_config
  c.num_train_steps = 400
  c.eval_every_steps = 10
  c.log_every_steps = 10
  c.checkpoint_every_steps = 50
  c.early_stopping.update(metric="loss", mode="min", patience=2, min_delta=0.02)
  c.keep_best_checkpoints = 2
  return c


def _summary(workdir):
  events = read_metrics(workdir)
  stop = [e for e in events if e["split"] == "early_stop"]
  test = [e for e in events if e["split"] == "test"]
  best = json.loads((workdir / "best_checkpoints" / "best.json").read_text())
  step, arrays = checkpoint.load_arrays(str(workdir))
  return stop, test, best, step, checkpoint.tree_digest(arrays)


def test_early_stop_is_the_same_after_an_interruption(tmp_path, small_config):
  config = _config(small_config)
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  stop, test, best, step, digest = _summary(tmp_path / "straight")
  assert len(stop) == 1 and stop[0]["step"] == step < config.num_train_steps  # it stopped early
  evals = {
    e["step"]: e["loss"] for e in read_metrics(tmp_path / "straight") if e["split"] == "eval"
  }
  assert max(evals) == step
  # Patience ran from the last improvement by min_delta; the best checkpoint is the lowest loss.
  improved = stop[0]["last_improvement_step"]
  assert all(evals[s] > evals[improved] - 0.02 for s in evals if s > improved)
  assert step - improved == 2 * config.eval_every_steps
  assert best["best_value"] == min(evals.values()) == evals[best["best_step"]]
  assert len(best["kept_steps"]) == 2 and best["best_step"] in best["kept_steps"]
  kept = sorted(
    int(p.name) for p in (tmp_path / "straight" / "best_checkpoints").iterdir() if p.name.isdigit()
  )
  assert kept == sorted(best["kept_steps"])
  assert kept == sorted(
    sorted(evals, key=lambda s: (evals[s], s))[:2]
  )  # the two lowest eval losses
  assert (
    len(test) == 1 and test[0]["step"] == best["best_step"]
  )  # logged under the step it measured

  # Interrupted before the stop, then resumed: the same stop, checkpoints, bits and test result.
  train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=stop[0]["step"] - 10)
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  r_stop, r_test, r_best, r_step, r_digest = _summary(tmp_path / "resumed")
  assert (r_step, r_digest) == (step, digest)
  assert r_stop == [dict(stop[0], time=r_stop[0]["time"])] and r_best == best
  assert {k: v for k, v in r_test[0].items() if k != "time"} == {
    k: v for k, v in test[0].items() if k != "time"
  }

  # Running a finished (early-stopped) run again trains nothing more.
  train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert checkpoint.load_arrays(str(tmp_path / "resumed"))[0] == step
  assert len([e for e in read_metrics(tmp_path / "resumed") if e["split"] == "test"]) == 1
