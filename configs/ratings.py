"""Rating prediction (explicit feedback): matrix factorization on user, item -> rating.

    jaxtrain data import --config configs/ratings.py
    jaxtrain train --config configs/ratings.py --workdir runs/ratings

Reports RMSE and MAE in stars. Users and items are vocabularies built from
the training split; unseen ones share index 0 (their biases learn the mean).
"""

from jaxtrain.config import base_config, sample_file


def get_config():
  config = base_config()
  config.task = "regression"
  config.data_import.update(sources=(sample_file("ratings.csv"),), name="ratings",
                            label="rating", label_kind="value", columns="user=category,item=category",
                            ignore="timestamp", fractions="0.8,0.1,0.1")
  config.dataset.update(name="ratings", train_split="train", eval_split="validation",
                        test_split="test")
  config.preprocess.features = "user,item"
  config.model = dict(
      name="matrix_factorization",
      dim=16)                     # the user and item vectors' size (each also has a bias)
  config.batch_size = 256
  config.num_train_steps = 1200
  config.log_every_steps = 100
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 400
  config.optimizer.update(name="adamw", learning_rate=1e-2, weight_decay=0.05)
  config.early_stopping.update(metric="rmse", mode="min", patience=2)
  config.keep_best_checkpoints = 1  # the test measures the best evaluation's checkpoint
  return config
