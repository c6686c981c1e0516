"""Built-in attention adapters; importing this package registers them, in this order."""

from attnvis.export.adapters import torch_mha, dotattn, sdpa  # noqa: F401
