"""A search space for configs/digits.py: learning rate x weight decay.

    jaxtrain sweep --config configs/digits.py --space configs/sweeps/digits_lr_wd.py \
        --trials 12 --workdir runs/digits-sweep --metric eval/loss
"""

from jaxtrain.tools.sweep import loguniform


def get_space():
  return {
    "optimizer.learning_rate": loguniform(3e-4, 3e-1),
    "optimizer.weight_decay": loguniform(1e-6, 1e-1),
  }
