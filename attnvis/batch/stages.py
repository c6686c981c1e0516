"""The batch stages as plain functions: infer a batch, render one image, write its files.

Each stage takes and returns picklable values (arrays, dataclasses, bytes) and
keeps no state besides the model session passed in, so an engine only decides
where the stages run: threads in one process (:mod:`attnvis.batch.local`) or
tasks and actors on a cluster. The output tree and file bytes depend only on
the inputs and :class:`RenderPlan`, never on the engine or on batch boundaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from attnvis.relevance import Verdict, encoded_relevance
from attnvis.visualize import VisualizeOptions, attention_asked, check_selection, layer_files
from attnvis.batch.decode import DEFAULT_MAX_PIXELS, Decoded, decode, probe
from attnvis.batch.inputs import Item
from attnvis.errors import InputError
from attnvis.metadata import ModelMetadata, Preprocess

THUMB_WIDTH = 192  # gallery thumbnails: the last layer's overlay, JPEG
THUMB_NAME = "thumbnail.jpg"  # beside the per-layer files, so an image folder is self-contained
SAVE_MODES = ("images", "maps", "both")  # --save: the per-layer files, the map store (attnvis.batch.store), or both
STORE_ROW = "_store_row"  # a record's store row on its way to the driver (never written to the manifest)
_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class RenderPlan:
    """Everything that decides an image's output files, fixed for a run.

    Attributes:
        options: the ``visualize`` rendering options.
        layers: the layers to render.
        metadata: the model's metadata (layer names, token layout).
        model: how the model was named (for the run's fingerprint).
        thumbs: also write a gallery thumbnail per image.
        save: ``--save``: ``images`` (the per-layer files), ``maps`` (the map store
            and a thumbnail) or ``both``.
        store_heads: ``--store-heads``: per-head rows in the store too.
        renderer: ``cpu`` (the numba kernels on the workers) or ``cuda`` (the numba-cuda
            kernel, :func:`attnvis.render.gpu.render_maps_cuda`: the same bytes, so not in the fingerprint).
        methods: ``--method``: the explanation methods (``relevance_{method}`` files or store columns).
        target: ``--target``: the class explained, -1 for each image's top-1 class.
        attention: whether the run has attention maps (an explain graph alone has none: no layer rows then).
    """

    options: VisualizeOptions
    layers: tuple[int, ...]
    metadata: ModelMetadata
    model: str = "default"
    thumbs: bool = True
    save: str = "images"
    store_heads: bool = False
    renderer: str = "cpu"
    methods: tuple[str, ...] = ()
    target: int = -1
    attention: bool = True

    @cached_property  # asked once per image (manifest lines, --resume checks)
    def fingerprint(self) -> str:
        """Hash of what changes the files: ``--resume`` only trusts records with the same one."""
        doc = {"options": asdict(self.options), "layers": self.layers, "model": self.model, "thumbs": self.thumbs,
               "layer_names": [layer.name for layer in self.metadata.layers]}
        if self.save != "images":  # only then: an images run keeps the fingerprint it always had
            doc.update(save=self.save, store_heads=self.store_heads)
        if self.methods:
            doc.update(methods=self.methods, target=self.target, attention=self.attention)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


    @cached_property
    def store_layout(self):
        """The :class:`attnvis.batch._store_layout.StoreLayout` of this run's rows, or ``None`` for ``--save images``."""
        from attnvis.batch._store_layout import layout_for

        return None if self.save == "images" else layout_for(self.metadata, self.store_heads, self.thumbs and self.save == "maps",
                                                             self.methods, self.attention)


def make_plan(meta: ModelMetadata, options: VisualizeOptions, model: str | None, thumbs: bool = True,
              save: str = "images", store_heads: bool = False, methods: tuple[str, ...] = (), target: int = -1,
              attention: bool = True) -> RenderPlan:
    """Check the selection and the store options against the model (one clear error each) and fix the plan.

    With ``methods`` the attention files are rendered only where the options ask
    for layers (``--layer``, ``--head``, ``--no-avg-heads``), as ``visualize`` does.
    ``attention=False``: the run has no attention maps (an explain graph alone).
    """
    if not attention and (attention_asked(options) or store_heads):
        raise InputError(f"{'--store-heads' if store_heads else '--layer/--head/--no-avg-heads'} needs attention maps, "
                         f"and the explain graph {model} has none; give the model's spec (it is exported with and "
                         "without --explain), or drop the flag")
    layers = tuple(check_selection(meta, options)) if not methods or attention_asked(options) else ()
    if save not in SAVE_MODES:
        raise InputError(f"--save {save!r} is not one of {', '.join(SAVE_MODES)}")
    if store_heads and save == "images":
        raise InputError("--store-heads adds per-head rows to the map store: give --save maps or --save both with it")
    if store_heads and meta.reduction != "none":
        raise InputError(f"--store-heads needs per-head maps, but this model was exported with --reduce {meta.reduction}")
    return RenderPlan(options, layers, meta, model or "default", thumbs, save, store_heads, methods=tuple(methods),
                      target=target, attention=attention)


@dataclass
class Rendered:
    """One image's encoded files, ready to write.

    Attributes:
        key: the image's key (its output folder under the output root).
        files: (path relative to the output root, encoded bytes), in a fixed order.
        maps: one entry per rendered map for the manifest and gallery:
            ``{"layer", "head", "overlay", "heatmap"}`` (``head`` None is the mean).
        size: the image's (height, width).
        prediction: the model's top class, when it has class names.
        verdict: with ``--method``, the classes and relevance maps (:class:`attnvis.relevance.Verdict`).
        relevance: one entry per method's files for the manifest and gallery: ``{"method", "overlay", "heatmap"}``.
    """

    key: str
    files: list[tuple[str, bytes]]
    maps: list[dict]
    size: tuple[int, int]
    prediction: str | None = None
    raw: list[str] = field(default_factory=list)
    thumb: str | None = None
    head_grids: dict | None = None
    thumbnail: bytes | None = None  # --save maps: the thumbnail's JPEG, for the store (no file)
    verdict: Verdict | None = None
    relevance: list[dict] = field(default_factory=list)


def infer(session, tensors: list[np.ndarray], batch_size: int, explain: tuple | None = None,
          ) -> tuple[list[list[np.ndarray]], list[str | None], list[Verdict | None]]:
    """Run preprocessed images through the model as one batch.

    The batch is zero-padded to ``batch_size`` so that every image is computed
    in a batch of the same shape: results then never depend on where the
    batch boundaries fell (a resumed run writes the same bytes). The engines
    therefore never ask for more than the run's images: six images at
    ``--batch-size 100000`` are one batch of six.

    Args:
        session: the attention session, or ``None`` when only ``explain`` runs (no layer asked for).
        explain: ``(explainer, target)`` for ``--method``: an :class:`attnvis.relevance.Explainer`
            and the class explained (-1: each image's top-1).

    Returns:
        (per image, per layer map without batch axis; per image prediction or None;
        per image :class:`attnvis.relevance.Verdict`, or None without ``explain``).
    """
    n = len(tensors)
    batch = np.zeros((max(n, batch_size), *tensors[0].shape), np.float32)  # (B, C, h, w)
    batch[:n] = np.stack(tensors)
    return infer_batch(session, batch, n, explain)


def infer_batch(session, batch, n: int, explain: tuple | None = None,
                ) -> tuple[list[list[np.ndarray]], list[str | None], list[Verdict | None]]:
    """:func:`infer` of a batch already made (zero-padded; a CUDA tensor from :mod:`attnvis.batch.feed`) of ``n`` images."""
    verdicts: list[Verdict | None] = [None] * n
    if explain is not None:
        explainer, target = explain
        verdicts = explainer.run(batch, np.full(len(batch), target, np.int64))[:n]
    if session is None:
        labels = explain[0].labels
        return [[] for _ in range(n)], [labels[v.prediction] if labels else None for v in verdicts], verdicts
    maps = session.run(batch)
    per_image = [[np.ascontiguousarray(layer[b]) for layer in maps.maps] for b in range(n)]
    return per_image, predictions(maps, n), verdicts


def predictions(maps, n: int) -> list[str | None]:
    logits = maps.outputs.get("output", maps.outputs.get("logits"))
    classes = maps.metadata.extra.get("classes")
    if logits is None or not classes or logits.ndim != 2 or logits.shape[1] != len(classes):
        return [None] * n
    return [classes[int(i)] for i in np.argmax(logits[:n], axis=1)]


def _heads(attn: np.ndarray, options: VisualizeOptions, windowed: bool = False) -> list[int | None]:
    """The heads :func:`attnvis.visualize.layer_images` renders for one layer (``None``: the mean).

    Per-head maps are ``[heads, Q, K]``, or ``[windows, heads, w², w²]`` for a windowed block.
    """
    if options.head is None and not options.avg_heads and attn.ndim == (4 if windowed else 3):
        return list(range(attn.shape[1 if windowed else 0]))
    return [options.head]


def _raw(attn: np.ndarray, windowed: bool) -> np.ndarray:
    """What ``--save-raw`` writes, as :func:`attnvis.visualize.raw_map` does.

    ``(1, heads, Q, K)``; a windowed block's ``(windows, heads, w², w²)`` as its module computed it.
    """
    return attn if windowed and attn.ndim >= 3 else attn[None]


def render(key: str, image: np.ndarray, attn: list[np.ndarray], plan: RenderPlan, prediction: str | None = None,
           size: tuple[int, int] | None = None, verdict: Verdict | None = None) -> Rendered:
    """Render and encode one image's files (the CPU-heavy stage; releases the GIL).

    Args:
        key: the image's key.
        image: RGB uint8 (H, W, 3).
        attn: per layer, this image's map (no batch axis).
        plan: the run's plan.
        prediction: the model's class for the image, if any.
        size: the original image's (H, W), where ``image`` is only the thumbnail's pixels (``--save maps``).
        verdict: with ``--method``, the image's classes and relevance maps.
    """
    from attnvis.render.writers import encode_image, encode_npy

    if plan.save == "maps":
        return _render_thumbnail_only(key, image, attn, plan, prediction, size or image.shape[:2], verdict)
    opts = plan.options
    draw = _draw_cuda if plan.renderer == "cuda" else None
    named = iter(layer_files(attn, image, plan.metadata, list(plan.layers), opts, parallel=False, reuse=True, draw=draw))
    files, maps, last_overlay = [], [], None
    windowed = [layer.window is not None for layer in plan.metadata.layers]
    for i, h in ((i, h) for i in plan.layers for h in _heads(attn[i], opts, windowed[i])):  # layer_files' order
        (over_name, last_overlay), (heat_name, heat) = next(named), next(named)
        files += [(f"{key}/{over_name}", encode_image(last_overlay, opts.format)),  # encoded before the next
                  (f"{key}/{heat_name}", encode_image(heat, opts.format))]  # map overwrites the two arrays
        maps.append({"layer": i, "head": h, "overlay": files[-2][0], "heatmap": files[-1][0]})
    out = Rendered(key, files, maps, tuple(int(s) for s in image.shape[:2]), prediction,
                   head_grids=gallery_grids(attn, plan), verdict=verdict)
    if plan.methods:  # the relevance files after the layers'; the first method's overlay makes the thumbnail
        encoded, out.relevance, last_overlay = encoded_relevance(key, verdict, image, plan.methods, opts)
        files += encoded
    if opts.save_raw:
        for i in plan.layers:
            out.raw.append(f"{key}/attn_raw_layer_{i}.npy")
            files.append((out.raw[-1], encode_npy(_raw(attn[i], windowed[i]))))  # as visualize writes
        for method in plan.methods:
            out.raw.append(f"{key}/relevance_{method}.npy")
            files.append((out.raw[-1], encode_npy(verdict.relevance[method])))
    if plan.thumbs and last_overlay is not None:
        out.thumb = f"{key}/{THUMB_NAME}"
        files.append((out.thumb, _thumbnail(last_overlay)))
    return out


def _render_thumbnail_only(key: str, image: np.ndarray, attn: list[np.ndarray], plan: RenderPlan,
                           prediction: str | None, size: tuple[int, int], verdict: Verdict | None = None) -> Rendered:
    """``--save maps``: no files; the gallery thumbnail goes to the store.

    ``image`` is already the thumbnail's pixels (:func:`decode_item` shrinks it:
    ~50x less work than drawing on the whole image).

    No per-image folder then: a million images make the store's few hundred
    shards, not a million folders of one thumbnail each.
    """
    from attnvis.visualize import layer_images
    from attnvis.render import render_map

    out = Rendered(key, [], [], tuple(size), prediction, verdict=verdict)
    if plan.thumbs:
        image = _shrink(image)  # decoded on the GPU: the whole image came back (a no-op for the CPU's thumbnail pixels)
        if plan.methods:  # the first method's relevance, as images mode
            grid = verdict.relevance[plan.methods[0]]
        else:
            last = plan.layers[-1]
            grid = layer_images(attn[last], plan.metadata, plan.options, last)[-1][1]  # the last map, as images mode
        overlay = render_map(grid, image, plan.options.colormap, plan.options.alpha, parallel=False)[1]
        out.thumbnail = _encode_thumb(overlay)
    return out


def _draw_cuda(grids: list[np.ndarray], image, colormap: str, alpha: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every map of one image on the GPU, one launch per grid shape; 8-bit (heatmap, overlay) pairs back on the host.

    ``image``: a CUDA array (decoded there) or a host one (uploaded). The bytes equal ``render_map``'s.
    """
    from attnvis.render.gpu import render_maps_cuda, sim_threads

    out: list = [None] * len(grids)
    for shape in dict.fromkeys(g.shape for g in grids):  # windowed models: a grid size per stage
        chosen = [i for i, g in enumerate(grids) if g.shape == shape]
        heat, over = render_maps_cuda(np.stack([grids[i] for i in chosen]), image, colormap, alpha, threads=sim_threads())
        for j, i in enumerate(chosen):
            out[i] = (heat[j], over[j])
    return out


def gallery_grids(attn: list[np.ndarray], plan: RenderPlan) -> dict | None:
    """Every head's grid of each rendered layer, 8-bit and base64, for the gallery's head previews.

    A few hundred bytes per layer (a 12×12 grid × heads) let the gallery show
    any head without writing its files. ``None`` when the maps have no head axis.
    """
    import base64

    from attnvis.render import head_grids

    if any(attn[i].ndim != 3 or plan.metadata.layers[i].window is not None for i in plan.layers):
        return None  # reduced in-graph: no heads to show; windowed: no one grid for every layer
    layers = {}
    for i in plan.layers:
        flat = head_grids(attn[i], plan.metadata.tokens).reshape(attn[i].shape[0], -1)  # (heads, h * w)
        lo = flat.min(axis=1, keepdims=True)
        span = np.maximum(flat.max(axis=1, keepdims=True) - lo, np.float32(1e-12))
        levels = np.round(255 * (flat - lo) / span).astype(np.uint8)  # each head on its own 0..255 scale
        layers[str(i)] = [base64.b64encode(level.tobytes()).decode("ascii") for level in levels]
    return {"grid": list(plan.metadata.tokens.grid), "layers": layers}


def _thumbnail(rgb: np.ndarray) -> bytes:
    """The gallery's JPEG of an overlay, THUMB_WIDTH wide."""
    return _encode_thumb(_shrink(rgb))


def _encode_thumb(rgb: np.ndarray) -> bytes:
    from attnvis.render import encode_image

    return encode_image(rgb, "jpg", 85)


def _shrink(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` at most THUMB_WIDTH wide.

    Halved with INTER_AREA while at least twice the target (OpenCV's fast
    integer path), then one bilinear step: ~8x less CPU than one INTER_AREA
    resize by a fractional factor, for the same look at thumbnail size.
    """
    import cv2

    height, width = rgb.shape[:2]
    if width > THUMB_WIDTH:
        while rgb.shape[1] >= 2 * THUMB_WIDTH and rgb.shape[0] >= 2:
            rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
    return rgb


def warm_up(options: VisualizeOptions) -> None:
    """Load what the first image would otherwise load mid-run: numba's cached kernels, OpenCV, PIL's decoders.

    That is about 0.9 s here, once; :func:`attnvis.batch.run.run_batch` does it
    while the model opens, instead of with every thread waiting on the first
    image's render.
    """
    from attnvis.render import render_map
    from attnvis.render.writers import encode_image
    from attnvis.runtime.images import decode_image, preprocess

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    heatmap, overlay = render_map(rng.random((2, 2), dtype=np.float32), image, options.colormap, options.alpha, parallel=False)
    for rgb in (heatmap, overlay):  # smooth and noisy: both PNG coders
        encode_image(rgb, options.format)
    jpeg = encode_image(overlay, "jpg")  # OpenCV's JPEG encoder (thumbnails), then PIL's header check and decoding
    probe(jpeg, "warm-up", DEFAULT_MAX_PIXELS)
    preprocess([decode_image(jpeg)], Preprocess(size=(8, 8), mean=(0.0,) * 3, std=(1.0,) * 3))  # PIL's resampling


def is_tmp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`attnvis.render.writers.write_bytes_atomic`."""
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def write_files(root: Path, files: list[tuple[str, bytes]]) -> int:
    """Write each file under ``root`` to a temporary name, then rename it into place.

    A crash leaves at most temporary files (dot-names ending ``.tmp``, removed
    by :func:`clean_tmp`), never a half-written output. Returns bytes written.
    """
    from attnvis.render.writers import write_atomic

    base, written, made = os.fspath(root), 0, set()
    for rel, data in files:
        path = f"{base}/{rel}"
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        write_atomic(path, data)
        written += len(data)
    return written


def clean_tmp(folder: Path) -> int:
    """Remove temporary files a killed run left in ``folder`` (not recursive); return how many."""
    removed = 0
    if folder.is_dir():
        for entry in os.scandir(folder):
            if entry.is_file() and is_tmp_name(entry.name):
                os.unlink(entry.path)
                removed += 1
    return removed


def ok_record(source: str, rendered: Rendered, plan: RenderPlan) -> dict:
    """The manifest line of a rendered image (see :mod:`attnvis.batch.manifest`)."""
    from attnvis.batch.manifest import file_check

    record = {"key": rendered.key, "source": source, "status": "ok", "error": None,
              "files": [rel for rel, _ in rendered.files], "checks": [file_check(data) for _, data in rendered.files],
              "maps": rendered.maps, "raw": rendered.raw,
              "thumb": rendered.thumb, "size": list(rendered.size), "prediction": rendered.prediction,
              "head_grids": rendered.head_grids,
              "plan": plan.fingerprint, "time": round(time.time(), 3)}
    if rendered.verdict is not None:  # --method: the classes, and the relevance files (none with --save maps)
        v = rendered.verdict
        record["explained"] = {"target": v.target, "prediction": v.prediction, "probability": round(v.probability, 6),
                               "methods": list(plan.methods), "files": rendered.relevance}
    return record


def failed_record(source: str, key: str, error: str, plan: RenderPlan) -> dict:
    """The manifest line of an image that could not be rendered; ``error`` is one line."""
    return {"key": key, "source": source, "status": "failed", "error": " ".join(error.split()),
            "files": [], "plan": plan.fingerprint, "time": round(time.time(), 3)}


# --------------------------------------------------------------------------- failure semantics shared by engines


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def decode_item(item: Item, plan: RenderPlan, max_pixels: int) -> Decoded | dict:
    """Decode one item for the model; a bad file becomes its failed record instead of an exception."""
    try:
        decoded = decode(item.path, item.key, plan.metadata.preprocess, max_pixels)
    except InputError as err:
        return failed_record(item.path, item.key, str(err), plan)
    except Exception as err:  # noqa: BLE001 - OpenCV/PIL internals (MemoryError too): record it, go on
        return failed_record(item.path, item.key, f"{item.key}: cannot decode ({type(err).__name__}: {_one_line(err)})", plan)
    if plan.save == "maps":  # the render stage draws only the thumbnail: keep its pixels, not the whole image
        small = np.ascontiguousarray(_shrink(decoded.image)) if plan.thumbs else np.empty((0, 0, 3), np.uint8)
        decoded = Decoded(small, decoded.tensor, decoded.size, decoded.check)
    return decoded


def store_row(item: Item, decoded: Decoded, attn: list[np.ndarray], plan: RenderPlan, rollout: np.ndarray | None = None,
              verdict: Verdict | None = None):
    """The image's map-store row, without its thumbnail (``None`` for ``--save images``, or a maps error).

    ``rollout``: the rollout row where it was computed with the maps (on the GPU:
    :mod:`attnvis.batch._device_maps`, whose ``attn`` are query rows, not whole maps).

    An engine calls it where the maps were just computed, while they are still
    in that core's cache: the rollout reads every layer's full maps once.

    Returns:
        (row or None, one-line error or None).
    """
    from attnvis.batch._store_layout import make_row

    if plan.store_layout is None:
        return None, None
    try:
        return make_row(item.key, item.path, decoded.size, attn, plan.metadata, plan.store_layout, rollout=rollout,
                        verdict=verdict), None
    except ValueError as err:
        return None, f"{item.key}: cannot render ({_one_line(err)})"


def render_item(item: Item, decoded: Decoded, attn: list[np.ndarray], prediction: str | None, plan: RenderPlan, root: Path,
                stored: tuple | None = None, verdict: Verdict | None = None) -> dict:
    """Render, encode and write one image (temporary names, then renames); return its manifest record.

    ``OSError`` (disk full, permissions) propagates: it would fail every image.
    With a map store, the record carries the image's row under :data:`STORE_ROW`:
    ``stored`` (what :func:`store_row` returned where the maps were made), or made here.
    """
    row, error = stored if stored is not None else store_row(item, decoded, attn, plan, verdict=verdict)
    if error is not None:
        return failed_record(item.path, item.key, error, plan)
    try:
        rendered = render(item.key, decoded.image, attn, plan, prediction, decoded.size, verdict)
    except ValueError as err:  # e.g. non-finite attention from the model for this image
        return failed_record(item.path, item.key, f"{item.key}: cannot render ({_one_line(err)})", plan)
    if row is not None:
        row.thumbnail = rendered.thumbnail
    if rendered.files:
        clean_tmp(root / item.key)  # leftovers of a killed run
        write_files(root, rendered.files)
    record = ok_record(item.path, rendered, plan)
    if decoded.check is not None:
        record["source_check"] = decoded.check  # attnvis render: the source is still the file the maps were made from
    if row is not None:  # the driver writes it to the store, then the record to the manifest
        record[STORE_ROW] = row
    return record
