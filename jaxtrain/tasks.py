"""Tasks: a loss with its per-example metrics, host-side summaries, and predictions.

    classification  softmax cross-entropy (class weights); accuracy, precision,
                    recall, F1 (binary: of class 1; else macro), ROC-AUC (binary)
    regression      mse | huber | quantile on the standardised label; MAE, RMSE,
                    MAPE in the label's units (ratings, ETAs, demand)
    retrieval       two-tower in-batch sampled softmax; recall@k and NDCG@k of
                    each held-out item ranked against all items, seen items excluded
    language_modeling  next-token cross-entropy per sequence; token accuracy, perplexity

A loss returns per-example values (vectors where a metric needs more than a
mean: per-class hits, a histogram of scores), which the steps sum exactly
across batches and devices; `finalize` turns the means into the reported
numbers. `predict(outputs, batch)` is what `jaxtrain predict` and an exported
model return.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import steps
from jaxtrain.errors import UserError

AUC_BINS = 1000  # ROC-AUC from score histograms, as Keras's AUC does (exact up to ties in a bin)


@dataclasses.dataclass(frozen=True)
class Task:
  loss_fn: Callable
  finalize: Callable[[dict], dict]
  predict: Callable


def classification_loss(logits, batch, *, class_weights=None, binary=False):
  """steps.classification_loss, weighted per class, plus per-class hits (and scores, if binary)."""
  labels = batch["label"]
  metrics = steps.classification_loss(logits, batch)
  if class_weights is not None:
    metrics["loss"] = metrics["loss"] * jnp.asarray(class_weights, jnp.float32)[labels]
  num_classes = logits.shape[-1]
  truth, guess = jax.nn.one_hot(labels, num_classes), jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
  metrics.update(true_pos=truth * guess, false_pos=(1 - truth) * guess, false_neg=truth * (1 - guess))
  if binary:
    score = jax.nn.softmax(logits.astype(jnp.float32))[:, 1]
    bins = jax.nn.one_hot(jnp.clip((score * AUC_BINS).astype(jnp.int32), 0, AUC_BINS - 1), AUC_BINS)
    positive = (labels == 1).astype(jnp.float32)[:, None]
    metrics.update(pos_scores=bins * positive, neg_scores=bins * (1 - positive))
  return metrics


def finalize_classification(means: dict) -> dict:
  out = {k: v for k, v in means.items() if np.ndim(v) == 0}
  if "true_pos" not in means:
    return out
  tp, fp, fn = means["true_pos"], means["false_pos"], means["false_neg"]
  with np.errstate(divide="ignore", invalid="ignore"):
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f1 = 2 * tp / (2 * tp + fp + fn)
  if len(tp) == 2:  # binary: the positive class
    out.update(precision=_finite(precision[1]), recall=_finite(recall[1]), f1=_finite(f1[1]))
  else:  # macro, over classes present in the labels or the predictions
    present = (tp + fp + fn) > 0
    out.update(precision=_finite(np.nanmean(np.where(present, np.nan_to_num(precision), np.nan))),
               recall=_finite(np.nanmean(np.where(present, np.nan_to_num(recall), np.nan))),
               f1=_finite(np.nanmean(np.where(present, f1, np.nan))))
  if "pos_scores" in means:
    out["roc_auc"] = roc_auc(means["pos_scores"], means["neg_scores"])
  return out


def _finite(x) -> float:
  return float(np.nan_to_num(x))


def roc_auc(pos_hist, neg_hist) -> float:
  """P(a positive scores above a negative), ties (same bin) counted half."""
  pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
  if pos.sum() == 0 or neg.sum() == 0:
    return float("nan")
  below = np.cumsum(neg) - neg
  return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def regression_loss(outputs, batch, *, mean, std, loss="mse", huber_delta=1.0, quantile=0.5):
  pred_n = outputs.reshape(outputs.shape[0]).astype(jnp.float32)
  y = batch["label"].astype(jnp.float32)
  err_n = pred_n - (y - mean) / std
  if loss == "mse":
    per = err_n ** 2
  elif loss == "huber":
    per = optax.huber_loss(err_n, delta=huber_delta)
  else:  # pinball: under-prediction costs `quantile`, over-prediction 1 - quantile
    per = jnp.maximum(-quantile * err_n, (1 - quantile) * err_n)
  err = pred_n * std + mean - y
  return {"loss": per, "mae": jnp.abs(err), "squared_error": err ** 2,
          "ape": jnp.abs(err) / jnp.maximum(jnp.abs(y), 1e-8)}


def finalize_regression(means: dict) -> dict:
  out = dict(means)
  out["rmse"] = float(np.sqrt(out.pop("squared_error")))
  out["mape"] = out.pop("ape")
  return out


def retrieval_loss(outputs, batch, *, temperature=0.1, top_k=10):
  users, items, all_items = outputs
  logits = users @ items.T / temperature
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(users.shape[0]))
  metrics = {"loss": loss}
  if "seen" in batch:
    scores = users @ all_items.T  # [B, num_items]; item 0 is "unknown", never recommended
    target = batch["categorical"][:, 1]
    target_score = jnp.take_along_axis(scores, target[:, None], 1)
    excluded = jnp.zeros(scores.shape, bool).at[jnp.arange(scores.shape[0])[:, None],
                                                jnp.maximum(batch["seen"], 0)].set(batch["seen"] >= 0)
    excluded = excluded.at[:, 0].set(True)
    rank = jnp.sum((scores > target_score) & ~excluded, axis=1)
    hit = (rank < top_k).astype(jnp.float32)
    metrics[f"recall@{top_k}"] = hit
    metrics[f"ndcg@{top_k}"] = hit / jnp.log2(rank + 2.0)
  return metrics


def language_modeling_loss(logits, batch):
  """Mean next-token cross-entropy of each sequence (tokens 1..T given 0..T-1), and token accuracy.

  Every sequence has the same length, so the mean over sequences (what the
  steps report) is the mean over tokens.
  """
  targets = batch["tokens"][:, 1:]
  logits = logits.astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  accuracy = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.mean(loss, axis=1), "accuracy": jnp.mean(accuracy, axis=1)}


def finalize_language_modeling(means: dict) -> dict:
  out = dict(means)
  out["perplexity"] = float(np.exp(min(means["loss"], 700.0))) if "loss" in means else float("nan")
  return out


def predict_next_token(logits, batch):
  """The distribution of the token after each sequence's last input token."""
  return {"next_token_probabilities": jax.nn.softmax(logits[:, -1].astype(jnp.float32))}


