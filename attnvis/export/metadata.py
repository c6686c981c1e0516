"""The metadata contract's former home; it is :mod:`attnvis.metadata` now (every layer reads it)."""

from attnvis.metadata import REDUCTIONS, LayerInfo, ModelMetadata, Preprocess, TokenLayout

__all__ = ["REDUCTIONS", "LayerInfo", "ModelMetadata", "Preprocess", "TokenLayout"]
