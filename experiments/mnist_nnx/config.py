"""MNIST (60,000 / 10,000) with an NNX model of our own: model.py beside this file.

    jaxtrain train --config experiments/mnist_nnx/config.py --workdir runs/mnist_nnx \
        --config.dataset.path=PATH/TO/mnist        # the four IDX files (train-*, t10k-*)

Without `dataset.path` it reads TFDS's "mnist" prepared in the data_dir.
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.model = dict(
    name="model.py:ConvNet",
    num_classes=10,
    image_size=28,
    channels=1,
    width=32,
    hidden=256,
    dropout_rate=0.3,
  )
  config.dataset.update(name="mnist", train_split="train", eval_split="test")
  config.batch_size = 128
  config.num_epochs = 3
  config.log_every_steps = 100
  config.eval_every_steps = 468
  config.checkpoint_every_steps = 468
  config.optimizer.update(
    name="adamw", learning_rate=2e-3, weight_decay=1e-4, schedule="warmup_cosine", warmup_steps=100
  )
  return config
