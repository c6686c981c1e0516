"""What one forward pass returns: every layer's maps plus the model's own outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnvis.metadata import ModelMetadata


@dataclass
class AttentionMaps:
    """Maps by layer, in call order.

    ``maps[i]`` is layer ``i``'s array: (B, heads, Q, K) for reduction
    ``none``, (B, Q, K) for ``mean-heads``, (B, K - prefix) for ``cls``.
    """

    maps: list[np.ndarray]
    outputs: dict[str, np.ndarray]
    metadata: ModelMetadata

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, layer: int) -> np.ndarray:
        return self.maps[layer]

    def by_name(self) -> dict[str, np.ndarray]:
        return {info.name: m for info, m in zip(self.metadata.layers, self.maps)}

    def image(self, b: int) -> list[np.ndarray]:
        """Every layer's maps for batch item ``b``."""
        return [m[b] for m in self.maps]

    @classmethod
    def split(cls, arrays: list[np.ndarray], metadata: ModelMetadata) -> "AttentionMaps":
        """From the flat output list ``(*model_outputs, *attn_i)``."""
        n = len(metadata.model_outputs)
        return cls(list(arrays[n:]), dict(zip(metadata.model_outputs, arrays[:n])), metadata)
