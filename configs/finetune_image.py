"""Fine-tune a pretrained Vision Transformer (a Hugging Face ViT folder) to classify images.

    jaxtrain train --config configs/finetune_image.py --workdir runs/vit \
        --config.model.pretrained=path/to/vit-folder
    jaxtrain export --workdir runs/vit --format safetensors --output runs/vit/hf

The embedded digits by default (8x8 grey, resized to the model's image_size
and repeated to its three channels, as ViT's image processor would); set
dataset.name to your own image import (`jaxtrain data import --image_size`).
The classifier head is new, as wide as `model.num_outputs`. `:lora` trains
adapters on attention's query and value and the head.
"""

from jaxtrain.config import base_config


def get_config(mode: str = "full"):
  """`mode`: "full" (every weight trains) or "lora"."""
  config = base_config()
  config.task = "classification"
  config.dataset.update(name="digits", train_split="train", eval_split="test")
  config.model = dict(name="vit", pretrained="", num_outputs=10, dropout_rate=0.0)
  config.batch_size = 32
  config.num_epochs = 3
  config.eval_every_steps = -1
  config.checkpoint_every_steps = -1
  config.optimizer.update(
    name="adamw",
    learning_rate=1e-3,
    weight_decay=0.01,
    schedule="warmup_cosine",
    warmup_steps=20,
    grad_clip_norm=1.0,
  )
  if mode == "lora":
    config.lora.update(rank=8, alpha=16.0)
    config.optimizer.learning_rate = 5e-3  # adapters start at zero and take larger steps
  elif mode != "full":
    raise ValueError(f"configs/finetune_image.py:{mode}: the mode is full or lora")
  return config
