"""Tasks: a loss with its per-example metrics, host-side summaries, and predictions.

A task is what `config.task` names (see registry.py): a short name below, or
the import path of a user's own. It is either
- a function `loss(outputs, batch[, params], **options) -> {"loss": [B], ...}`:
  a task that is only a loss; or
- a class whose instances have `loss(outputs, batch[, params])`, and
  optionally `finalize(means) -> metrics` (host side, after the per-example
  values are averaged) and `predict(outputs, batch) -> {name: array}`.
A function's keyword-only options and a class's fields come from
`config.loss` (fields a config adds there must be such options), else from
what the data says (`preprocess.task_kwargs`: the label's classes, weights or
scale), else their defaults. The built-in tasks are classes of that kind:

    classification  softmax cross-entropy (class weights); accuracy, precision,
                    recall, F1 (binary: of class 1; else macro), MCC, ROC-AUC and
                    PR-AUC (binary), and the F1-best threshold (binary: chosen on
                    validation, applied to the test)
    regression      mse | huber | quantile on the standardised label (plus a
                    model's per-example "penalty", if it returns one); MAE, RMSE,
                    MAPE (over non-zero labels; mape_zero_labels: the share skipped)
                    in the label's units (ratings, ETAs, demand)
    retrieval       two-tower in-batch sampled softmax; recall@k and NDCG@k of
                    each held-out item ranked against all items, seen items excluded
    language_modeling  next-token cross-entropy per sequence; token accuracy, perplexity

At the test, a `finalize` that takes `validation` is given the validation
metrics of the checkpoint tested: what is chosen on validation (classification's
F1-best threshold) is applied to the test, never picked on it.

A loss returns per-example values (vectors where a metric needs more than a
mean: per-class hits, a histogram of scores), which the steps sum exactly
across batches and devices; `finalize` turns the means into the reported
numbers. `predict(outputs, batch)` is what `jaxtrain predict` and an exported
model return.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtrain import steps
from jaxtrain.errors import UserError

# ROC-AUC and PR-AUC (average precision) come from histograms of the log-odds
# (logit margin), summed exactly over batches and devices: AUC_BINS bins across
# [-AUC_RANGE, AUC_RANGE], 1/64 of a logit each. Binning the probability instead
# (as Keras's AUC does) puts every confident score in the last bin: 0.9764
# against the exact 0.9877 on a spam model; here two scores tie only if their
# log-odds differ by under 1/64 (error < 1e-3 against scikit-learn, tested).
AUC_BINS = 2048
AUC_RANGE = 16.0


def report_means(means: dict) -> dict:
  """The default `finalize`: scalar means as they are, a vector's entries as name_0, name_1, ..."""
  out = {}
  for k, v in means.items():
    if np.ndim(v) == 0:
      out[k] = v
    else:
      out.update({f"{k}_{i}": float(x) for i, x in enumerate(np.ravel(v))})
  return out


def outputs_as_they_are(outputs, batch):
  """The default `predict`: the model's outputs (a dict of arrays stays a dict)."""
  return outputs if isinstance(outputs, dict) else {"outputs": outputs}


@dataclasses.dataclass(frozen=True)
class Task:
  """A task as the loop uses it: the loss the steps call, finalize and predict."""

  loss_fn: Callable
  finalize: Callable[[dict], dict] = report_means
  predict: Callable = outputs_as_they_are
  needs_seen_items: bool = False  # the run fits each user's training items (retrieval)

  @classmethod
  def of(cls, task) -> "Task":
    """A `Task` from a loss function or an object with `loss` (and maybe finalize, predict)."""
    if isinstance(task, Task):
      return task
    if hasattr(task, "loss"):
      return cls(
        task.loss,
        getattr(task, "finalize", report_means),
        getattr(task, "predict", outputs_as_they_are),
        bool(getattr(task, "needs_seen_items", False)),
      )
    return cls(task)


