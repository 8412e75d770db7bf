"""Binary classification of a real table: scikit-learn's breast cancer data (569 rows, JSON Lines).

    jaxtrain data import --config configs/breast_cancer.py
    jaxtrain train --config configs/breast_cancer.py --workdir runs/breast_cancer

Thirty numeric columns, standardised with the training split's statistics;
the label is the diagnosis (benign or malignant).
"""

from jaxtrain.config import base_config, sample_file


def get_config():
  config = base_config()
  config.task = "classification"
  config.data_import.update(
    sources=(sample_file("breast_cancer.jsonl"),),
    name="breast_cancer",
    label="diagnosis",
    fractions="0.7,0.15,0.15",
  )
  config.dataset.update(
    name="breast_cancer", train_split="train", eval_split="validation", test_split="test"
  )
  config.model = dict(
    name="tabular_mlp",
    features=(32, 16),  # hidden layer widths
    max_embedding=32,  # the widest categorical embedding (1.6 * size^0.56 below it)
    dropout_rate=0.1,  # after each hidden layer
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
  config.optimizer.update(name="adamw", learning_rate=3e-3, weight_decay=1e-4)
  config.early_stopping.update(metric="loss", mode="min", patience=10)  # evaluations, so epochs
  config.keep_best_checkpoints = 1  # the test measures the best evaluation's checkpoint
  return config
