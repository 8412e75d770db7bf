"""Demand forecasting: daily demand per store, split by time, with lag and calendar features.

    jaxtrain data import --config configs/demand.py
    jaxtrain train --config configs/demand.py --workdir runs/demand

Everything before 2024-09-01 trains, September-October validates, and
November-December tests: the model never sees the future it is scored on.
Features: the store (embedded), temperature, promotion, the date (as a trend
and as day-of-week and month categories) and the demand 1 and 7 days earlier.
For a P90 forecast instead of the mean: --config.loss.name=quantile --config.loss.quantile=0.9
"""

from jaxtrain.config import base_config, sample_file


def get_config():
  config = base_config()
  config.task = "regression"
  config.data_import.update(
    sources=(sample_file("demand.csv"),),
    name="demand",
    label="demand",
    label_kind="value",
    columns="date=time,promo=int",
    split="time:date",
    cutoffs="2024-09-01,2024-11-01",
    lags="1,7",
    series="store",
  )
  config.dataset.update(
    name="demand", train_split="train", eval_split="validation", test_split="test"
  )
  config.preprocess.calendar = "dayofweek,month"
  config.loss.name = "mse"
  config.model = dict(
    name="tabular_mlp",
    features=(128, 128),  # hidden layer widths
    max_embedding=32,  # the widest categorical embedding (1.6 * size^0.56 below it)
    dropout_rate=0.0,  # after each hidden layer
    numeric_embedding="periodic",  # numbers also as learned periodic features (PLR) | none
    ensemble_size=32,
  )  # members trained at once, TabM-mini style (1: one MLP)
  config.batch_size = 64
  config.num_train_steps = 1500
  config.log_every_steps = 100
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.optimizer.update(
    name="adamw", learning_rate=3e-3, weight_decay=1e-4, schedule="warmup_cosine", warmup_steps=50
  )
  config.early_stopping.update(metric="rmse", mode="min", patience=3)
  config.keep_best_checkpoints = 1  # the test measures the best evaluation's checkpoint
  return config
