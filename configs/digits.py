"""The embedded default: scikit-learn's handwritten digits (no download).

    jaxtrain train --config configs/digits.py --workdir runs/digits

Trains on 90% of the 1,437-image train split, validates on the other 10%, and
reports accuracy on the 360-image test split once training ends.
"""

from jaxtrain.config import base_config


def get_config():
  config = base_config()
  config.seed = 0
  config.batch_size = 64
  config.num_train_steps = 1000
  config.log_every_steps = 100
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.optimizer.update(
    name="adamw", learning_rate=3e-3, weight_decay=1e-4, schedule="warmup_cosine", warmup_steps=50
  )
  config.dataset.update(
    name="digits", train_split="train[:90%]", eval_split="train[90%:]", test_split="test"
  )
  config.model = dict(name="cnn", num_classes=10, dropout_rate=0.1)  # before the last dense layer
  return config
