"""MNIST with a Linen model and a loss of our own (label smoothing + L2 on the weights).

    jaxtrain train --config experiments/mnist_linen_smoothing/config.py \
        --workdir runs/mnist_linen --config.dataset.path=PATH/TO/mnist

model.py and loss.py sit beside this file; the L2 penalty replaces weight decay
(the optimizer has none), and the smoothing strength is `config.loss.label_smoothing`.
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.model = dict(name="model.py:LeNet", num_classes=10, width=32, hidden=256, dropout_rate=0.3)
  config.task = "loss.py:smoothed_cross_entropy"
  config.loss.label_smoothing = 0.1  # options of the task: keyword arguments of the loss
  config.loss.l2 = 5e-4
  config.dataset.update(name="mnist", train_split="train", eval_split="test")
  config.batch_size = 128
  config.num_epochs = 3
  config.log_every_steps = 100
  config.eval_every_steps = 468
  config.checkpoint_every_steps = 468
  config.optimizer.update(
    name="adam", learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=100
  )
  return config