def over_members(loss_fn: Callable) -> Callable:
  """`loss_fn` for a model that may train an ensemble: outputs `{"members": [B, k, ...]}` get
  each member's loss and metrics, averaged over the members; other outputs pass through."""
  takes_params = steps.takes_params(loss_fn)

  def loss(outputs, batch, params=None):  # steps.py passes the params: on to a loss that takes them
    call = (lambda o: loss_fn(o, batch, params)) if takes_params else (lambda o: loss_fn(o, batch))
    if not (isinstance(outputs, dict) and set(outputs) == {"members"}):
      return call(outputs)
    per_member = jax.vmap(call, in_axes=1)(outputs["members"])
    return jax.tree.map(lambda m: m.mean(axis=0), per_member)

  return loss


def classification_loss_and_counts(logits, batch, *, class_weights=None, binary=False):
  """steps.classification_loss, weighted per class, plus per-class hits (and scores, if binary):
  what finalize_classification turns into precision, recall, F1, MCC and the AUCs."""
  labels = batch["label"]
  metrics = steps.classification_loss(logits, batch)
  if class_weights is not None:
    metrics["loss"] = metrics["loss"] * jnp.asarray(class_weights, jnp.float32)[labels]
  num_classes = logits.shape[-1]
  truth, guess = (
    jax.nn.one_hot(labels, num_classes),
    jax.nn.one_hot(jnp.argmax(logits, -1), num_classes),
  )
  metrics.update(
    true_pos=truth * guess, false_pos=(1 - truth) * guess, false_neg=truth * (1 - guess)
  )
  if binary:
    margin = (logits[:, 1] - logits[:, 0]).astype(jnp.float32)  # the log-odds of class 1
    position = (margin + AUC_RANGE) * (AUC_BINS / (2 * AUC_RANGE))
    bins = jax.nn.one_hot(
      jnp.clip(jnp.floor(position).astype(jnp.int32), 0, AUC_BINS - 1), AUC_BINS
    )
    positive = (labels == 1).astype(jnp.float32)[:, None]
    metrics.update(pos_scores=bins * positive, neg_scores=bins * (1 - positive))
  return metrics


def classification_loss(logits, batch, *, class_weights=None, binary=False):
  """Deprecated: `classification_loss_and_counts` (`steps.classification_loss` is the plain one)."""
  warnings.warn(
    "jaxtrain.tasks.classification_loss is deprecated: use "
    "jaxtrain.tasks.classification_loss_and_counts (or jaxtrain.steps.classification_loss "
    "for the loss and accuracy alone)",
    DeprecationWarning,
    stacklevel=2,
  )
  return classification_loss_and_counts(logits, batch, class_weights=class_weights, binary=binary)


def finalize_classification(means: dict, validation: dict | None = None) -> dict:
  """Precision, recall, F1 and MCC at the argmax; for two classes ROC-AUC, PR-AUC and the
  F1-best threshold, and, given `validation` (its metrics), F1 and MCC at its threshold."""
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
    macro = lambda x: float(np.mean(np.nan_to_num(x)[present])) if present.any() else 0.0
    out.update(precision=macro(precision), recall=macro(recall), f1=macro(f1))
  out["mcc"] = mcc(tp, fp, fn)
  if "pos_scores" in means:
    pos, neg = means["pos_scores"], means["neg_scores"]
    out["roc_auc"] = roc_auc(pos, neg)
    out["pr_auc"] = average_precision(pos, neg)
    out["best_f1_threshold"] = best_f1_threshold(pos, neg)
    if validation is not None and "best_f1_threshold" in validation:
      threshold = validation["best_f1_threshold"]
      out.update(
        validation_threshold=threshold,
        f1_at_validation_threshold=f1_at(pos, neg, threshold),
        mcc_at_validation_threshold=mcc_at(pos, neg, threshold),
      )
  return out


# A rare positive class (fraud, default, churn) puts few scores above 0.5: F1 at
# 0.5 then measures the threshold more than the model. Each evaluation reports the
# probability threshold that maximises F1 on its split (a bin edge of the log-odds
# histogram); the test reports F1 and MCC at the threshold its checkpoint's
# validation chose (picked on the test itself they would flatter the model), as
# scikit-learn's TunedThresholdClassifierCV does.


