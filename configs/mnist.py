"""Flax's MNIST example setup: the CNN, SGD lr 0.1 momentum 0.9, batch 128, 10 epochs.

With standard TFDS MNIST prepared in your data_dir:
    jaxtrain train --config configs/mnist.py --workdir runs/mnist
With the IDX files in a directory (here the 10,000-image test set, split 8,000/2,000):
    jaxtrain train --config configs/mnist.py --workdir runs/mnist \\
      --config.dataset.path=../shared/data/mnist_t10k \\
      --config.dataset.train_split='test[:8000]' --config.dataset.eval_split='test[8000:]'
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.batch_size = 128
  config.num_epochs = 10
  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9)
  config.dataset.update(name="mnist", train_split="train", eval_split="test")
  config.model = dict(name="cnn", num_classes=10, dropout_rate=0.1)  # before the last dense layer
  return config