def predict_classification(logits, batch):
  return {"probabilities": jax.nn.softmax(logits.astype(jnp.float32))}


def predict_regression(outputs, batch, *, mean, std):
  return {"prediction": outputs.reshape(outputs.shape[0]).astype(jnp.float32) * std + mean}


def predict_retrieval(outputs, batch, *, top_k=10):
  users, _, all_items = outputs
  scores = users @ all_items.T
  scores = scores.at[:, 0].set(-jnp.inf)
  if "seen" in batch:
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, jnp.maximum(batch["seen"], 0)].min(
        jnp.where(batch["seen"] >= 0, -jnp.inf, jnp.inf))
  top_scores, top_items = jax.lax.top_k(scores, top_k)
  return {"top_items": top_items, "top_scores": top_scores}


def make_task(config, prep: dict) -> Task:
  """The task `config.task` names, specialised to the fitted preprocessing `prep`."""
  lc = config.loss
  label = prep.get("label", {})
  if config.task == "classification":
    if label and label["kind"] != "class":
      raise UserError("config.task='classification' but the dataset's label is a number; "
                      "use task='regression' or import with --label_kind class")
    weights = label.get("class_weights")
    weights = None if weights is None or all(w == 1.0 for w in weights) else tuple(weights)
    binary = label.get("num_classes", config.model.get("num_classes", 0)) == 2
    return Task(functools.partial(classification_loss, class_weights=weights, binary=binary),
                finalize_classification, predict_classification)
  if config.task == "regression":
    if label.get("kind") != "value":
      raise UserError("config.task='regression' needs an imported dataset with a numeric label "
                      "(import with --label_kind value)")
    if lc.name not in ("mse", "huber", "quantile"):
      raise UserError(f"config.loss.name={lc.name!r}: regression takes mse, huber or quantile")
    scale = dict(mean=label["mean"], std=label["std"])
    return Task(functools.partial(regression_loss, loss=lc.name, huber_delta=lc.huber_delta,
                                  quantile=lc.quantile, **scale),
                finalize_regression, functools.partial(predict_regression, **scale))
  if config.task == "retrieval":
    if prep["kind"] != "table" or len(prep["categorical"]) < 2:
      raise UserError("config.task='retrieval' needs a user and an item column: set "
                      "preprocess.features='<user column>,<item column>'")
    return Task(functools.partial(retrieval_loss, temperature=lc.temperature, top_k=config.eval_top_k),
                lambda means: dict(means), functools.partial(predict_retrieval, top_k=config.eval_top_k))
  if config.task == "language_modeling":
    if config.model.name != "transformer_lm":
      raise UserError(f"config.task='language_modeling' needs config.model.name='transformer_lm', "
                      f"not {config.model.name!r}")
    return Task(language_modeling_loss, finalize_language_modeling, predict_next_token)
  raise UserError(f"config.task={config.task!r} is not classification, regression, retrieval "
                  "or language_modeling")
