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
import numpy as np

from jaxtrain import (checkpoint, early_stopping, finetune, input_pipeline, manifest, nan_guard,
                      parallel, run_inputs)
from jaxtrain.config import validate
from jaxtrain.errors import UserError
from jaxtrain.metric_writers import MetricWriter, ProgressBar, read_metrics
from jaxtrain.models import IMAGE_MODELS
from jaxtrain.optim import make_optimizer
from jaxtrain.preemption import Preempted, PreemptionWatcher
from jaxtrain.state import TrainState
from jaxtrain.steps import accumulate, eval_step, summarize, train_step

log = logging.getLogger("jaxtrain")


def model_inputs(config, batch):
  """One example's worth of zeros shaped like what the model takes from `batch`."""
  taken = batch["image"] if config.model.name in IMAGE_MODELS else {
      k: v for k, v in batch.items() if k not in ("label", "mask")}
  return jax.tree.map(lambda x: jnp.zeros((1,) + x.shape[1:], x.dtype), taken)


def create_train_state(config, model, tx, example_batch, apply_fn, loss_fn) -> TrainState:
  """The step-0 state: parameters initialised from `fold_in`s of the config's seed.

  `apply_fn` applies the model (under pmap: the same model built for the
  device axis, whose parameters are the same); `loss_fn` is the task's.
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": init_rng, "dropout": init_rng}, model_inputs(config, example_batch))
  return TrainState.create(apply_fn=apply_fn, variables=variables, tx=tx, loss_fn=loss_fn,
                           rng=state_rng)


def _train_and_accumulate(state, totals, health, batch, axis_name=None):
  new_state, metrics = train_step(state, batch, axis_name=axis_name)
  state, metrics, health = nan_guard.guard(state, new_state, metrics, health)
  return state, accumulate(totals, metrics), health


def _train_many(state, totals, health, batches, axis_name=None):
  """`_train_and_accumulate` over k stacked batches in one program (`lax.scan`): one dispatch."""
  def body(carry, batch):
    return _train_and_accumulate(*carry, batch, axis_name=axis_name), None
  # XLA:CPU runs convolutions inside a loop body several times slower than
  # outside one (jax-ml/jax#12868: 9x for the MNIST CNN here), so on CPU the
  # k steps are unrolled; accelerators keep the loop (k times less to compile).
  unroll = jax.default_backend() == "cpu"
  (state, totals, health), _ = jax.lax.scan(body, (state, totals, health), batches, unroll=unroll)
  return state, totals, health


def _eval_and_accumulate(state, totals, batch, axis_name=None):
  return accumulate(totals, eval_step(state, batch, axis_name=axis_name))


@functools.cache
def _compiled_eval(layout: parallel.Layout):
  return layout.compile(_eval_and_accumulate, donate_argnums=(1,),
                        out_shardings=parallel.replicated(layout.mesh))


def _compiled_train(layout: parallel.Layout, state, steps_per_dispatch: int = 1):
  """The loop's step (or k steps) for `layout` and `state` (whose fsdp shardings it keeps)."""
  if not layout.fsdp:
    return _compiled_replicated_train(layout, steps_per_dispatch)
  every = parallel.replicated(layout.mesh)
  return layout.compile(_train_and_accumulate if steps_per_dispatch == 1 else _train_many,
                        donate_argnums=(0, 1, 2),
                        out_shardings=(layout.state_shardings(state), every, every))


@functools.cache
def _compiled_replicated_train(layout: parallel.Layout, steps_per_dispatch: int = 1):
  every = parallel.replicated(layout.mesh)
  return layout.compile(_train_and_accumulate if steps_per_dispatch == 1 else _train_many,
                        donate_argnums=(0, 1, 2), out_shardings=(every, every, every))


def evaluate(state: TrainState, source, *, batch_size: int, layout: parallel.Layout,
             transform=input_pipeline.to_model_inputs, finalize=None) -> dict[str, float]:
  """Mean metrics over every example of `source` (padded last batch masked out).

  `state` is in the layout's step form (under pmap: a copy per device);
  `finalize` (a task's) turns per-class and histogram totals into scalars.
  """
  dataset = input_pipeline.eval_dataset(
      source, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), transform=transform)
  step_fn, totals = _compiled_eval(layout), None
  for local_batch in input_pipeline.iterate(dataset):
    batch = layout.put_batch(local_batch)
    if totals is None:
      totals = layout.zeros_like(jax.eval_shape(step_fn, state, None, batch))
    with jax.transfer_guard("disallow"):
      totals = step_fn(state, totals, batch)
  metrics = summarize(layout.fetch(totals))
  return finalize(metrics) if finalize else metrics


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
  if config.model.name in IMAGE_MODELS and num_classes and num_classes > config.model.num_classes:
    raise UserError(f"dataset {builder.name} has labels 0..{num_classes - 1} but "
                    f"config.model.num_classes={config.model.num_classes}")
  inputs = model_inputs(config, example_batch)
  try:
    jax.eval_shape(functools.partial(model.init, train=False), {"params": jax.random.PRNGKey(0)}, inputs)
  except UserError:  # the model's own check of its config
    raise
  except Exception as e:
    shapes = jax.tree.map(lambda x: f"{x.shape[1:]} {x.dtype}", inputs)
    raise UserError(f"config.model ({config.model.name}) cannot take this dataset's inputs "
                    f"{shapes}: {str(e).splitlines()[0]}") from None


