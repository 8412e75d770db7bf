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

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp

from jaxtrain import checkpoint, datasets, input_pipeline, parallel
from jaxtrain.config import validate
from jaxtrain.errors import UserError
from jaxtrain.metric_writers import MetricWriter, read_metrics
from jaxtrain.models import create_model
from jaxtrain.optim import make_optimizer
from jaxtrain.state import TrainState, linen_apply_fn
from jaxtrain.steps import accumulate, classification_loss, eval_step, summarize, train_step

log = logging.getLogger("jaxtrain")

LOSSES = {"classification": classification_loss}


def create_train_state(config, model, tx, example_batch) -> TrainState:
  """The step-0 state: parameters initialised from `fold_in`s of the config's seed."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  inputs = jnp.zeros((1,) + example_batch["image"].shape[1:], example_batch["image"].dtype)
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": init_rng, "dropout": init_rng}, inputs)
  return TrainState.create(apply_fn=linen_apply_fn(model), variables=variables, tx=tx,
                           loss_fn=LOSSES[config.task], rng=state_rng)


def _zeros_like_output(fn, *args):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _train_and_accumulate(state, totals, batch):
  state, metrics = train_step(state, batch)
  return state, accumulate(totals, metrics)


@functools.partial(jax.jit, donate_argnums=(1,))
def _eval_and_accumulate(state, totals, batch):
  return accumulate(totals, eval_step(state, batch))


def evaluate(state: TrainState, source, *, batch_size: int, mesh) -> dict[str, float]:
  """Mean metrics over every example of `source` (padded last batch masked out)."""
  dataset = input_pipeline.eval_dataset(
      source, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  totals = None
  for local_batch in input_pipeline.iterate(dataset):
    batch = parallel.put_batch(local_batch, mesh)
    if totals is None:
      totals = parallel.replicate(_zeros_like_output(
          lambda s, b: accumulate(None, eval_step(s, b)), state, batch), mesh)
    with jax.transfer_guard("disallow"):
      totals = _eval_and_accumulate(state, totals, batch)
  return summarize(totals)


def resolve_num_train_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return config.num_epochs * input_pipeline.steps_per_epoch(num_train_examples, config.batch_size)


def _prepare_workdir(workdir: str, config) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror}") from None
  path = os.path.join(workdir, "config.json")
  if jax.process_index() == 0 and not os.path.exists(path):
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  `stop_at_step` ends this process after that global step (with a checkpoint)
  without changing the run: starting again continues to `num_train_steps`.
  """
  validate(config)
  _prepare_workdir(workdir, config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)

  builder = datasets.get_builder(config.dataset)
  train_source = datasets.get_source(builder, config.dataset.train_split)
  num_train_steps = resolve_num_train_steps(config, len(train_source))
  train_data = input_pipeline.train_dataset(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = input_pipeline.iterate(train_data, config.dataset.prefetch)

  tx, schedule = make_optimizer(config.optimizer, num_train_steps)
  model = create_model(config.model)
  state = parallel.replicate(create_train_state(config, model, tx, train_data[0]), mesh)

  manager = checkpoint.make_manager(workdir, max_to_keep=config.keep_checkpoints,
                                    async_save=config.async_checkpointing)
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager, manager.latest_step(), state, train_iter)
    log.info("resumed from %s at step %d", checkpoint.checkpoint_dir(workdir), int(state.step))

  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  step = int(state.step)
  if step == 0:
    writer.write_text("config", "```\n" + str(config) + "\n```")
  last_step = num_train_steps if stop_at_step is None else min(stop_at_step, num_train_steps)
  totals, t_log, steps_since_log = None, time.perf_counter(), 0
  while step < last_step:
    batch = parallel.put_batch(next(train_iter), mesh)
    if totals is None:
      totals = parallel.replicate(_zeros_like_output(
          lambda s, b: accumulate(None, train_step(s, b)[1]), state, batch), mesh)
    with jax.transfer_guard("disallow"):
      state, totals = _train_and_accumulate(state, totals, batch)
    step += 1
    steps_since_log += 1
    final = step == num_train_steps
    if step % config.log_every_steps == 0 or final or step == last_step:
      metrics = summarize(totals)  # the loop's only wait for the device
      elapsed = time.perf_counter() - t_log
      metrics.update(learning_rate=float(schedule(step - 1)),
                     steps_per_sec=steps_since_log / elapsed,
                     examples_per_sec=metrics.pop("count") / elapsed)
      writer.write(step, "train", metrics)
      totals, t_log, steps_since_log = None, time.perf_counter(), 0
    if config.dataset.eval_split and (step % config.eval_every_steps == 0 or final):
      eval_source = datasets.get_source(builder, config.dataset.eval_split)
      writer.write(step, "eval", _without_count(evaluate(
          state, eval_source, batch_size=config.batch_size, mesh=mesh)))
    if step % config.checkpoint_every_steps == 0 or final or step == last_step:
      checkpoint.save(manager, step, state, train_iter)

  if step == num_train_steps and config.dataset.test_split and not _has_event(workdir, "test"):
    test_source = datasets.get_source(builder, config.dataset.test_split)
    writer.write(step, "test", _without_count(evaluate(
        state, test_source, batch_size=config.batch_size, mesh=mesh)))
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return state


def _without_count(metrics):
  metrics = dict(metrics)
  metrics["num_examples"] = int(metrics.pop("count"))
  return metrics


def _has_event(workdir: str, split: str) -> bool:
  return any(event.get("split") == split for event in read_metrics(workdir))
