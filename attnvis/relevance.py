"""Class-specific relevance as files: the explained class, one pass of an explain graph, what is written.

The methods themselves are in :mod:`attnvis.explain` (one rule each, traced into
the graph that ``attnvis export --explain`` writes). This module is what
``visualize``, ``batch``, ``render`` and the gallery share around them:

- which class is explained (:func:`resolve_target`: top-1, an index, or a label
  name where the model records its labels), checked before any work;
- one run of an explain graph over a batch (:class:`Explainer`): per image a
  :class:`Verdict` (predicted class, its probability, the class explained and
  each method's relevance over the patch grid);
- the files: ``relevance_{method}.{format}`` (overlay) and
  ``relevance_heatmap_{method}.{format}`` (heatmap), drawn by the same kernel
  as the attention files (upsampled, min-max normalized, colormap, blend).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnvis.errors import InputError, ModelError
from attnvis.metadata import ModelMetadata

TOP1 = "top1"  # --target top1: the predicted class (the default)


@dataclass
class Verdict:
    """What the model said about one image, and the relevance of the class explained.

    Attributes:
        prediction: the top-1 class index.
        probability: its softmax probability.
        target: the class explained.
        relevance: method → float32 ``[h, w]`` over the patch grid, raw (not min-max scaled).
    """

    prediction: int
    probability: float
    target: int
    relevance: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def registry_names() -> tuple[str, ...] | None:
    """The methods :data:`attnvis.explain.METHODS` knows, in its order; ``None`` without PyTorch (its rules are
    PyTorch; an exported graph runs without it and says which methods it holds)."""
    try:
        from attnvis.explain import METHODS
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "torch":
            raise
        return None
    return tuple(METHODS)


def check_known(methods: Sequence[str]) -> None:
    """One line for a method :data:`attnvis.explain.METHODS` does not know (the choices listed)."""
    known = registry_names()
    unknown = [m for m in methods if known is not None and m not in known]
    if unknown:
        raise InputError(f"--method {unknown[0]!r} is not a known method; choose from {', '.join(known)}")


def output_name(method: str) -> str:
    """The graph output (and store column) of ``method``: ``relevance_grad_rollout`` for ``grad-rollout``."""
    return "relevance_" + method.replace("-", "_")


def parse_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"gae,grad-rollout"`` (or a list) → the method names, once each; ``()`` for none.

    The names are checked where the model is opened (:func:`open_explainer`): against
    the graph's methods, and the registry's (:func:`check_known`).
    """
    if not methods:
        return ()
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    return tuple(dict.fromkeys(n for n in names if n))


def labels_of(meta: ModelMetadata) -> list[str] | None:
    """The model's class names (``attnvis.labels``, else the embedded models' ``classes``), or ``None``."""
    labels = getattr(meta, "labels", None) or meta.extra.get("classes")
    return list(labels) if labels else None


def resolve_target(target, labels: list[str] | None, classes: int) -> int:
    """The class index to explain for every image (-1: each image's top-1), one line for a bad ``--target``.

    ``target``: ``None`` or ``top1``, an index, or a label name (see
    :func:`attnvis.runtime.explain.resolve_target`, which checks it).
    """
    from attnvis.runtime.explain import resolve_target as resolve

    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    return int(resolve(target, 1, classes, labels)[0])


def class_name(index: int, labels: list[str] | None) -> str:
    """``tabby (281)`` with labels, ``class 281`` without."""
    return f"{labels[index]} ({index})" if labels and 0 <= index < len(labels) else f"class {index}"


def verdict_line(verdict: Verdict, labels: list[str] | None) -> str:
    """``predicted: circle (2), p = 0.912; explained: circle (2)`` for the command line."""
    said = f"predicted: {class_name(verdict.prediction, labels)}, p = {verdict.probability:.3f}"
    return f"{said}; explained: {class_name(verdict.target, labels)}"


