"""`train_and_evaluate(config, workdir)`: the loop around the pure steps.

A run is a pure function of (config, data, seed): the workdir holds what it
needs to resume (checkpoints of state + data position) and to be read back
(config.json, metrics.jsonl, TensorBoard events). Running the same command in
the same workdir resumes from the latest checkpoint and ends with the bits an
uninterrupted run would have.

The loop dispatches steps without waiting for them: metrics are summed on
device and fetched only every `log_every_steps`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time

import jax
import jax.numpy as jnp

from jaxtrain import checkpoint, datasets, input_pipeline, manifest, nan_guard, parallel
from jaxtrain.config import validate
from jaxtrain.errors import UserError
from jaxtrain.metric_writers import MetricWriter, ProgressBar, read_metrics
from jaxtrain.models import create_model
from jaxtrain.optim import make_optimizer
from jaxtrain.preemption import Preempted, PreemptionWatcher
from jaxtrain.state import TrainState, linen_apply_fn
from jaxtrain.steps import accumulate, classification_loss, eval_step, summarize, train_step

log = logging.getLogger("jaxtrain")

LOSSES = {"classification": classification_loss}


def create_train_state(config, model, tx, example_batch, apply_model=None) -> TrainState:
  """The step-0 state: parameters initialised from `fold_in`s of the config's seed.

  `apply_model` (default `model`) is the module the steps apply: the same
  model built for pmap's axis, whose parameters are the same.
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  inputs = jnp.zeros((1,) + example_batch["image"].shape[1:], example_batch["image"].dtype)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": init_rng, "dropout": init_rng}, inputs)
  return TrainState.create(apply_fn=linen_apply_fn(apply_model or model), variables=variables,
                           tx=tx, loss_fn=LOSSES[config.task], rng=state_rng)


def _train_and_accumulate(state, totals, health, batch, axis_name=None):
  new_state, metrics = train_step(state, batch, axis_name=axis_name)
  state, metrics, health = nan_guard.guard(state, new_state, metrics, health)
  return state, accumulate(totals, metrics), health


def _eval_and_accumulate(state, totals, batch, axis_name=None):
  return accumulate(totals, eval_step(state, batch, axis_name=axis_name))


@functools.cache
def _compiled_eval(layout: parallel.Layout):
  return layout.compile(_eval_and_accumulate, donate_argnums=(1,),
                        out_shardings=parallel.replicated(layout.mesh))


def _compiled_train(layout: parallel.Layout, state):
  """The loop's step for `layout` and `state` (whose fsdp shardings it keeps)."""
  if not layout.fsdp:
    return _compiled_replicated_train(layout)
  every = parallel.replicated(layout.mesh)
  return layout.compile(_train_and_accumulate, donate_argnums=(0, 1, 2),
                        out_shardings=(layout.state_shardings(state), every, every))


@functools.cache
def _compiled_replicated_train(layout: parallel.Layout):
  every = parallel.replicated(layout.mesh)
  return layout.compile(_train_and_accumulate, donate_argnums=(0, 1, 2),
                        out_shardings=(every, every, every))


