"""The ONNX Runtime step backend of Hugging Face captioners: exported once (cached), then many images per call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnvis.runtime.device import ort_session


@dataclass
class StepState:
    """The caches of ``N`` rows: self-attention past ``(layers, N, heads, P, head_dim)``, cross keys and values."""

    past_keys: np.ndarray
    past_values: np.ndarray
    cross_keys: np.ndarray
    cross_values: np.ndarray
    position: int = 0


class OnnxStepBackend:
    """``encoder.onnx`` once per image, ``decoder_step.onnx`` once per token for all rows."""

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path, device: str = "cpu") -> None:
        self.encoder = ort_session(encoder_path, device)
        self.decoder = ort_session(decoder_path, device)

    def encode(self, pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        pixels = pixel_values.detach().cpu().numpy().astype(np.float32, copy=False)
        keys, values = self.encoder.run(None, {"pixel_values": pixels})
        return keys, values

    def init_state(self, encoded: tuple[np.ndarray, np.ndarray], rows: torch.Tensor) -> StepState:
        keys, values = encoded
        idx = rows.numpy()
        ck = np.ascontiguousarray(keys[:, idx])
        empty = np.zeros((*ck.shape[:3], 0, ck.shape[4]), np.float32)  # (layers, N, heads, 0, head_dim)
        return StepState(empty, empty, ck, np.ascontiguousarray(values[:, idx]))

    def step(self, ids: torch.Tensor, state: StepState) -> tuple[torch.Tensor, np.ndarray, StepState]:
        n = ids.shape[0]
        feeds = {"input_ids": ids.numpy().astype(np.int64).reshape(n, 1),
                 "position_ids": np.full((n, 1), state.position, np.int64),
                 "past_keys": state.past_keys, "past_values": state.past_values,
                 "cross_keys": state.cross_keys, "cross_values": state.cross_values}
        logits, keys, values, cross = self.decoder.run(None, feeds)
        new = StepState(keys, values, state.cross_keys, state.cross_values, state.position + 1)
        return torch.from_numpy(logits), cross, new

    def reorder(self, state: StepState, index: torch.Tensor) -> StepState:
        # beams are reordered within their own image, whose cross keys and values all beams share
        idx = index.numpy()
        return StepState(np.take(state.past_keys, idx, axis=1), np.take(state.past_values, idx, axis=1),
                         state.cross_keys, state.cross_values, state.position)
