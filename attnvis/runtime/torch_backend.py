"""The PyTorch backend: eager model, same adapters, same interface as :class:`OrtSession`.

It is the reference the export is validated against and the baseline of the
benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch

from attnvis.errors import ModelError
from attnvis.export.onnx import build_metadata
from attnvis.sources import ModelSource
from attnvis.export.wrapper import AttentionOutputs, capture_for
from attnvis.runtime.device import torch_device
from attnvis.runtime.maps import AttentionMaps
from attnvis.runtime.images import preprocess


class TorchSession:
    """Eager PyTorch with capture hooks, same ``run`` / ``run_images`` as ``OrtSession``."""

    backend = "torch"

    def __init__(self, source: ModelSource, device: str = "auto", reduce: str = "none", threads: int | None = None):
        self.torch_device = torch_device(device)
        self.device = self.torch_device.type
        self.provider = f"torch-{self.device}"
        if threads:
            torch.set_num_threads(threads)
        self.source = source
        self.model = source.model.to(self.torch_device).eval()
        self.metadata = build_metadata(ModelSource(self.model, tuple(t.to(self.torch_device) for t in source.example_inputs),
                                                   source.tokens, source.preprocess, source.name, source.input_name, source.extra), reduce)

    @torch.no_grad()
    def run(self, *inputs: np.ndarray) -> AttentionMaps:
        tensors = [torch.as_tensor(np.asarray(x, np.float32), device=self.torch_device) for x in inputs]
        with capture_for(self.model, self.metadata.reduction, self.metadata.tokens) as recorder:
            wrapper = AttentionOutputs(self.model, recorder, self.metadata.tokens, self.metadata.reduction)
            outputs = wrapper(*tensors)
        return AttentionMaps.split([t.cpu().numpy() for t in outputs], self.metadata)

    def run_images(self, images: list[np.ndarray]) -> AttentionMaps:
        if self.metadata.preprocess is None:
            raise ModelError("this model has no image preprocessing; it takes tensors, not images")
        return self.run(preprocess(images, self.metadata.preprocess))