def check_explain_model(meta: ModelMetadata, methods: Sequence[str], name: str) -> None:
    """One line when ``name``'s graph cannot give ``methods``: made elsewhere, exported without them."""
    if meta.extra.get("instrumented"):
        raise InputError(f"--method needs the PyTorch model: {name} is an ONNX file made elsewhere (instrumented by "
                         "attnvis), and explanations need the model's backward pass; export the PyTorch model with "
                         "'attnvis export --model SPEC --explain METHODS'")
    have = list((getattr(meta, "explain", None) or {}).get("methods") or ())
    missing = [m for m in methods if m not in have]
    if not missing:
        return
    check_known(missing)  # an unknown name first (this imports PyTorch's registry: on this error path only)
    if not have:
        raise InputError(f"--method {missing[0]}: {name} was exported without --explain; export it with "
                         f"'attnvis export --model SPEC --explain {','.join(methods)}' (or give the model's spec)")
    raise InputError(f"--method {missing[0]}: {name} was exported with --explain {','.join(have)} only; "
                     f"choose from those or export it with --explain {','.join(methods)}")


class Explainer:
    """An explanation session (:func:`attnvis.runtime.explain.open_explainer`) that gives a :class:`Verdict` per image.

    One call computes the forward pass and what every exported method needs of
    the backward pass, for a batch and one target class per image.

    Args:
        session: an ``OrtSession`` over an ``--explain`` graph, or a ``TorchExplainer``.
        methods: the methods to read (a subset of the session's).
    """

    def __init__(self, session, methods: Sequence[str]):
        self.session, self.methods = session, tuple(methods)
        self.metadata: ModelMetadata = session.metadata
        self.labels = labels_of(self.metadata)
        self.classes = _classes(session)

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def device(self) -> str:
        return self.session.device

    def set_threads(self, threads: int | None) -> None:
        """Re-open the ORT session with ``threads`` intra-op threads (the batch's core split)."""
        if hasattr(self.session, "set_threads"):
            self.session.set_threads(threads)

    def run(self, batch: np.ndarray, targets: np.ndarray) -> list[Verdict]:
        """``batch`` float32 ``[B, C, H, W]`` (preprocessed), ``targets`` int64 ``[B]`` (-1: top-1) → a verdict per image."""
        from attnvis.runtime.explain import run_explanation

        ex = run_explanation(self.session, batch, np.asarray(targets, np.int64), self.methods[0])
        probability, prediction = ex.probability, ex.prediction
        return [Verdict(int(prediction[b]), float(probability[b]), int(ex.target[b]),
                        {m: np.ascontiguousarray(ex.maps[m][b]) for m in self.methods}) for b in range(len(batch))]

    def run_images(self, images: list[np.ndarray], target: int) -> list[Verdict]:
        """RGB uint8 images, preprocessed as the metadata says, all explained for ``target`` (-1: top-1)."""
        from attnvis.runtime.images import preprocess

        return self.run(preprocess(images, self.metadata.preprocess), np.full(len(images), target, np.int64))


def _classes(session) -> int:
    """The number of classes: recorded by the export, else the graph's fixed ``[B, C]`` first output."""
    recorded = session.metadata.extra.get("num_classes")
    if recorded:
        return int(recorded)
    labels = labels_of(session.metadata)
    if labels:
        return len(labels)
    ort = getattr(session, "session", None)
    shape = ort.get_outputs()[0].shape if ort is not None else ()
    return shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else 0


def relevance_names(method: str, fmt: str) -> tuple[str, str]:
    """(overlay, heatmap) file names of one method."""
    return f"relevance_{method}.{fmt}", f"relevance_heatmap_{method}.{fmt}"


