"""Our own task: label-smoothed cross-entropy plus an explicit L2 penalty on the weights.

A task is a loss `(outputs, batch[, params], *, options) -> per-example values`;
its keyword-only options come from `config.loss`. Taking `params` is what lets
the L2 term see the weights (a batch-level scalar counts for every example).
The other values are reported as they are: the plain cross-entropy shows what
the smoothing and the penalty cost, accuracy what they buy.
"""

import jax
import jax.numpy as jnp
import optax


def smoothed_cross_entropy(
  logits, batch, params, *, label_smoothing: float = 0.1, l2: float = 5e-4
):
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
  smoothed = optax.softmax_cross_entropy(logits, targets)
  kernels = [w for w in jax.tree.leaves(params) if w.ndim > 1]  # not biases
  penalty = 0.5 * l2 * sum(jnp.sum(w.astype(jnp.float32) ** 2) for w in kernels)
  return {
    "loss": smoothed + penalty,
    "cross_entropy": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
    "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
    "l2_penalty": penalty,
  }
