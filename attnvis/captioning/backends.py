"""What the decoding loops run on: an :class:`AoAModel` in PyTorch, or its two ONNX graphs in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnvis.captioning.decoding import Features
from attnvis.captioning.model import AoAModel
from attnvis.runtime.device import ort_session, torch_device


class TorchBackend:
    """Runs an :class:`AoAModel` eagerly."""

    def __init__(self, model: AoAModel, device: str = "cpu") -> None:
        self.device = torch_device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def encode(self, fc_feats, att_feats, att_masks):
        feats = Features(*self.model.prepare_feature(fc_feats, att_feats, att_masks))
        return feats, [m.clone() for m in self.model.refiner_maps()]

    @torch.no_grad()
    def step(self, it, state, feats):
        logprobs, state = self.model.get_logprobs_state(it, *feats, state)
        return logprobs, state, self.model.decoder_map().clone()


class OnnxBackend:
    """Runs ``encoder.onnx`` and ``decoder_step.onnx`` with ONNX Runtime."""

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path, device: str = "cpu") -> None:
        self.encoder = ort_session(encoder_path, device)
        self.decoder = ort_session(decoder_path, device)
        self.device = torch.device("cpu")
        self._enc_inputs = {i.name for i in self.encoder.get_inputs()}
        self._dec_inputs = {i.name for i in self.decoder.get_inputs()}

    def encode(self, fc_feats, att_feats, att_masks):
        masks = torch.ones(att_feats.shape[:2]) if att_masks is None else att_masks
        feeds = {"fc_feats": fc_feats, "att_feats": att_feats, "att_masks": masks}
        out = self.encoder.run(None, _numpy_feeds(feeds, self._enc_inputs))
        tensors = [torch.from_numpy(o) for o in out]
        return Features(*tensors[:3], masks.float()), tensors[3:]

    def step(self, it, state, feats):
        feeds = {"it": it, "state_h": state[0], "state_c": state[1], "mean_feats": feats.mean_feats,
                 "att_feats": feats.att_feats, "p_att_feats": feats.p_att_feats, "att_masks": feats.att_masks}
        logprobs, h, c, attn = (torch.from_numpy(o) for o in self.decoder.run(None, _numpy_feeds(feeds, self._dec_inputs)))
        return logprobs, (h, c), attn


def _numpy_feeds(feeds: dict[str, Any], wanted: set[str]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in feeds.items() if k in wanted}
