"""A small convolutional network in Flax NNX, with batch norm and dropout.

Written as NNX code is written anywhere: the module holds its variables and
takes `rngs` at construction. jaxtrain splits it into pure parameters, batch
statistics and a graph (`jaxtrain.nnx_split`), so the training step stays a
pure function: dropout draws from the step's key, the batch statistics are
`model_state`, and under pmap they are reduced over all devices.
"""

from flax import nnx


class ConvNet(nnx.Module):
  """conv-BN-relu-pool twice, then a dropout-regularised dense layer and the classifier."""

  def __init__(
    self,
    num_classes: int = 10,
    image_size: int = 28,
    channels: int = 1,
    width: int = 32,
    hidden: int = 256,
    dropout_rate: float = 0.3,
    *,
    rngs: nnx.Rngs,
  ):
    self.conv1 = nnx.Conv(channels, width, (3, 3), use_bias=False, rngs=rngs)
    self.norm1 = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), use_bias=False, rngs=rngs)
    self.norm2 = nnx.BatchNorm(2 * width, momentum=0.9, rngs=rngs)
    self.dense = nnx.Linear((image_size // 4) ** 2 * 2 * width, hidden, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.norm1(self.conv1(x))), (2, 2), (2, 2))
    x = nnx.max_pool(nnx.relu(self.norm2(self.conv2(x))), (2, 2), (2, 2))
    x = self.dropout(nnx.relu(self.dense(x.reshape(x.shape[0], -1))))
    return self.head(x)
