"""Recommendation (implicit feedback): a two-tower retrieval model over who rated what.

    jaxtrain data import --config configs/recommend.py
    jaxtrain train --config configs/recommend.py --workdir runs/recommend
    jaxtrain predict --workdir runs/recommend --input users.csv --output top10.csv

Every rating is an interaction. Training uses in-batch sampled softmax; the
validation and test splits (the newest interactions, split by time) rank each
held-out item against all items, the user's training items excluded:
recall@10 and NDCG@10.
"""

from jaxtrain.config import base_config, sample_file


def get_config():
  config = base_config()
  config.task = "retrieval"
  config.data_import.update(
    sources=(sample_file("ratings.csv"),),
    name="interactions",
    label="rating",
    label_kind="value",
    columns="user=category,item=category",
    split="time:timestamp",
    cutoffs="2024-10-01,2024-11-15",
  )
  config.dataset.update(
    name="interactions", train_split="train", eval_split="validation", test_split="test"
  )
  config.preprocess.features = "user,item"
  config.model = dict(
    name="two_tower",
    dim=32,  # the user and item vectors compared
    hidden=64,
  )  # each tower's embedding width
  config.loss.temperature = 0.1
  config.eval_top_k = 10
  config.batch_size = 256
  config.num_train_steps = 800
  config.log_every_steps = 100
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 400
  config.optimizer.update(name="adam", learning_rate=3e-3)
  config.early_stopping.update(metric="recall@10", mode="max", patience=2)
  config.keep_best_checkpoints = 1  # the test measures the best evaluation's checkpoint
  return config
