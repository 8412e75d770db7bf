"""Fine-tune a pretrained Llama-family decoder (Llama, Qwen2, Mistral) on prompt/response pairs.

    jaxtrain train --config configs/finetune_lm.py --workdir runs/lm \
        --config.model.pretrained=path/to/llama-folder
    jaxtrain export --workdir runs/lm --format safetensors --output runs/lm/hf

The pairs are a JSONL file of {"prompt": ..., "response": ...} lines
(`dataset.builder_kwargs.path`; the sample asks of spam.csv's messages whether
each is spam), tokenized by the folder's own tokenizer.json; the loss is taken
on the response's tokens only (task causal_lm). LoRA on by default (rank 8 on
q, k, v and o): `--config.lora.rank=0` tunes every weight (a 1B model then
needs ~16 GB for the weights and Adam's state; see experiments/finetune_memory.py).
"""

import ml_collections

from jaxtrain.config import base_config, sample_file


def get_config():
  config = base_config()
  pretrained = ml_collections.FieldReference("", field_type=str)  # the model's and tokenizer's
  config.task = "causal_lm"
  config.dataset.update(
    name="prompt_response", train_split="train", eval_split="validation", test_split=""
  )
  config.dataset.builder_kwargs = ml_collections.ConfigDict(
    dict(
      path=sample_file("prompts.jsonl"),
      tokenizer=pretrained,
      max_length=64,
      validation_fraction=0.1,
      seed=0,
    )
  )
  config.model = ml_collections.ConfigDict(dict(name="llama", pretrained=pretrained))
  config.lora.update(rank=8, alpha=16.0)
  config.batch_size = 16
  config.num_epochs = 3
  config.eval_every_steps = -1
  config.checkpoint_every_steps = -1
  config.optimizer.update(
    name="adamw",
    learning_rate=1e-3,
    weight_decay=0.0,
    schedule="warmup_cosine",
    warmup_steps=10,
    grad_clip_norm=1.0,
  )
  config.early_stopping.update(metric="loss", mode="min", patience=2)
  return config
