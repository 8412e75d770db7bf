"""Rematerialisation: a block recomputed in the backward pass instead of stored."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxtrain.errors import UserError

REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,  # recompute everything
  "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rematted(block: type[nn.Module], policy: str, train_argnum: int) -> type[nn.Module]:
  """`block` recomputed in the backward pass under a named policy ("" = stored, as usual).

  Rematerialisation trades compute for activation memory; it does not change
  the values computed. `train_argnum` is the position of `train` in
  `__call__` (self = 0), which must be static.
  """
  if not policy:
    return block
  if policy not in REMAT_POLICIES:
    raise UserError(f"config.model.remat={policy!r} is not one of {sorted(REMAT_POLICIES)} or ''")
  return nn.remat(block, policy=REMAT_POLICIES[policy], static_argnums=(train_argnum,))