def _bin_of(threshold: float) -> int:
  """The first bin scored positive at probability `threshold` (thresholds are bin edges)."""
  t = min(max(float(threshold), 1e-12), 1 - 1e-12)
  return int(
    np.clip(round((np.log(t / (1 - t)) + AUC_RANGE) * AUC_BINS / (2 * AUC_RANGE)), 0, AUC_BINS)
  )


def _edge(b: int) -> float:
  return float(1 / (1 + np.exp(-(b * 2 * AUC_RANGE / AUC_BINS - AUC_RANGE))))


def _hits_at(pos_hist, neg_hist, b: int):
  pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
  tp, fp = pos[b:].sum(), neg[b:].sum()
  return tp, fp, pos.sum() - tp, neg.sum() - fp


def best_f1_threshold(pos_hist, neg_hist) -> float:
  pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
  tp, fp = np.cumsum(pos[::-1])[::-1], np.cumsum(neg[::-1])[::-1]  # scoring bins >= b positive
  with np.errstate(divide="ignore", invalid="ignore"):
    f1 = np.nan_to_num(2 * tp / (tp + fp + pos.sum()))
  return _edge(int(np.argmax(f1)))


def f1_at(pos_hist, neg_hist, threshold: float) -> float:
  tp, fp, fn, _ = _hits_at(pos_hist, neg_hist, _bin_of(threshold))
  return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn > 0 else 0.0


def mcc_at(pos_hist, neg_hist, threshold: float) -> float:
  tp, fp, fn, tn = _hits_at(pos_hist, neg_hist, _bin_of(threshold))
  return mcc(np.array([tn, tp]), np.array([fn, fp]), np.array([fp, fn]))


def mcc(tp, fp, fn) -> float:
  """Matthews correlation (multiclass: Gorodkin's R_K) from per-class hit rates.

  With t_k = tp_k + fn_k (true share of class k) and p_k = tp_k + fp_k
  (predicted share), s = sum t_k: (s * sum tp - sum p t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)).
  """
  tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
  t, p = tp + fn, tp + fp
  total = t.sum()
  denominator = np.sqrt((total**2 - (p**2).sum()) * (total**2 - (t**2).sum()))
  return float((total * tp.sum() - (p * t).sum()) / denominator) if denominator > 0 else 0.0


def average_precision(pos_hist, neg_hist) -> float:
  """PR-AUC as scikit-learn's average_precision_score: sum of (R_k - R_k-1) P_k, thresholds
  from the highest bin down (a bin's scores count as tied)."""
  pos, neg = np.asarray(pos_hist, np.float64)[::-1], np.asarray(neg_hist, np.float64)[::-1]
  if pos.sum() == 0:
    return float("nan")
  tp, fp = np.cumsum(pos), np.cumsum(neg)
  seen = (tp + fp) > 0
  precision = np.where(seen, tp / np.where(seen, tp + fp, 1), 0)
  return float((pos / pos.sum() * precision).sum())


def _finite(x) -> float:
  return float(np.nan_to_num(x))


def roc_auc(pos_hist, neg_hist) -> float:
  """P(a positive scores above a negative), ties (same bin) counted half."""
  pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
  if pos.sum() == 0 or neg.sum() == 0:
    return float("nan")
  below = np.cumsum(neg) - neg
  return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def _to_label(z, transform: str):
  """A prediction on the transformed scale back in the label's units."""
  return jnp.expm1(z) if transform == "log1p" else z


