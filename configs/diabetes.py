"""Regression on a real table: scikit-learn's diabetes progression (442 patients, Parquet).

    jaxtrain data import --config configs/diabetes.py
    jaxtrain train --config configs/diabetes.py --workdir runs/diabetes

MAE, RMSE and MAPE are in the label's units; the loss is Huber on the
standardised label (robust to the outliers of a small table).
"""

from jaxtrain.config import base_config, sample_file


def get_config():
  config = base_config()
  config.task = "regression"
  config.data_import.update(
    sources=(sample_file("diabetes.parquet"),),
    name="diabetes",
    label="progression",
    label_kind="value",
    columns="sex=category",
    fractions="0.7,0.15,0.15",
  )
  config.dataset.update(
    name="diabetes", train_split="train", eval_split="validation", test_split="test"
  )
  config.loss.update(name="huber", huber_delta=1.0)
  config.model = dict(
    name="tabular_mlp",
    features=(128, 128),  # hidden layer widths
    max_embedding=32,  # the widest categorical embedding (1.6 * size^0.56 below it)
    dropout_rate=0.0,  # after each hidden layer
    numeric_embedding="periodic",  # numbers also as learned periodic features (PLR) | none
    ensemble_size=32,
  )  # members trained at once, TabM-mini style (1: one MLP)
  config.batch_size = 32
  # Budgets in epochs, not steps: the same config fits 300 rows and 30,000 (a fixed step
  # count is many epochs of one and a single epoch of the other). Early stopping ends it.
  config.num_train_steps = -1
  config.num_epochs = 200
  config.log_every_steps = 50
  config.eval_every_steps = -1  # once per epoch
  config.checkpoint_every_steps = -1  # once per epoch
  config.optimizer.update(name="adamw", learning_rate=3e-3, weight_decay=1e-3)
  config.early_stopping.update(metric="rmse", mode="min", patience=10)  # evaluations, so epochs
  config.keep_best_checkpoints = 1  # the test measures the best evaluation's checkpoint
  return config
