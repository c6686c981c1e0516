"""Running explanations: ``attnvis.explain(...)``, and the pieces ``visualize`` / ``batch`` build on.

- :func:`open_explainer`: a model spec, ``.onnx`` file or ``nn.Module`` → a session whose
  ``metadata.explain`` lists its methods (an ORT session over an ``--explain`` export, cached
  like plain exports, or :class:`TorchExplainer`, eager PyTorch with autograd).
- :func:`resolve_target`: ``None`` / ``"top1"`` / an index / per-image indices / a label name
  → int64 ``[B]`` (negative = top-1), checked against the classes.
- :func:`run_explanation`: a preprocessed float32 batch and its targets → :class:`Explanation`.
- :func:`explain`: all three in one call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnvis.errors import InputError, ModelError
from attnvis.metadata import ModelMetadata

TARGET = "target"
#: ``--target`` words meaning "each image's top-1 class".
TOP1 = ("top1", "top-1", "")


@dataclass
class Explanation:
    """What one explanation pass gives, per image of the batch.

    Attributes:
        method: the method asked for (``relevance`` is its map).
        relevance: float32 ``[B, h, w]``: the method's CLS-row relevance over the patch grid, raw.
        target: int64 ``[B]``: the explained class of each image.
        logits: float32 ``[B, classes]``: the model's class scores.
        maps: every method the pass computed → float32 ``[B, h, w]``.
        labels: the class names, where the model records them.
    """

    method: str
    relevance: np.ndarray
    target: np.ndarray
    logits: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    labels: list[str] | None = None

    @property
    def prediction(self) -> np.ndarray:
        """int64 ``[B]``: the top-1 class of each image."""
        return self.logits.argmax(axis=1).astype(np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        """float32 ``[B, classes]``: softmax of the logits."""
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted.astype(np.float64))
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    @property
    def probability(self) -> np.ndarray:
        """float32 ``[B]``: the probability of each image's predicted class."""
        return self.probabilities[np.arange(len(self.logits)), self.prediction]

    @property
    def target_probability(self) -> np.ndarray:
        """float32 ``[B]``: the probability of each image's explained class."""
        return self.probabilities[np.arange(len(self.logits)), self.target]

    def label(self, index: int) -> str:
        """Class ``index``'s name, or the index as text where the model records no names."""
        return self.labels[index] if self.labels else str(index)


def _few(labels: list[str], n: int = 5) -> str:
    return ", ".join(repr(x) for x in labels[:n]) + (", …" if len(labels) > n else "")


def _label_index(text: str, labels: list[str] | None, classes: int) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    if not labels:
        raise InputError(f"--target {text!r}: the model records no class names; give a class index 0..{classes - 1}")
    lowered = [x.lower() for x in labels]
    if text.lower() not in lowered:
        raise InputError(f"--target {text!r} is no class of this model; valid names: {_few(labels)} "
                         f"({classes} classes; or an index 0..{classes - 1})")
    return lowered.index(text.lower())


def resolve_target(target: Any, batch: int, classes: int, labels: list[str] | None = None) -> np.ndarray:
    """The explained class per image, int64 ``[batch]``, ``-1`` meaning the top-1 class.

    Args:
        target: ``None`` or ``"top1"`` (top-1), an index or label name for every image, or a sequence
            of ``batch`` indices / names.
        batch: the number of images.
        classes: the model's number of classes.
        labels: class names, for names as targets.

    Raises:
        InputError: an index out of range, an unknown name, a sequence of another length.
    """
    if target is None or (isinstance(target, str) and target.strip().lower() in TOP1):
        return np.full(batch, -1, np.int64)
    if isinstance(target, (str, int, np.integer)):
        items = [target] * batch
    else:
        items = list(np.asarray(target).reshape(-1)) if not isinstance(target, (list, tuple)) else list(target)
        if len(items) != batch:
            raise InputError(f"target has {len(items)} entries for {batch} images; give one per image or one for all")
    out = np.array([_label_index(str(t).strip(), labels, classes) if isinstance(t, str) else int(t) for t in items],
                   np.int64)
    bad = out[(out < 0) | (out >= classes)]
    if bad.size:
        names = f"; e.g. {_few(labels)}" if labels else ""
        raise InputError(f"target {int(bad[0])} is out of range: the model has {classes} classes (0..{classes - 1}){names}")
    return out


