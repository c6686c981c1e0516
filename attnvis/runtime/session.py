"""ONNX Runtime session over an attnvis export: CUDA when usable, else CPU, never silently."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from attnvis.errors import InputError, ModelError
from attnvis.metadata import ModelMetadata
from attnvis.runtime.maps import AttentionMaps
from attnvis.runtime._iobind import Binder
from attnvis.runtime.device import CUDA, ort_session
from attnvis.runtime.images import preprocess


def _options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # a missing GPU is reported by us, once, not by ORT's C++ log
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def read_metadata(path: str | Path) -> ModelMetadata:
    """The attnvis metadata of an ``.onnx`` file, read without opening a session (milliseconds).

    Raises:
        ModelError: the file is not an attnvis export.
    """
    from attnvis.runtime._props import metadata_props

    try:
        return ModelMetadata.from_props(metadata_props(path))
    except ValueError as err:
        raise ModelError(f"{path}: {err}; export it with 'attnvis export'") from None


class OrtSession:
    """One ORT session over an ``.onnx`` file made by attnvis.

    Args:
        path: the model file.
        device: ``auto`` (CUDA if usable, else CPU; see :attr:`provider`),
            ``cuda`` (an error if CUDA is not usable) or ``cpu``.
        threads: intra-op threads; ``None`` lets ORT use every core; a callable
            gets ``path`` and returns them (chosen from the file, before the session exists).
        io_binding: run through IO binding (:mod:`attnvis.runtime._iobind`);
            ``None``: when the session runs on CUDA.
        cuda_graph: record and replay CUDA graphs, one per batch size (``cuda`` only;
            the model's outputs must have fixed shapes but for the batch).
    """

    backend = "ort"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | Callable[[Path], int] | None = None,
                 io_binding: bool | None = None, cuda_graph: bool = False):
        if callable(threads):
            threads = threads(Path(path))
        self._opened = dict(path=path, device=device, io_binding=io_binding, cuda_graph=cuda_graph)  # for set_threads
        self.path = Path(path)
        self.threads = threads
        self.session = ort_session(path, device, _options(threads), cuda_graph=cuda_graph)
        self.providers = self.session.get_providers()
        try:
            self.metadata = ModelMetadata.from_props(self.session.get_modelmeta().custom_metadata_map)
        except ValueError as err:
            raise ModelError(f"{path}: {err}; export it with 'attnvis export'") from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]
        use_binding = self.device == "cuda" if io_binding is None else io_binding or cuda_graph
        self.binder = Binder(self.session, self.device, self.metadata.reduction == "none", cuda_graph) \
            if use_binding else None

    def set_threads(self, threads: int | None) -> None:
        """Re-open the model with ``threads`` intra-op threads, in place.

        The old ORT session, with its memory arena, is released before the new
        one is made, so that a run never holds two.
        """
        self.session = self.binder = None
        self.__init__(threads=threads, **self._opened)

    @property
    def provider(self) -> str:
        """The provider actually running the graph."""
        return self.providers[0]

    @property
    def device(self) -> str:
        return "cuda" if self.provider == CUDA else "cpu"

    def run(self, *inputs: np.ndarray, host_maps: bool = True) -> AttentionMaps:
        """Run a prepared batch (one array per model input; with IO binding also CUDA arrays).

        Args:
            host_maps: full (B, heads, Q, K) maps to host memory. ``False`` leaves
                them on the device as ``onnxruntime.OrtValue`` s (``.numpy()``
                copies one) where the session runs on CUDA; reduced maps and
                the model's outputs always come to the host.
        """
        if len(inputs) != len(self.input_names):
            raise InputError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
        if self.binder is not None:
            return AttentionMaps.split(self.binder.run(list(inputs), host_maps), self.metadata)
        feeds = {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(self.input_names, inputs)}
        return AttentionMaps.split(self.session.run(self.output_names, feeds), self.metadata)

    def run_images(self, images: list[np.ndarray]) -> AttentionMaps:
        """Preprocess RGB uint8 images as the metadata says, then run them as one batch."""
        if self.metadata.preprocess is None:
            raise ModelError("this model's metadata has no image preprocessing; it takes tensors, not images")
        return self.run(preprocess(images, self.metadata.preprocess))