def _check_dispatch_cadence(config, num_train_steps: int, stop_at_step: int | None) -> None:
  """With k steps per dispatch, everything the loop does between steps falls on multiples of k."""
  k = config.steps_per_dispatch
  if k == 1:
    return
  for name, value in (("num_train_steps", num_train_steps), ("log_every_steps", config.log_every_steps),
                      ("eval_every_steps", config.eval_every_steps),
                      ("checkpoint_every_steps", config.checkpoint_every_steps), ("--stop_at_step", stop_at_step)):
    if value is not None and value % k:
      raise UserError(f"{name}={value} must be a multiple of steps_per_dispatch={k}")


def _check_eval_metric(config, inputs, state) -> None:
  """An early-stopping metric the evaluation does not report fails before training, not after."""
  batch = input_pipeline.eval_dataset(inputs.sources["eval_split"], global_batch_size=config.batch_size,
                                      transform=inputs.transform(train=False))[0]
  shapes = jax.eval_shape(eval_step, state, batch)
  means = {k: np.zeros(v.shape, np.float64) if v.ndim else 0.0 for k, v in shapes.items()}
  early_stopping.metric_value(_without_count(inputs.task.finalize(means)), config.early_stopping.metric)


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
  t_entry = time.perf_counter()
  validate(config)
  _check_workdir(workdir)
  config_dict = json.loads(config.to_json_best_effort())
  _check_config_unchanged(workdir, config_dict, allow_config_change)
  layout = parallel.Layout.from_config(config.parallel)
  layout.check_batch_size(config.batch_size)

  resuming = bool(checkpoint.saved_steps(workdir))
  inputs = run_inputs.load(config, workdir, fit=not resuming)
  builder, sources = inputs.builder, inputs.sources
  train_source = sources["train_split"]
  num_train_steps = resolve_num_train_steps(config, len(train_source))
  train_data = input_pipeline.train_dataset(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      transform=inputs.transform(train=True))
  k = config.steps_per_dispatch
  _check_dispatch_cadence(config, num_train_steps, stop_at_step)
  train_iter = input_pipeline.DevicePrefetch(
      input_pipeline.iterate(train_data if k == 1 else input_pipeline.grouped(train_data, k),
                             _host_prefetch(train_source, config)),
      layout.put_batch if k == 1 else layout.put_batches, config.parallel.prefetch_to_device)

  tx, schedule = make_optimizer(config.optimizer, num_train_steps)
  model = inputs.model(config)
  example_batch = train_data[0]
  _check_data_fits_model(config, builder, model, example_batch)
  axis_name = parallel.DATA_AXIS if layout.mode == "pmap" else None
  state = create_train_state(config, model, tx, example_batch, inputs.apply_fn(config, axis_name),
                             inputs.task.loss_fn)
  finetune.check_patterns(state.params, config.optimizer.freeze, config.optimizer.lr_multipliers)
  if config.early_stopping.metric:
    _check_eval_metric(config, inputs, state)
  if (config.init_from.workdir or config.init_from.checkpoint) and not resuming:
    state = finetune.init_from(state, config, workdir)
  state = layout.place_state(state)

  manager, state = checkpoint.restore_latest_valid(
      workdir, state, train_iter, max_to_keep=config.keep_checkpoints,
      async_save=config.async_checkpointing)
  step = int(parallel.host_value(state.step))
  one_step_fn, train_fn = _compiled_train(layout, state), _compiled_train(layout, state, k)
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
  total_shapes = jax.eval_shape(one_step_fn, state, None, health,
                                layout.put_batch(example_batch))[1]
  metric_names = sorted(total_shapes)
  totals, t_log, steps_since_log, data_wait = None, time.perf_counter(), 0, 0.0
  save = lambda: _save(manager, workdir, step, layout.from_step(state), train_iter,
                       layout.fetch(health), metric_names, config)
  es = config.early_stopping
  events = read_metrics(workdir)
  tracker = early_stopping.Tracker.from_events(events, config, up_to_step=step)
  stopped_early = any(e.get("split") == "early_stop" and e["step"] <= step for e in events)
  best_manager = early_stopping.make_best_manager(workdir, config) if config.keep_best_checkpoints else None
  eval_kw = dict(batch_size=config.batch_size, layout=layout, transform=inputs.transform(train=False),
                 finalize=inputs.task.finalize)
  try:
    with PreemptionWatcher() as preemption:
      while step < last_step and not stopped_early:
        t_data = time.perf_counter()
        batch = next(train_iter)
        data_wait += time.perf_counter() - t_data
        if totals is None:
          totals = layout.zeros_like(total_shapes)
        with jax.transfer_guard("disallow"):
          state, totals, health = train_fn(state, totals, health, batch)
        step += k
        if step == first_step + k:  # start-up cost (compiling, mostly): one wait, once
          jax.block_until_ready(totals)
          log.info("first step done %.3f s after the run started (compiling included)",
                   time.perf_counter() - t_entry)
        steps_since_log += k
        bar.update(step)
        final = step == num_train_steps
        if step % config.log_every_steps == 0 or final or step == last_step:
          # The loop's only regular wait for the device.
          metrics = inputs.task.finalize(summarize(layout.fetch(totals)))
          skipped = nan_guard.check(layout.fetch(health), metric_names, policy=config.nan_policy,
                                    max_consecutive=config.nan_max_consecutive_skips)
          elapsed = time.perf_counter() - t_log
          # data_wait: the share of the interval the loop waited for input (the
          # device idles only if that exceeds what it had queued: an upper bound).
          metrics.update(learning_rate=float(schedule(step - 1)),
                         steps_per_sec=steps_since_log / elapsed,
                         examples_per_sec=metrics.pop("count") / elapsed,
                         data_wait=data_wait / elapsed)
          if skipped:
            metrics["skipped_steps"] = skipped
          emit("train", metrics)
          totals, t_log, steps_since_log, data_wait = None, time.perf_counter(), 0, 0.0
        if sources["eval_split"] is not None and (step % config.eval_every_steps == 0 or final):
          metrics = _without_count(evaluate(state, sources["eval_split"], **eval_kw))
          emit("eval", metrics)
          if es.metric:
            value = early_stopping.metric_value(metrics, es.metric)
            tracker.update(step, value)
            if best_manager is not None:
              early_stopping.save_best(best_manager, workdir, step, layout.from_step(state),
                                       config, tracker)
            stopped_early = tracker.should_stop and not final
        preempted = preemption.should_stop(step)  # every step: multi-host sync needs it
        if (step % config.checkpoint_every_steps == 0 or final or step == last_step or preempted
            or stopped_early):
          save()
        if stopped_early:
          log.info("early stopping at step %d: eval %s has not improved by %g for %d evaluations "
                   "(last improvement: %.6g at step %d)", step, es.metric, es.min_delta, es.patience,
                   tracker.best, tracker.best_step)
          emit("early_stop", {"last_improvement_step": tracker.best_step,
                              f"last_improvement_{es.metric}": tracker.best})
        if preempted:
          raise Preempted(step, preemption.signal_name)

    done = step == num_train_steps or stopped_early
    if done and sources["test_split"] is not None and not _has_event(workdir, "test"):
      test_state = state
      if best_manager is not None:  # the test measures the model one would deploy: the best
        best_state, best_step = early_stopping.restore_best(best_manager, layout.from_step(state),
                                                            tracker)
        if best_state is not None:
          test_state = layout.to_step(best_state)
          log.info("testing the best checkpoint (step %d)", best_step)
      emit("test", _without_count(evaluate(test_state, sources["test_split"], **eval_kw)))
  except BaseException as e:
    # Best effort, never masking the error: let a save in flight (a preemption's)
    # reach the disk, then close what can be closed.
    closers = [manager.wait_until_finished, writer.close, bar.close]
    for cleanup in closers + ([best_manager.close] if best_manager is not None else []):
      with contextlib.suppress(Exception):
        cleanup()
    failure = _write_failure(e, manager, workdir, step) if isinstance(e, Exception) else None
    with contextlib.suppress(Exception):
      manager.close()
    if failure is not None and not isinstance(e, UserError):
      raise failure from None
    raise
  _finish_saves(manager, workdir, step)
  if best_manager is not None:
    best_manager.close()
  bar.close()
  if (step == num_train_steps or stopped_early) and step > first_step:
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