def _explain_meta(meta: ModelMetadata, path: str) -> dict:
    if not meta.explain:
        raise InputError(f"{path} was exported without --explain: re-export it with "
                         "'attnvis export --model SPEC --explain METHODS', or pass the model spec itself")
    return meta.explain


def run_explanation(session, batch: np.ndarray, target: np.ndarray, method: str | None = None) -> Explanation:
    """Run one explanation pass on a preprocessed batch.

    Args:
        session: from :func:`open_explainer` (an :class:`~attnvis.runtime.session.OrtSession` over an
            ``--explain`` export, or a :class:`TorchExplainer`).
        batch: float32 ``[B, C, H, W]``, preprocessed as ``session.metadata.preprocess`` says.
        target: int64 ``[B]`` from :func:`resolve_target` (negative = top-1).
        method: which map is ``.relevance``; ``None``: the session's first method.

    Returns:
        An :class:`Explanation` holding every method of the session in ``maps``.
    """
    meta = session.metadata
    methods = _explain_meta(meta, "the model")["methods"]
    method = method or methods[0]
    if method not in methods:
        raise InputError(f"method {method!r} is not in this explanation graph (it has {', '.join(methods)}); "
                         f"re-export with --explain {','.join([*methods, method])}")
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    target = np.ascontiguousarray(target, dtype=np.int64).reshape(-1)
    if target.shape[0] != batch.shape[0]:
        raise InputError(f"{target.shape[0]} targets for {batch.shape[0]} images")
    arrays = _run(session, batch, target)
    n = len(meta.model_outputs)
    logits = np.asarray(arrays[0], np.float32)
    grid = meta.tokens.grid
    maps = {m: np.asarray(a, np.float32).reshape(batch.shape[0], *grid) for m, a in zip(methods, arrays[n:])}
    chosen = np.where(target < 0, logits.argmax(axis=1), target).astype(np.int64)
    return Explanation(method, maps[method], chosen, logits, maps, meta.labels)