def evaluate(state: TrainState, source, *, batch_size: int, layout: parallel.Layout) -> dict[str, float]:
  """Mean metrics over every example of `source` (padded last batch masked out).

  `state` is in the layout's step form (under pmap: a copy per device).
  """
  dataset = input_pipeline.eval_dataset(
      source, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  step_fn, totals = _compiled_eval(layout), None
  for local_batch in input_pipeline.iterate(dataset):
    batch = layout.put_batch(local_batch)
    if totals is None:
      totals = layout.zeros_like(jax.eval_shape(step_fn, state, None, batch))
    with jax.transfer_guard("disallow"):
      totals = step_fn(state, totals, batch)
  return summarize(layout.fetch(totals))


def _host_prefetch(source, config) -> int:
  """Reader threads only where reading costs: a split in memory is read in the loop's thread."""
  return 0 if isinstance(source, input_pipeline.InMemorySource) else config.dataset.prefetch


def resolve_num_train_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * input_pipeline.steps_per_epoch(num_train_examples, config.batch_size)


def _check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def _check_data_fits_model(config, builder, model, example_batch) -> None:
  """Catches data the model cannot take before anything compiles."""
  label = builder.info.features["label"] if "label" in builder.info.features else None
  num_classes = getattr(label, "num_classes", None)
  if num_classes and num_classes > config.model.num_classes:
    raise UserError(f"dataset {builder.name} has labels 0..{num_classes - 1} but "
                    f"config.model.num_classes={config.model.num_classes}")
  inputs = example_batch["image"]
  try:
    jax.eval_shape(functools.partial(model.init, train=False),
                   {"params": jax.random.PRNGKey(0)}, jnp.zeros((1,) + inputs.shape[1:], inputs.dtype))
  except Exception as e:
    raise UserError(f"config.model ({config.model.name}) cannot take this dataset's inputs of "
                    f"shape {inputs.shape[1:]} {inputs.dtype}: {str(e).splitlines()[0]}") from None


def _check_config_unchanged(workdir: str, config_dict: dict, allow: bool) -> None:
  """Refuses to resume a run under a config that would change the steps it took."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or not checkpoint.make_manager(workdir, read_only=True).all_steps():
    return
  with open(path) as f:
    saved = json.load(f)
  changes = manifest.blocking_config_changes(saved, config_dict)
  if changes and not allow:
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise UserError(f"{workdir} holds a run of a different config ({listed}); use a new "
                    "workdir, or pass --allow_config_change to resume under the new config")


_WRITE_FAILURES = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded",
                   "Read-only file system", "Failed writing")


def _write_failure(error: Exception, manager, workdir: str, step: int) -> UserError | None:
  """A one-line UserError if `error` is a failed write (disk full...), else None.

  Orbax reports an asynchronous write's failure at the next save or wait,
  often as a ValueError from TensorStore, so the text is what identifies it.
  """
  text = str(error)
  reason = next((r for r in _WRITE_FAILURES if r in text), None)
  if reason is None and not isinstance(error, OSError):
    return None
  in_checkpoint = re.search(r"checkpoints/(\d+)", text)
  failed = int(in_checkpoint[1]) if in_checkpoint else step
  with contextlib.suppress(Exception):
    manager.reload()  # a failed asynchronous save must not count as a step
  intact = [s for s in manager.all_steps() if s < failed or (s == failed and not in_checkpoint)]
  kept = f"the checkpoint of step {max(intact)} is intact" if intact else "no earlier checkpoint exists"
  why = getattr(error, "strerror", None) or reason or text.splitlines()[0]
  target = (f"the checkpoint of step {failed} to {checkpoint.checkpoint_dir(workdir)}"
            if in_checkpoint or not getattr(error, "filename", None) else error.filename)
  return UserError(f"could not write {target}: {why}; {kept}")


def _save(manager, workdir: str, step: int, state, train_iter, health, metric_names, config):
  """Saves unless the state is non-finite; a failed write names the intact checkpoint."""
  nan_guard.check(health, metric_names, policy=config.nan_policy,
                  max_consecutive=config.nan_max_consecutive_skips)
  if not bool(nan_guard.all_finite(checkpoint.state_arrays(state))):
    raise nan_guard.NonFiniteError(f"the state at step {step} holds non-finite values; "
                                   "not saved (the latest checkpoint is the last finite state)")
  try:
    checkpoint.save(manager, step, state, train_iter)
  except Exception as e:  # this save, or an earlier asynchronous one, failed to write
    failure = _write_failure(e, manager, workdir, step)
    if failure is None:
      raise
    raise failure from None


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None,
                       allow_config_change: bool = False, on_metrics=None,
                       progress: bool = False) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint.

  `stop_at_step` ends this process after that global step (with a checkpoint)
  without changing the run: starting again continues to `num_train_steps`.
  SIGTERM/SIGINT save a checkpoint and raise `Preempted`. `on_metrics(step,
  split, metrics)` sees every logged event (a sweep's pruner raises from it to
  stop a trial). `progress` shows a live bar (on a terminal).
  """
  validate(config)
  _check_workdir(workdir)
  config_dict = json.loads(config.to_json_best_effort())
  _check_config_unchanged(workdir, config_dict, allow_config_change)
  layout = parallel.Layout.from_config(config.parallel)
  layout.check_batch_size(config.batch_size)

  builder = datasets.get_builder(config.dataset)
  sources = {k: input_pipeline.cached(datasets.get_source(builder, config.dataset[k], f"dataset.{k}"),
                                     config.dataset.cache_max_mb << 20)
             if config.dataset[k] else None for k in ("train_split", "eval_split", "test_split")}
  train_source = sources["train_split"]
  num_train_steps = resolve_num_train_steps(config, len(train_source))
  train_data = input_pipeline.train_dataset(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = input_pipeline.DevicePrefetch(
      input_pipeline.iterate(train_data, _host_prefetch(train_source, config)), layout.put_batch,
      config.parallel.prefetch_to_device)

  tx, schedule = make_optimizer(config.optimizer, num_train_steps)
  model = create_model(config.model)
  example_batch = train_data[0]
  _check_data_fits_model(config, builder, model, example_batch)
  axis_name = parallel.DATA_AXIS if layout.mode == "pmap" else None
  state = layout.place_state(create_train_state(
      config, model, tx, example_batch, create_model(config.model, axis_name)))

  manager, state = checkpoint.restore_latest_valid(
      workdir, state, train_iter, max_to_keep=config.keep_checkpoints,
      async_save=config.async_checkpointing)
  step = int(parallel.host_value(state.step))
  train_fn = _compiled_train(layout, state)
  state = layout.to_step(state)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    manifest.record_start(workdir, config_dict, manifest.dataset_record(builder, config.dataset), step)
  if step:
    log.info("resumed from %s at step %d", checkpoint.checkpoint_dir(workdir), step)

  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  bar = ProgressBar(num_train_steps, step, input_pipeline.steps_per_epoch(
      len(train_source), config.batch_size), enabled=progress and jax.process_index() == 0)
  first_step = step

  def emit(split, metrics):
    writer.write(step, split, metrics)
    bar.set_metrics(split, metrics)
    if on_metrics is not None:
      on_metrics(step, split, metrics)
  if step == 0:
    writer.write_text("config", "```\n" + str(config) + "\n```")
  last_step = num_train_steps if stop_at_step is None else min(stop_at_step, num_train_steps)
  health = layout.put_replicated(nan_guard.new_health())
  # Metric totals' shapes, from one trace of the step (not per log interval).
  total_shapes = jax.eval_shape(train_fn, state, None, health,
                                layout.put_batch(example_batch))[1]
  metric_names = sorted(total_shapes)
  totals, t_log, steps_since_log = None, time.perf_counter(), 0
  save = lambda: _save(manager, workdir, step, layout.from_step(state), train_iter,
                       layout.fetch(health), metric_names, config)
  try:
    with PreemptionWatcher() as preemption:
      while step < last_step:
        batch = next(train_iter)
        if totals is None:
          totals = layout.zeros_like(total_shapes)
        with jax.transfer_guard("disallow"):
          state, totals, health = train_fn(state, totals, health, batch)
        step += 1
        steps_since_log += 1
        bar.update(step)
        final = step == num_train_steps
        if step % config.log_every_steps == 0 or final or step == last_step:
          metrics = summarize(layout.fetch(totals))  # the loop's only regular wait for the device
          skipped = nan_guard.check(layout.fetch(health), metric_names, policy=config.nan_policy,
                                    max_consecutive=config.nan_max_consecutive_skips)
          elapsed = time.perf_counter() - t_log
          metrics.update(learning_rate=float(schedule(step - 1)),
                         steps_per_sec=steps_since_log / elapsed,
                         examples_per_sec=metrics.pop("count") / elapsed)
          if skipped:
            metrics["skipped_steps"] = skipped
          emit("train", metrics)
          totals, t_log, steps_since_log = None, time.perf_counter(), 0
        if sources["eval_split"] is not None and (step % config.eval_every_steps == 0 or final):
          emit("eval", _without_count(evaluate(
              state, sources["eval_split"], batch_size=config.batch_size, layout=layout)))
        preempted = preemption.should_stop(step)  # every step: multi-host sync needs it
        if step % config.checkpoint_every_steps == 0 or final or step == last_step or preempted:
          save()
        if preempted:
          raise Preempted(step, preemption.signal_name)

    if step == num_train_steps and sources["test_split"] is not None and not _has_event(workdir, "test"):
      emit("test", _without_count(evaluate(
          state, sources["test_split"], batch_size=config.batch_size, layout=layout)))
  except BaseException as e:
    # Best effort, never masking the error: let a save in flight (a preemption's)
    # reach the disk, then close what can be closed.
    for cleanup in (manager.wait_until_finished, writer.close, bar.close):
      with contextlib.suppress(Exception):
        cleanup()
    failure = _write_failure(e, manager, workdir, step) if isinstance(e, Exception) else None
    with contextlib.suppress(Exception):
      manager.close()
    if failure is not None and not isinstance(e, UserError):
      raise failure from None
    raise
  _finish_saves(manager, workdir, step)
  bar.close()
  if step == num_train_steps > first_step:
    writer.write_hparams(config_dict, _final_metrics(workdir))
  writer.close()
  return layout.from_step(state)


def _finish_saves(manager, workdir: str, step: int) -> None:
  """Waits for asynchronous saves; a write that failed is reported as such."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    failure = _write_failure(e, manager, workdir, step)
    if failure is None:
      raise
    raise failure from None
  finally:
    manager.close()


def _final_metrics(workdir: str) -> dict[str, float]:
  """{"split/name": last value} over the whole run (resumed segments included)."""
  final = {}
  for event in read_metrics(workdir):
    for k, v in event.items():
      if k not in ("step", "split", "time") and isinstance(v, (int, float)):
        final[f"{event['split']}/{k}"] = v
  return final


def _without_count(metrics):
  metrics = dict(metrics)
  metrics["num_examples"] = int(metrics.pop("count"))
  return metrics


def _has_event(workdir: str, split: str) -> bool:
  return any(event.get("split") == split for event in read_metrics(workdir))