def regression_loss(
  outputs, batch, *, mean, std, loss="mse", huber_delta=1.0, quantile=0.5, transform="none"
):
  """The loss on the standardised (and, with `transform="log1p"`, log) label; MAE, RMSE
  and MAPE in the label's own units. A model may return `{"prediction": [B],
  "penalty": [B]}`: a per-example regulariser added to the loss, not to the metrics."""
  penalty = 0.0
  if isinstance(outputs, dict):
    outputs, penalty = outputs["prediction"], outputs["penalty"].astype(jnp.float32)
  pred_n = outputs.reshape(outputs.shape[0]).astype(jnp.float32)
  y = batch["label"].astype(jnp.float32)
  y_t = jnp.log1p(jnp.maximum(y, 0.0)) if transform == "log1p" else y
  err_n = pred_n - (y_t - mean) / std
  if loss == "mse":
    per = err_n**2
  elif loss == "huber":
    per = optax.huber_loss(err_n, delta=huber_delta)
  else:  # pinball: under-prediction costs `quantile`, over-prediction 1 - quantile
    per = jnp.maximum(-quantile * err_n, (1 - quantile) * err_n)
  err = _to_label(pred_n * std + mean, transform) - y
  nonzero = y != 0  # a percentage of zero is undefined: MAPE skips those labels
  return {
    "loss": per + penalty,
    "mae": jnp.abs(err),
    "squared_error": err**2,
    "ape": jnp.where(nonzero, jnp.abs(err) / jnp.where(nonzero, jnp.abs(y), 1.0), 0.0),
    "nonzero_label": nonzero.astype(jnp.float32),
  }


def finalize_regression(means: dict) -> dict:
  """RMSE; MAPE over the non-zero labels, with `mape_zero_labels`: the share it skipped."""
  out = dict(means)
  out["rmse"] = float(np.sqrt(out.pop("squared_error")))
  nonzero = float(out.pop("nonzero_label", 1.0))
  out["mape"] = float(out.pop("ape")) / nonzero if nonzero > 0 else float("nan")
  out["mape_zero_labels"] = 1.0 - nonzero
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
    excluded = (
      jnp.zeros(scores.shape, bool)
      .at[jnp.arange(scores.shape[0])[:, None], jnp.maximum(batch["seen"], 0)]
      .set(batch["seen"] >= 0)
    )
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


def causal_lm_loss(logits, batch):
  """Next-token cross-entropy on the tokens `batch["loss_mask"]` marks (a response, not its
  prompt), per sequence: the mean over its marked tokens; and their token accuracy.

  The model sees all of `batch["tokens"]` (logits [B, L, V]); position t predicts token t+1.
  """
  targets = batch["tokens"][:, 1:]
  weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
  logits = logits[:, :-1].astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  hits = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  n = jnp.maximum(jnp.sum(weights, 1), 1.0)
  return {"loss": jnp.sum(loss * weights, 1) / n, "accuracy": jnp.sum(hits * weights, 1) / n}


def predict_after_prompt(logits, batch):
  """The distribution of the token after each sequence's last real token."""
  mask = batch.get("attention_mask", jnp.ones(logits.shape[:2], jnp.int32))
  last = jnp.maximum(jnp.sum(mask, -1) - 1, 0)
  at = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
  return {"next_token_probabilities": jax.nn.softmax(at.astype(jnp.float32))}


def finalize_language_modeling(means: dict) -> dict:
  out = dict(means)
  out["perplexity"] = float(np.exp(min(means["loss"], 700.0))) if "loss" in means else float("nan")
  return out


def predict_next_token(logits, batch):
  """The distribution of the token after each sequence's last input token."""
  return {"next_token_probabilities": jax.nn.softmax(logits[:, -1].astype(jnp.float32))}


def predict_classification(logits, batch):
  return {"probabilities": jax.nn.softmax(logits.astype(jnp.float32))}


def predict_regression(outputs, batch, *, mean, std, transform="none"):
  return {
    "prediction": _to_label(
      outputs.reshape(outputs.shape[0]).astype(jnp.float32) * std + mean, transform
    )
  }


def predict_retrieval(outputs, batch, *, top_k=10):
  users, _, all_items = outputs
  scores = users @ all_items.T
  scores = scores.at[:, 0].set(-jnp.inf)
  if "seen" in batch:
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, jnp.maximum(batch["seen"], 0)].min(
      jnp.where(batch["seen"] >= 0, -jnp.inf, jnp.inf)
    )
  top_scores, top_items = jax.lax.top_k(scores, top_k)
  return {"top_items": top_items, "top_scores": top_scores}


