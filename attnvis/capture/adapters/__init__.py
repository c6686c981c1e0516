"""Built-in attention adapters; importing this package registers them, in this order."""

from attnvis.capture.adapters import torch_mha, dotattn, hf, windows, torchvision_swin, timm, sdpa  # noqa: F401