def _run(session, batch: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
    if isinstance(session, TorchExplainer):
        return session.run(batch, target)
    feeds = {session.input_names[0]: batch, TARGET: target}
    return session.session.run(session.output_names, feeds)


class TorchExplainer:
    """The ``torch`` backend: :func:`attnvis.explain.explain_pass` eagerly, same outputs as the graph.

    Args:
        source: the model (:class:`~attnvis.sources.ModelSource`).
        methods: the methods computed on every run.
        options: ``start_layer``, ``discard_ratio`` (:class:`attnvis.explain.Options`).
        device: ``auto`` | ``cuda`` | ``cpu``.
    """

    backend = "torch"

    def __init__(self, source, methods: list[str], options, device: str = "auto"):
        import torch

        from attnvis.export.explain import explain_metadata
        from attnvis.runtime.device import torch_device

        self.torch_device = torch_device(device)
        self.device = self.torch_device.type
        self.provider = f"torch-{self.device}"
        self.source, self.options, self.methods = source, options, list(methods)
        self.model = source.model.to(self.torch_device).eval()
        self.metadata = explain_metadata(source, self.methods, options)
        self._torch = torch

    def run(self, batch: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        """``(*model_outputs, *relevance rows)`` as numpy arrays, like the exported graph."""
        from attnvis.explain.trace import explain_pass

        torch = self._torch
        images = torch.as_tensor(batch, device=self.torch_device)
        chosen = torch.as_tensor(target, device=self.torch_device)
        outputs, relevance = explain_pass(self.model, (images,), chosen, self.methods, self.metadata.tokens, self.options)
        return [t.cpu().numpy() for _, t in outputs] + [relevance[m].cpu().numpy() for m in self.methods]


def _explain_cache_path(spec: str | None, weights: str | None, methods: list[str], options, image_size) -> Path:
    from attnvis.runtime.loader import _cache_key, cache_dir

    base = _cache_key(spec, weights, "none", image_size)
    extra = json.dumps({"methods": methods, **options.as_dict(methods)}, sort_keys=True)
    return cache_dir() / "onnx" / f"{base}-explain-{hashlib.sha256(extra.encode()).hexdigest()[:12]}.onnx"


def explained_path(spec: str | None, methods: list[str], options, *, weights: str | None = None, image_size=None,
                   random_weights: bool = False) -> Path:
    """The cached ``--explain`` export of ``spec`` with ``methods`` and ``options``, made and validated on first use."""
    from attnvis.runtime.loader import _seal, _verified, sweep_stale_temporaries

    path = _explain_cache_path(spec, weights, methods, options, image_size)
    if path.exists() and not _verified(path):
        path.unlink()
    if not path.exists():
        from attnvis.export.explain import export_explain
        from attnvis.sources import load_source

        sweep_stale_temporaries(path.parent)
        source = load_source(spec, weights=weights, image_size=image_size, random_weights=random_weights)
        export_explain(source, path, methods, options, validate=True)
        _seal(path)
    return path


def _check_onnx(path: str, session, methods: list[str], options) -> None:
    explain = _explain_meta(session.metadata, path)
    missing = [m for m in methods if m not in explain["methods"]]
    if missing:
        raise InputError(f"{path} holds the methods {', '.join(explain['methods'])}, not {', '.join(missing)}; "
                         f"re-export it with --explain {','.join(explain['methods'] + missing)}")
    asked = options.as_dict(methods)
    for key in ("start_layer", "discard_ratio"):
        if asked[key] != explain[key] and any(_uses(m, key) for m in methods):
            raise InputError(f"{path} was exported with {key}={explain[key]}, not {asked[key]}; re-export it "
                             f"with --{key.replace('_', '-')} {asked[key]}, or pass the model spec")


def _uses(method: str, option: str) -> bool:
    return {"start_layer": ("rollout", "transformer-attribution"), "discard_ratio": ("grad-rollout",)}[option].count(method) > 0


def _onnx_session(path: str, device: str):
    import onnx

    from attnvis.runtime.session import OrtSession

    if not Path(path).is_file():
        raise InputError(f"model file not found: {path}")
    props = {p.key for p in onnx.load(path, load_external_data=False).metadata_props}
    if "attnvis.layers" not in props:
        raise InputError(f"{path} is an ONNX file made elsewhere: explanations need the PyTorch model (its backward "
                         "pass); export it with 'attnvis export --model SPEC --explain METHODS'")
    return OrtSession(path, device=device)


def open_explainer(model, methods: list[str] | str, *, backend: str | None = None, device: str = "auto",
                   weights: str | None = None, start_layer: int = 0, discard_ratio: float = 0.9,
                   image_size=None, random_weights: bool = False):
    """A session computing ``methods`` (see the module docstring); refusals come before any work.

    Args:
        model: an ``.onnx`` file exported with ``--explain``, a model spec (``default``, ``timm:NAME``,
            a Hugging Face directory, ``torchvision:NAME``, ``package.module:factory``) or an ``nn.Module``.
        methods: names from :data:`attnvis.explain.METHODS` (a list or comma-separated).
        backend: ``ort`` | ``torch``; ``None``: ``torch`` for an ``nn.Module``, else ``ort``.
        device, weights, image_size, random_weights: as for :func:`attnvis.runtime.open_model`.
        start_layer, discard_ratio: the methods' options.
    """
    from attnvis.explain.methods import METHODS

    names = [n.strip() for n in methods.split(",")] if isinstance(methods, str) else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise InputError(f"unknown explanation method {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"choose from {', '.join(METHODS)}")
    names = list(dict.fromkeys(names))
    from attnvis.explain.trace import Options

    options = Options(int(start_layer), float(discard_ratio))
    is_module = not isinstance(model, (str, Path)) and model is not None
    backend = backend or ("torch" if is_module else "ort")
    if backend not in ("ort", "torch"):
        raise InputError(f"backend {backend!r} is not one of ort, torch")
    if is_module:
        return _module_explainer(model, names, options, backend, device)
    spec = None if model is None else str(model)
    if spec is not None and spec.lower().endswith(".onnx"):
        if backend == "torch":
            raise InputError(f"backend 'torch' needs a PyTorch model, not the ONNX file {spec}")
        session = _onnx_session(spec, device)
        _check_onnx(spec, session, names, options)
        return session
    if backend == "torch":
        from attnvis.sources import load_source

        source = load_source(spec, weights=weights, image_size=image_size, random_weights=random_weights)
        return TorchExplainer(source, names, options, device)
    from attnvis.runtime.session import OrtSession

    return OrtSession(explained_path(spec, names, options, weights=weights, image_size=image_size,
                                     random_weights=random_weights), device=device)


def _module_explainer(model, names: list[str], options, backend: str, device: str):
    import tempfile

    from attnvis.sources import module_source
    from attnvis.runtime.session import OrtSession

    source = module_source(model)
    if backend == "torch":
        return TorchExplainer(source, names, options, device)
    from attnvis.export.explain import export_explain

    folder = Path(tempfile.mkdtemp(prefix="attnvis-explain-"))
    path = folder / "model.onnx"
    export_explain(source, path, names, options, validate=True)
    session = OrtSession(path, device=device)  # ORT has read the file: it may go
    path.unlink()
    folder.rmdir()
    return session


def _as_batch(inputs, session) -> np.ndarray:
    """Image paths, RGB uint8 arrays, or a float32 ``[B, C, H, W]`` model input → the model's input batch."""
    from attnvis.runtime.images import load_image, preprocess

    if hasattr(inputs, "detach"):  # a torch tensor
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4 and inputs.dtype != np.uint8:
        return np.ascontiguousarray(inputs, np.float32)
    items = [inputs] if isinstance(inputs, (str, Path)) or (isinstance(inputs, np.ndarray) and inputs.ndim == 3) \
        else list(inputs)
    images = [load_image(x) if isinstance(x, (str, Path)) else np.asarray(x) for x in items]
    if session.metadata.preprocess is None:
        raise ModelError("this model's metadata has no image preprocessing; give a float32 [B, C, H, W] input")
    return preprocess(images, session.metadata.preprocess)


def explain(model, inputs, method: str = "gae", target: Any = None, start_layer: int = 0, discard_ratio: float = 0.9,
            backend: str | None = None, device: str = "auto", weights: str | None = None) -> Explanation:
    """Explain a ViT classifier's decision: which patches made it say the target class.

    Args:
        model: an ``.onnx`` exported with ``--explain``; a model spec attnvis opens (``default``,
            ``timm:NAME`` with ``weights``, a Hugging Face directory, ``torchvision:NAME``, ``pkg.mod:factory``),
            exported once with ``method`` and cached; or an ``nn.Module`` (``backend="torch"`` by default).
        inputs: an image path, a list of paths, RGB uint8 arrays, or a float32 ``[B, C, H, W]`` model input.
        method: one of :data:`attnvis.explain.METHODS`.
        target: ``None`` (top-1), a class index or label name for all images, or one per image.
        start_layer: first layer of ``rollout`` / ``transformer-attribution``.
        discard_ratio: share of the smallest fused weights ``grad-rollout`` drops.
        backend: ``ort`` | ``torch`` (``None``: torch for an ``nn.Module``, else ort).
        device: ``auto`` | ``cuda`` | ``cpu``.
        weights: a local state dict for ``timm:`` / ``torchvision:`` specs.

    Returns:
        :class:`Explanation`: ``.relevance`` float32 ``[B, h, w]`` (raw), ``.target`` int64 ``[B]``,
        ``.logits`` float32 ``[B, classes]``, ``.prediction``, ``.probability``.
    """
    session = open_explainer(model, [method], backend=backend, device=device, weights=weights,
                             start_layer=start_layer, discard_ratio=discard_ratio)
    batch = _as_batch(inputs, session)
    classes = _classes(session)
    return run_explanation(session, batch, resolve_target(target, batch.shape[0], classes, session.metadata.labels),
                           method)


def _classes(session) -> int:
    """The number of classes (recorded in the metadata by the export)."""
    return int(session.metadata.extra.get("num_classes") or 0)
