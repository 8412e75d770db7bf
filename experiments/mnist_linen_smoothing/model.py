"""A Flax Linen network of our own: two 5x5 convolutions, a dense layer with dropout."""

import flax.linen as nn


class LeNet(nn.Module):
  """LeNet-like: conv 5x5 (relu, max pool) twice, then dense + dropout and the classifier."""

  num_classes: int = 10
  width: int = 32
  hidden: int = 256
  dropout_rate: float = 0.3

  @nn.compact
  def __call__(self, x, train: bool = False):
    for features in (self.width, 2 * self.width):
      x = nn.max_pool(nn.relu(nn.Conv(features, (5, 5))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
