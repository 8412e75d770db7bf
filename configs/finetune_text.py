"""Fine-tune a pretrained BERT-family encoder to classify text (spam, moderation, routing).

    jaxtrain data import --config configs/finetune_text.py
    jaxtrain train --config configs/finetune_text.py --workdir runs/ft \
        --config.model.pretrained=path/to/bert-folder
    jaxtrain export --workdir runs/ft --format safetensors --output runs/ft/hf

`model.pretrained` is a Hugging Face folder (config.json, model.safetensors or
shards with their index, tokenizer.json): the model's shape comes from its
config.json, its weights from the safetensors, the text is tokenized by its own
tokenizer.json; the classifier head is new (as wide as the data has classes).
`:lora` trains rank-8 adapters on attention's query and value and the head,
the base held fixed (`--config.lora.rank=0` trains everything). Replace the
data_import sources and label with your own CSV's.
"""

from jaxtrain.config import base_config, sample_file


def get_config(mode: str = "full"):
  """`mode`: "full" (every weight trains) or "lora" (adapters and the head)."""
  config = base_config()
  config.task = "classification"
  config.data_import.update(
    sources=(sample_file("spam.csv"),),
    name="spam",
    label="label",
    split="fraction",
    fractions="0.8,0.1,0.1",
    seed=0,
  )
  config.dataset.update(
    name="spam", train_split="train", eval_split="validation", test_split="test"
  )
  config.preprocess.update(tokenizer="pretrained", max_length=64, class_weights="balanced")
  config.model = dict(name="bert", pretrained="", dropout_rate=0.1)
  config.batch_size = 32
  config.num_epochs = 3  # fine-tuning needs few passes
  config.eval_every_steps = -1  # once per epoch
  config.checkpoint_every_steps = -1
  config.optimizer.update(
    name="adamw",
    learning_rate=5e-5,
    weight_decay=0.01,
    schedule="warmup_linear",
    warmup_steps=20,
    grad_clip_norm=1.0,
  )
  if mode == "lora":
    config.lora.update(rank=8, alpha=16.0)
    config.optimizer.learning_rate = 1e-3  # adapters start at zero and take larger steps
  elif mode != "full":
    raise ValueError(f"configs/finetune_text.py:{mode}: the mode is full or lora")
  config.early_stopping.update(metric="f1", mode="max", patience=2)
  config.keep_best_checkpoints = 1
  return config
