"""One image: :func:`visualize_attention_on_image` renders every (or one) layer's attention over it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from attnvis.errors import InputError, ModelError
from attnvis.metadata import ModelMetadata
from attnvis.relevance import Verdict


@dataclass(frozen=True)
class VisualizeOptions:
    """How maps become files. Each field is the CLI flag of the same name."""

    layer: int | None = None  # None: every layer
    head: int | None = None  # None: mean over heads
    avg_heads: bool = True  # False without head: one file per head
    save_raw: bool = False
    colormap: str = "jet"
    alpha: float = 0.5
    format: str = "png"


HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(frozen=True)
class FigureOptions:
    """Figures beside the per-layer files. Each field is the ``visualize`` flag of the same name."""

    rollout: bool = False  # attention_rollout.png (Abnar & Zuidema), needs every layer's full maps
    discard_ratio: float = 0.0  # rollout: share of each row's weakest weights dropped
    head_fusion: str = "mean"  # rollout: how heads are fused
    contact_sheet: bool = False  # contact_sheet.png, layers x heads
    gif: bool = False  # layers.gif, one frame per layer


@dataclass
class VisualizeResult:
    """What one call wrote and what the model said.

    Attributes:
        files: every file written.
        layers: the layers rendered.
        provider: what ran the model (``CPUExecutionProvider``, ``torch-cpu`` ...).
        outputs: the model's own outputs (logits ...), batch of one.
        prediction: the predicted class name, when the model has class names.
        maps: per rendered layer, the grid drawn: float32 ``[h, w]``, or
            ``[heads, h, w]`` with ``avg_heads=False``.
        raw: per rendered layer, the map as captured for this image (``[heads, Q, K]``,
            or what the export's in-graph reduction left).
        verdict: with ``method``, the predicted class, its probability, the class
            explained and each method's relevance ``[h, w]`` (:class:`attnvis.relevance.Verdict`).
        labels: the model's class names, if it records them.
    """

    files: list[Path] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    provider: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    prediction: str | None = None
    maps: dict[int, np.ndarray] = field(default_factory=dict)
    raw: dict[int, np.ndarray] = field(default_factory=dict)
    verdict: Verdict | None = None
    labels: list[str] | None = None


def attention_asked(options: VisualizeOptions, figures: FigureOptions | None = None) -> bool:
    """Whether the options ask for attention files (a layer, a head, per-head files or a figure).

    With ``--method`` only the relevance files are written unless they do.
    """
    asked = options.layer is not None or options.head is not None or not options.avg_heads
    return asked or (figures is not None and (figures.rollout or figures.contact_sheet or figures.gif))


def check_options(options: VisualizeOptions) -> None:
    """One clear error for a bad colormap, format or alpha, before any work."""
    from attnvis.render import COLORMAPS, FORMATS

    if not (isinstance(options.alpha, (int, float)) and math.isfinite(options.alpha) and 0.0 <= options.alpha <= 1.0):
        raise InputError(f"--alpha {options.alpha} must be a number in [0, 1] (the heatmap's weight in the overlay)")
    if options.colormap not in COLORMAPS:
        raise InputError(f"--colormap {options.colormap!r} is not one of {', '.join(COLORMAPS)}")
    if options.format not in FORMATS:
        raise InputError(f"--format {options.format!r} is not one of {', '.join(FORMATS)}")


def check_figures(figures: FigureOptions, meta: ModelMetadata) -> None:
    """One clear error for figure flags the model's export cannot serve."""
    if figures.head_fusion not in HEAD_FUSIONS:
        raise InputError(f"--head-fusion {figures.head_fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")
    if not (math.isfinite(figures.discard_ratio) and 0.0 <= figures.discard_ratio < 1.0):
        raise InputError(f"--discard-ratio {figures.discard_ratio} must be in [0, 1)")
    needs_full = [flag for flag, on in (("--rollout", figures.rollout), ("--contact-sheet", figures.contact_sheet)) if on]
    windowed = [flag for flag, on in (("--rollout", figures.rollout), ("--contact-sheet", figures.contact_sheet),
                                      ("--gif", figures.gif)) if on]
    if windowed and any(layer.window is not None for layer in meta.layers):
        raise InputError(f"{' and '.join(windowed)} {'is' if len(windowed) == 1 else 'are'} not available for windowed "
                         "attention (Swin): its blocks attend "
                         "within windows at several resolutions; render the blocks one by one")
    if needs_full and meta.reduction != "none":
        raise InputError(f"{' and '.join(needs_full)} need every head's full maps, but this model was exported with "
                         f"--reduce {meta.reduction}; export it with --reduce none")


def safe_name(name: str) -> str:
    """A module path usable in a file name (``blocks.3.attn`` stays readable)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "attn"


def check_selection(meta: ModelMetadata, options: VisualizeOptions) -> list[int]:
    """The layers to render; one clear error for an out-of-range layer or head."""
    n = len(meta.layers)
    if options.layer is not None and not 0 <= options.layer < n:
        raise InputError(f"--layer {options.layer} is out of range: this model has {n} attention layers (valid: 0..{n - 1})")
    layers = list(range(n)) if options.layer is None else [options.layer]
    if not options.avg_heads and meta.reduction != "none":
        raise InputError(f"--no-avg-heads needs per-head maps, but this model was exported with --reduce {meta.reduction}; "
                         "export it with --reduce none")
    if options.head is not None:
        if meta.reduction != "none":
            raise InputError(f"--head needs per-head maps, but this model was exported with --reduce {meta.reduction}")
        heads = min(meta.layers[i].heads for i in layers)
        if not 0 <= options.head < heads:
            raise InputError(f"--head {options.head} is out of range: the layers have {heads} heads (valid: 0..{heads - 1})")
    if meta.tokens.kind != "grid" or meta.tokens.grid is None:
        raise ModelError(f"the model's keys have no patch grid (token layout {meta.tokens.kind!r}); nothing to paint on the image")
    return layers


def layer_images(attn: np.ndarray, meta: ModelMetadata, options: VisualizeOptions,
                 layer: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(file suffix, grid) pairs for one layer's map of one image.

    ``layer`` (its index in ``meta.layers``) is needed for a windowed block
    (Swin): its windows are stitched into one map at its stage's resolution.
    """
    from attnvis.render import attention_grid, head_grids

    window = None if layer is None else meta.layers[layer].window
    if window is not None:
        return _window_images(attn, window, options)
    if options.head is None and not options.avg_heads and attn.ndim == 3:
        return [(f"_head_{h}", grid) for h, grid in enumerate(head_grids(attn, meta.tokens))]
    suffix = "" if options.head is None else f"_head_{options.head}"  # runs with other heads never overwrite these
    return [(suffix, attention_grid(attn, meta.tokens, head=options.head))]


def _window_images(attn: np.ndarray, window, options: VisualizeOptions) -> list[tuple[str, np.ndarray]]:
    """:func:`layer_images` of a windowed block (``window``: its :class:`~attnvis.metadata.WindowLayout`)."""
    from attnvis.render import window_grid, window_head_grids

    if options.head is None and not options.avg_heads and attn.ndim == 4:
        return [(f"_head_{h}", grid) for h, grid in enumerate(window_head_grids(attn, window))]
    suffix = "" if options.head is None else f"_head_{options.head}"
    return [(suffix, window_grid(attn, window, head=options.head))]


def raw_map(maps, layer: int) -> np.ndarray:
    """What ``--save-raw`` writes for batch item 0: the map as captured.

    A windowed block's ``(1, windows, heads, w², w²)`` is written as its
    attention module computed it, ``(windows, heads, w², w²)`` (``B·windows``
    with B = 1); every other layer keeps its batch axis, ``(1, heads, Q, K)``.
    """
    first = maps[layer][:1]
    if maps.metadata.layers[layer].window is not None and first.ndim >= 4:
        return first.reshape(-1, *first.shape[2:])
    return first


def layer_files(
    attn: list[np.ndarray], image: np.ndarray, meta: ModelMetadata, layers: list[int], options: VisualizeOptions,
    *, parallel: bool = True, reuse: bool = False, draw=None,
) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, RGB image) pairs with the per-layer file names for one image's chosen layers.

    ``attn[i]`` is layer ``i``'s map of this image (no batch axis). Shared by
    ``visualize`` and ``batch`` so both write the same files; ``parallel=False``
    for callers that already parallelize over images. Maps are rendered as
    the pairs are consumed (overlay, then heatmap, per map). With
    ``reuse=True`` every map is rendered into the same two arrays, for a
    caller that encodes each pair before taking the next: memory already
    mapped and in cache, instead of fresh pages for every map.
    ``draw(grids, image, colormap, alpha)`` renders every map of the image at
    once instead (the GPU: ``attnvis.batch.stages``), returning (heatmap, overlay) pairs.
    """
    from attnvis.render import render_map

    if draw is not None:
        yield from _drawn_files(attn, image, meta, layers, options, draw)
        return
    out = (np.empty_like(image), np.empty_like(image)) if reuse else None
    for i in layers:
        name = safe_name(meta.layers[i].name)
        for suffix, grid in layer_images(attn[i], meta, options, i):
            heatmap, overlay = render_map(grid, image, colormap=options.colormap, alpha=options.alpha, parallel=parallel,
                                          out=out)
            yield f"attn_map_layer_{i}_{name}{suffix}.{options.format}", overlay
            yield f"heatmap_layer_{i}_{name}{suffix}.{options.format}", heatmap


def _drawn_files(attn, image, meta: ModelMetadata, layers: list[int], options: VisualizeOptions, draw):
    """:func:`layer_files` with every map drawn by one ``draw`` call."""
    named = [(i, suffix, grid) for i in layers for suffix, grid in layer_images(attn[i], meta, options, i)]
    drawn = draw([grid for _, _, grid in named], image, options.colormap, options.alpha)
    for (i, suffix, _), (heatmap, overlay) in zip(named, drawn):
        name = safe_name(meta.layers[i].name)
        yield f"attn_map_layer_{i}_{name}{suffix}.{options.format}", overlay
        yield f"heatmap_layer_{i}_{name}{suffix}.{options.format}", heatmap


def render_layers(maps, image: np.ndarray, out: Path, layers: list[int],
                  options: VisualizeOptions) -> tuple[list[Path], dict[int, np.ndarray]]:
    """Write the per-layer files for each chosen layer of batch item 0; return them and the grids drawn."""
    from attnvis.render.writers import encode_npy, write_bytes_atomic, write_image

    per_image = [m[0] for m in maps.maps]
    jobs = [(out / name, rgb) for name, rgb in layer_files(per_image, image, maps.metadata, layers, options)]
    files = [write_bytes_atomic(out / f"attn_raw_layer_{i}.npy", encode_npy(raw_map(maps, i))) for i in layers] if options.save_raw else []
    with ThreadPoolExecutor() as pool:  # PNG encoding releases the GIL
        list(pool.map(lambda job: write_image(job[0], job[1], options.format), jobs))
    grids = {}
    for i in layers:
        drawn = [grid for _, grid in layer_images(per_image[i], maps.metadata, options, i)]
        grids[i] = drawn[0] if len(drawn) == 1 else np.stack(drawn)
    return [path for path, _ in jobs] + files, grids


def write_figures(maps, image: np.ndarray, out: Path, options: VisualizeOptions, figures: FigureOptions) -> list[Path]:
    """``attention_rollout.png``, ``contact_sheet.png`` and ``layers.gif``, as ``figures`` asks."""
    from attnvis.render import attention_grid, attention_rollout, contact_sheet, layers_gif, render_map
    from attnvis.render.writers import write_image

    per_image, tokens, files = [m[0] for m in maps.maps], maps.metadata.tokens, []
    if figures.rollout:
        joint = attention_rollout(per_image, figures.head_fusion, figures.discard_ratio)  # (T, T)
        _, overlay = render_map(attention_grid(joint, tokens), image, options.colormap, options.alpha)
        files.append(write_image(out / "attention_rollout.png", overlay))
    if figures.contact_sheet:
        sheet = contact_sheet(per_image, tokens, image, colormap=options.colormap, alpha=options.alpha)
        files.append(write_image(out / "contact_sheet.png", sheet))
    if figures.gif:
        files.append(layers_gif(out / "layers.gif", per_image, tokens, image, head=options.head,
                                colormap=options.colormap, alpha=options.alpha))
    return files


def _prediction(maps) -> str | None:
    logits = maps.outputs.get("output", maps.outputs.get("logits"))
    classes = maps.metadata.extra.get("classes")
    if logits is None or not classes or logits.ndim != 2 or logits.shape[1] != len(classes):
        return None
    return classes[int(np.argmax(logits[0]))]


def _session(model, device: str, session_args: dict):
    """An open session as is; a model object on the PyTorch backend; a spec through open_model."""
    from attnvis.runtime import open_model

    if hasattr(model, "run_images"):
        return model
    if hasattr(model, "named_modules"):  # an nn.Module handed over in Python
        from attnvis.sources import module_source
        from attnvis.runtime import TorchSession

        return TorchSession(module_source(model), device=device, threads=session_args.get("threads"))
    return open_model(model, device=device, **session_args)


_SESSION_ARGS = ("backend", "weights", "threads", "random_weights")


def _split_options(options: dict) -> tuple[dict, FigureOptions, dict]:
    """``**options`` → (session arguments, figure options, render options); an unknown name is an error."""
    known = {f.name for f in fields(VisualizeOptions)} | {f.name for f in fields(FigureOptions)} | set(_SESSION_ARGS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    session = {k: options.pop(k) for k in _SESSION_ARGS if k in options}
    figures = FigureOptions(**{f.name: options.pop(f.name) for f in fields(FigureOptions) if f.name in options})
    return session, figures, options


def visualize_attention_on_image(
    model=None,
    image_path: str | Path = "",
    output_dir: str | Path = "attn_vis",
    layer: int | None = None,
    head: int | None = None,
    avg_heads: bool = True,
    save_raw: bool = False,
    device: str = "auto",
    max_pixels: int | None = None,
    method: str | list[str] | None = None,
    target: int | str | None = None,
    **options,
) -> VisualizeResult:
    """Render every (or one) layer's attention over one image.

    Args:
        model: a ``--model`` spec (``None``/"default", ``.onnx`` file, HF
            directory, ``timm:NAME``, ...), an open session
            (:func:`attnvis.runtime.open_model`), or a model object
            (``nn.Module``; run eagerly with the capture hooks, see
            :func:`attnvis.sources.module_source`).
        image_path: the image to explain.
        output_dir: folder for ``attn_map_layer_{i}_{name}.png``,
            ``heatmap_layer_{i}_{name}.png`` and ``attn_raw_layer_{i}.npy``
            (``..._head_{h}.png`` for one head).
        layer: only this layer (default: all).
        head: only this head (default: mean over heads).
        avg_heads: with ``False`` and no ``head``, one file per head.
        save_raw: also save each layer's captured array, (1, heads, Q, K);
            a windowed block's (Swin) as its module computed it, (windows, heads, w², w²).
        device: ``auto`` | ``cuda`` | ``cpu``.
        max_pixels: refuse larger images, checked on the header before
            decoding (default :data:`attnvis.runtime.images.DEFAULT_MAX_PIXELS`).
        method: explanation methods (``"gae"``, ``"gae,grad-rollout"`` or a list; see
            :data:`attnvis.explain.METHODS`): ``relevance_{method}.png`` (overlay),
            ``relevance_heatmap_{method}.png`` and, with ``save_raw``,
            ``relevance_{method}.npy`` (float32 ``[h, w]``). The attention
            files are then written only where ``layer``, ``head``,
            ``avg_heads=False`` or a figure asks for them.
        target: the class explained: ``None`` (the top-1), an index or a label name.
        **options: ``colormap``, ``alpha``, ``format`` (see
            :class:`VisualizeOptions`); ``rollout``, ``discard_ratio``,
            ``head_fusion``, ``contact_sheet``, ``gif`` (see
            :class:`FigureOptions`); for a spec ``backend``, ``weights``,
            ``threads``, ``random_weights``.

    Returns:
        The files written and the maps drawn (:class:`VisualizeResult`).
    """
    from attnvis.runtime import load_image
    from attnvis.runtime.images import DEFAULT_MAX_PIXELS

    from attnvis.relevance import parse_methods

    session_args, figures, render_args = _split_options(dict(options))
    opts = replace(VisualizeOptions(layer=layer, head=head, avg_heads=avg_heads, save_raw=save_raw), **render_args)
    check_options(opts)
    methods = parse_methods(method)
    if target is not None and not methods:
        raise InputError("--target says which class --method explains: give --method too (e.g. --method gae)")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise InputError(f"--output {output_dir} is a file; give a folder for the images (it is created if missing)")
    if methods:
        return explain_image(model, image_path, Path(output_dir), opts, figures, methods, target,
                             device=device, max_pixels=max_pixels, session_args=session_args)
    image = load_image(image_path, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    session = _session(model, device, session_args)
    layers = check_selection(session.metadata, opts)
    check_figures(figures, session.metadata)
    maps = session.run_images([image])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, grids = render_layers(maps, image, out, layers, opts)
    files += write_figures(maps, image, out, opts, figures)
    return VisualizeResult(files, layers, session.provider, maps.outputs, _prediction(maps), grids,
                           {i: maps[i][0] for i in layers})


def explain_image(model, image_path, out: Path, opts: VisualizeOptions, figures: FigureOptions, methods: tuple[str, ...],
                  target: int | str | None, *, device: str, max_pixels: int | None, session_args: dict) -> VisualizeResult:
    """:func:`visualize_attention_on_image` with ``method``: the relevance files, and the attention files asked for.

    Every check (methods in the graph, the target, the layer selection) runs
    before the image is decoded.
    """
    from attnvis.relevance import open_explainer, relevance_files, resolve_target
    from attnvis.render.writers import encode_npy, write_bytes_atomic, write_image
    from attnvis.runtime import load_image
    from attnvis.runtime.images import DEFAULT_MAX_PIXELS

    explainer = open_explainer(model, methods, device=device, **session_args)
    index = resolve_target(target, explainer.labels, explainer.classes)
    session, layers = None, []
    if attention_asked(opts, figures):
        if isinstance(model, (str, Path)) and str(model).lower().endswith(".onnx"):
            raise InputError(f"--layer/--head/--no-avg-heads and the figures need attention maps, and the explain graph "
                             f"{model} has none; give the model's spec (it is exported with and without --explain), "
                             "or drop those flags")
        session = _session(model, device, session_args)
        layers = check_selection(session.metadata, opts)
        check_figures(figures, session.metadata)
    image = load_image(image_path, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    verdict = explainer.run_images([image], index)[0]
    out.mkdir(parents=True, exist_ok=True)
    jobs = list(relevance_files(verdict, image, methods, opts.colormap, opts.alpha, opts.format))
    with ThreadPoolExecutor() as pool:  # PNG encoding releases the GIL
        files = list(pool.map(lambda job: write_image(out / job[0], job[1], opts.format), jobs))
    if opts.save_raw:
        files += [write_bytes_atomic(out / f"relevance_{m}.npy", encode_npy(verdict.relevance[m])) for m in methods]
    result = VisualizeResult(files, layers, explainer.provider, verdict=verdict, labels=explainer.labels)
    result.prediction = None if not result.labels else result.labels[verdict.prediction]
    if session is not None:
        maps = session.run_images([image])
        drawn, result.maps = render_layers(maps, image, out, layers, opts)
        result.files += drawn + write_figures(maps, image, out, opts, figures)
        result.outputs, result.raw = maps.outputs, {i: maps[i][0] for i in layers}
    return result