def relevance_files(verdict: Verdict, image: np.ndarray, methods: Sequence[str], colormap: str, alpha: float, fmt: str,
                    *, parallel: bool = True, out=None) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, RGB) pairs of each method's overlay and heatmap over ``image``, as rendered lazily.

    The same kernel and normalization as the attention files: the map
    upsampled to the image, min-max normalized, colored and blended.
    """
    from attnvis.render import render_map

    for method in methods:
        heatmap, overlay = render_map(verdict.relevance[method], image, colormap=colormap, alpha=alpha,
                                      parallel=parallel, out=out)
        over_name, heat_name = relevance_names(method, fmt)
        yield over_name, overlay
        yield heat_name, heatmap


def encoded_relevance(key: str, verdict: Verdict, image: np.ndarray, methods: Sequence[str], options,
                      ) -> tuple[list[tuple[str, bytes]], list[dict], np.ndarray]:
    """One image's relevance files, encoded, for ``batch --save images``.

    Args:
        key: the image's folder under the output.
        options: the :class:`attnvis.visualize.VisualizeOptions` (colormap, alpha, format).

    Returns:
        ((path, bytes) per file; ``{"method", "overlay", "heatmap"}`` per method for the manifest;
        the first method's overlay, for the gallery thumbnail).
    """
    from attnvis.render.writers import encode_image

    files, entries, first = [], [], None
    named = relevance_files(verdict, image, methods, options.colormap, options.alpha, options.format, parallel=False,
                            out=(np.empty_like(image), np.empty_like(image)))
    for method in methods:
        (over_name, overlay), (heat_name, heat) = next(named), next(named)
        first = overlay.copy() if first is None else first
        files += [(f"{key}/{over_name}", encode_image(overlay, options.format)),
                  (f"{key}/{heat_name}", encode_image(heat, options.format))]
        entries.append({"method": method, "overlay": files[-2][0], "heatmap": files[-1][0]})
    return files, entries, first


def require_grid(meta: ModelMetadata, name: str) -> None:
    """Explanations need a patch grid with a CLS row: one line for windowed or grid-less models."""
    if any(layer.window is not None for layer in meta.layers):
        raise ModelError(f"--method: {name} has windowed attention (Swin): no CLS row exists to explain a class with")
    if meta.tokens.kind != "grid" or meta.tokens.grid is None:
        raise ModelError(f"--method: {name} has no patch grid (token layout {meta.tokens.kind!r}); nothing to paint")


def open_explainer(model, methods: Sequence[str], *, device: str = "auto", backend: str | None = None,
                   weights: str | None = None, threads: int | None = None, random_weights: bool = False) -> Explainer:
    """An :class:`Explainer` for ``model``: an ``.onnx`` exported with ``--explain``, the embedded default
    model (its explain graph ships with the package: no PyTorch needed), a spec exported once and cached,
    or an ``nn.Module``.

    Raises:
        InputError: an ONNX file made elsewhere, one exported without the methods asked for, an unknown method.
        ModelError: a model without a CLS row over a patch grid (windowed attention, no grid).
    """
    from attnvis.runtime import OrtSession

    name = str(model if model is not None else "default")
    is_module = model is not None and not isinstance(model, (str, Path))
    backend = backend or ("torch" if is_module else "ort")  # an nn.Module runs eagerly unless ORT is asked for
    path = _graph_path(model, methods) if backend == "ort" and not is_module else None
    if path is not None:
        session = _onnx_session(path, name, device, threads)
        require_grid(session.metadata, name)
        check_explain_model(session.metadata, methods, name)
        return Explainer(session, methods)
    check_known(methods)
    from attnvis.runtime.explain import explained_path, open_explainer as open_core

    if backend == "ort" and not is_module:  # a spec: its --explain export, cached; opened with our threads
        from attnvis.explain.trace import Options

        path = explained_path(model, list(methods), Options(), weights=weights, random_weights=random_weights)
        session = OrtSession(path, device=device, threads=threads)
    else:
        session = open_core(model, list(methods), backend=backend, device=device, weights=weights,
                            random_weights=random_weights)
    return Explainer(session, methods)


def _graph_path(model, methods: Sequence[str]) -> str | None:
    """The ``.onnx`` to open as it is: the file given, or the default model's shipped explain graph when it
    holds every method asked for; ``None`` for a spec to export."""
    if isinstance(model, (str, Path)) and str(model).lower().endswith(".onnx"):
        return str(model)
    if model in (None, "", "default"):
        from attnvis.models import default_explain_path, default_explain_methods

        if set(methods) <= set(default_explain_methods()):
            return str(default_explain_path())
    return None


def _onnx_session(path: str, name: str, device: str, threads: int | None):
    """An ORT session over ``path``; an ONNX file without attnvis metadata is refused as made elsewhere."""
    from attnvis.runtime import OrtSession

    try:
        return OrtSession(path, device=device, threads=threads)
    except ModelError as err:
        if "not an attnvis model" not in str(err):
            raise
        raise InputError(f"--method needs the PyTorch model: {name} is an ONNX file made elsewhere, and explanations "
                         "need the model's backward pass; export the PyTorch model with "
                         "'attnvis export --model SPEC --explain METHODS'") from None
