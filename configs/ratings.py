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
  config.data_import.update(
    sources=(sample_file("ratings.csv"),),
    name="ratings",
    label="rating",
    label_kind="value",
    columns="user=category,item=category",
    ignore="timestamp",
    fractions="0.8,0.1,0.1",
  )
  config.dataset.update(
    name="ratings", train_split="train", eval_split="validation", test_split="test"
  )
  config.preprocess.features = "user,item"
  config.model = dict(
    name="matrix_factorization",
    dim=32,  # the user and item vectors' size (each also has a bias)
    l2=0.1,
  )  # per rating, on the rows it uses: rare users/items stay near the mean
  config.batch_size = 256
  config.num_train_steps = -1  # a budget in epochs: the same config fits 10,000 ratings and 1M
  config.num_epochs = 100  # early stopping ends it sooner (MovieLens 100K: ~15 epochs)
  config.log_every_steps = 250
  config.eval_every_steps = -1  # once per epoch
  config.checkpoint_every_steps = -1
  # The model's l2 regularises; weight decay would shrink every row at every step.
  config.optimizer.update(name="adam", learning_rate=3e-3, weight_decay=0.0)
  config.early_stopping.update(metric="rmse", mode="min", patience=3)
  config.keep_best_checkpoints = 1  # the test measures the best evaluation's checkpoint
  return config