@dataclasses.dataclass(frozen=True)
class Classification:
  """Softmax cross-entropy, weighted per class; accuracy, precision, recall, F1, ROC-AUC
  (binary)."""

  class_weights: tuple[float, ...] | None = None  # from preprocess.class_weights
  label_kind: str = "class"  # from the data: class | value

  def __post_init__(self):
    if self.label_kind != "class":
      raise UserError(
        "config.task='classification' but the dataset's label is a number; "
        "use task='regression' or import with --label_kind class"
      )

  def loss(self, logits, batch):
    return classification_loss_and_counts(
      logits, batch, class_weights=self.class_weights, binary=logits.shape[-1] == 2
    )

  def finalize(self, means, validation=None):
    return finalize_classification(means, validation)

  def predict(self, logits, batch):
    return predict_classification(logits, batch)


@dataclasses.dataclass(frozen=True)
class Regression:
  """mse | huber | quantile (`name`) on the standardised label; MAE, RMSE, MAPE in its units."""

  name: str = "mse"
  huber_delta: float = 1.0
  quantile: float = 0.5
  label_mean: float | None = None  # from the data: the train split's label
  label_std: float | None = None  # (of its log1p, with label_transform)
  label_transform: str = "none"  # from preprocess.label_transform

  def __post_init__(self):
    if self.label_mean is None or self.label_std is None:
      raise UserError(
        "config.task='regression' needs an imported dataset with a numeric label "
        "(import with --label_kind value)"
      )
    if self.name not in ("mse", "huber", "quantile"):
      raise UserError(f"config.loss.name={self.name!r}: regression takes mse, huber or quantile")

  def loss(self, outputs, batch):
    return regression_loss(
      outputs,
      batch,
      mean=self.label_mean,
      std=self.label_std,
      loss=self.name,
      huber_delta=self.huber_delta,
      quantile=self.quantile,
      transform=self.label_transform,
    )

  def finalize(self, means):
    return finalize_regression(means)

  def predict(self, outputs, batch):
    return predict_regression(
      outputs, batch, mean=self.label_mean, std=self.label_std, transform=self.label_transform
    )


@dataclasses.dataclass(frozen=True)
class Retrieval:
  """Two-tower in-batch softmax; recall@k and NDCG@k against all items, seen items excluded."""

  temperature: float = 0.1
  top_k: int = 10  # from config.eval_top_k
  num_categorical: int = 0  # from the data: categorical features
  needs_seen_items = True  # the run fits each user's training items (excluded when ranking)

  def __post_init__(self):
    if self.num_categorical < 2:
      raise UserError(
        "config.task='retrieval' needs a user and an item column: set "
        "preprocess.features='<user column>,<item column>'"
      )

  def loss(self, outputs, batch):
    return retrieval_loss(outputs, batch, temperature=self.temperature, top_k=self.top_k)

  def finalize(self, means):
    return dict(means)

  def predict(self, outputs, batch):
    return predict_retrieval(outputs, batch, top_k=self.top_k)


@dataclasses.dataclass(frozen=True)
class LanguageModeling:
  """Next-token cross-entropy of logits [B, T, V] against `batch["tokens"][:, 1:]`; perplexity."""

  def loss(self, logits, batch):
    return language_modeling_loss(logits, batch)

  def finalize(self, means):
    return finalize_language_modeling(means)

  def predict(self, logits, batch):
    return predict_next_token(logits, batch)


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """Causal-LM fine-tuning on prompt/response pairs: the loss on the response tokens only
  (`causal_lm_loss`), perplexity of the responses; datasets.PromptResponse gives the batches."""

  def loss(self, logits, batch):
    return causal_lm_loss(logits, batch)

  def finalize(self, means):
    return finalize_language_modeling(means)

  def predict(self, logits, batch):
    return predict_after_prompt(logits, batch)
