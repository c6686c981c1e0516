"""The one-call API of the seed guide: :func:`visualize_attention_on_image`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from attnvis.errors import InputError, ModelError
from attnvis.metadata import ModelMetadata


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


@dataclass
class VisualizeResult:
    """What one call wrote and what the model said."""

    files: list[Path] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    provider: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    prediction: str | None = None


def safe_name(name: str) -> str:
    """A module path usable in a file name (``blocks.3.attn`` stays readable)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "attn"


def check_selection(meta: ModelMetadata, options: VisualizeOptions) -> list[int]:
    """The layers to render; one clear error for an out-of-range layer or head."""
    n = len(meta.layers)
    if options.layer is not None and not 0 <= options.layer < n:
        raise InputError(f"--layer {options.layer} is out of range: this model has {n} attention layers (valid: 0..{n - 1})")
    layers = list(range(n)) if options.layer is None else [options.layer]
    if options.head is not None:
        if meta.reduction != "none":
            raise InputError(f"--head needs per-head maps, but this model was exported with --reduce {meta.reduction}")
        heads = min(meta.layers[i].heads for i in layers)
        if not 0 <= options.head < heads:
            raise InputError(f"--head {options.head} is out of range: the layers have {heads} heads (valid: 0..{heads - 1})")
    if meta.tokens.kind != "grid" or meta.tokens.grid is None:
        raise ModelError(f"the model's keys have no patch grid (token layout {meta.tokens.kind!r}); nothing to paint on the image")
    return layers


def layer_images(attn: np.ndarray, meta: ModelMetadata, options: VisualizeOptions) -> list[tuple[str, np.ndarray]]:
    """(file suffix, grid) pairs for one layer's map of one image."""
    from attnvis.render import attention_grid, head_grids

    if options.head is None and not options.avg_heads and attn.ndim == 3:
        return [(f"_head_{h}", grid) for h, grid in enumerate(head_grids(attn, meta.tokens))]
    return [("", attention_grid(attn, meta.tokens, head=options.head))]


def layer_files(
    attn: list[np.ndarray], image: np.ndarray, meta: ModelMetadata, layers: list[int], options: VisualizeOptions,
    *, parallel: bool = True, reuse: bool = False,
) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, RGB image) pairs with the seed guide's names for one image's chosen layers.

    ``attn[i]`` is layer ``i``'s map of this image (no batch axis). Shared by
    ``visualize`` and ``batch`` so both write the same files; ``parallel=False``
    for callers that already parallelize over images. Maps are rendered as
    the pairs are consumed (overlay, then heatmap, per map). With
    ``reuse=True`` every map is rendered into the same two arrays, for a
    caller that encodes each pair before taking the next: memory already
    mapped and in cache, instead of fresh pages for every map.
    """
    from attnvis.render import render_map

    out = (np.empty_like(image), np.empty_like(image)) if reuse else None
    for i in layers:
        name = safe_name(meta.layers[i].name)
        for suffix, grid in layer_images(attn[i], meta, options):
            heatmap, overlay = render_map(grid, image, colormap=options.colormap, alpha=options.alpha, parallel=parallel,
                                          out=out)
            yield f"attn_map_layer_{i}_{name}{suffix}.{options.format}", overlay
            yield f"heatmap_layer_{i}_{name}{suffix}.{options.format}", heatmap


def render_layers(maps, image: np.ndarray, out: Path, layers: list[int], options: VisualizeOptions) -> list[Path]:
    """Write the seed guide's files for each chosen layer of batch item 0."""
    from attnvis.render.writers import encode_npy, write_bytes_atomic, write_image

    jobs = [(out / name, rgb) for name, rgb in layer_files([m[0] for m in maps.maps], image, maps.metadata, layers, options)]
    files = [write_bytes_atomic(out / f"attn_raw_layer_{i}.npy", encode_npy(maps[i][:1])) for i in layers] if options.save_raw else []
    with ThreadPoolExecutor() as pool:  # PNG encoding releases the GIL
        list(pool.map(lambda job: write_image(job[0], job[1], options.format), jobs))
    return [path for path, _ in jobs] + files


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


def visualize_attention_on_image(
    model=None,
    image_path: str | Path = "",
    output_dir: str | Path = "attn_vis",
    layer: int | None = None,
    head: int | None = None,
    avg_heads: bool = True,
    save_raw: bool = False,
    device: str = "auto",
    **options,
) -> VisualizeResult:
    """Render every (or one) layer's attention over one image, as the seed guide does.

    Args:
        model: a ``--model`` spec (``None``/"default", ``.onnx`` file, HF
            directory, ``timm:NAME``, ...), an open session
            (:func:`attnvis.runtime.open_model`), or a model object
            (``nn.Module``; run eagerly with the capture hooks, see
            :func:`attnvis.sources.module_source`).
        image_path: the image to explain.
        output_dir: folder for ``attn_map_layer_{i}_{name}.png``,
            ``heatmap_layer_{i}_{name}.png`` and ``attn_raw_layer_{i}.npy``.
        layer: only this layer (default: all).
        head: only this head (default: mean over heads).
        avg_heads: with ``False`` and no ``head``, one file per head.
        save_raw: also save each layer's captured array, (1, heads, Q, K).
        device: ``auto`` | ``cuda`` | ``cpu``.
        **options: ``colormap``, ``alpha``, ``format`` (see
            :class:`VisualizeOptions`), and for a spec ``backend``,
            ``weights``, ``threads``.
    """
    from attnvis.runtime import load_image

    session_args = {k: options.pop(k) for k in ("backend", "weights", "threads") if k in options}
    opts = replace(VisualizeOptions(layer=layer, head=head, avg_heads=avg_heads, save_raw=save_raw), **options)
    image = load_image(image_path)
    session = _session(model, device, session_args)
    layers = check_selection(session.metadata, opts)
    maps = session.run_images([image])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = render_layers(maps, image, out, layers, opts)
    return VisualizeResult(files, layers, session.provider, maps.outputs, _prediction(maps))
