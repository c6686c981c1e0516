"""``attnvis render OUT --output DIR``: the per-layer files of a batch's images, from its map store.

The stored rows are the grids ``--save images`` renders
(:func:`attnvis.batch._store_layout.make_row`), and the images are decoded from the
recorded sources as the batch decodes them, so every file written here
equals, byte for byte, the file ``attnvis batch --save images`` writes for
the same inputs and flags, under the same relative path
(``DIR/<key>/attn_map_layer_{i}_{name}.png``, ``heatmap_layer_...``).

A store made with ``batch --method`` holds each method's relevance map: those
are drawn as ``relevance_{method}.png`` and ``relevance_heatmap_{method}.png``,
and, as ``--save images`` with ``--method`` does, the attention files only
where ``--layer``, ``--head`` or ``--no-avg-heads`` ask for them.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnvis.visualize import VisualizeOptions, attention_asked, check_options, check_selection, safe_name
from attnvis.errors import InputError
from attnvis.metadata import PROP_PREFIX, ModelMetadata


@dataclass
class RenderSummary:
    """What :func:`render_store` did: files written, the images whose source could not be read (or changed),
    and the images the manifest records as done that the store lacks (``absent``)."""

    rendered: int = 0
    files: int = 0
    output: Path = Path(".")
    missing: list[tuple[str, str]] = field(default_factory=list)  # (key, one-line reason)
    absent: int = 0
    notes: list[str] = field(default_factory=list)  # what opening the store found (see MapStore.notes)

    @property
    def exit_code(self) -> int:
        from attnvis.batch.run import EXIT_SOME_FAILED

        return EXIT_SOME_FAILED if self.missing or self.absent else 0

    def text(self) -> str:
        lines = [f"{self.rendered} images rendered ({self.files} files) into {self.output}"
                 + (f"; {len(self.missing)} not rendered" if self.missing else "")]
        lines += [f"not rendered: {reason}" for _, reason in self.missing[:10]]
        if len(self.missing) > 10:
            lines.append(f"... and {len(self.missing) - 10} more images whose source cannot be read")
        return "\n".join(lines + self.notes)


def _same_model(a: ModelMetadata, b: ModelMetadata) -> bool:
    def doc(meta: ModelMetadata) -> dict:
        return {k: json.loads(v) for k, v in meta.to_props().items() if k != PROP_PREFIX + "version"}

    return doc(a) == doc(b)


def check_model(store, model: str) -> None:
    """One clear error when ``--model`` is not the model whose maps the store holds."""
    from attnvis.runtime import open_model

    meta = open_model(model, device="cpu", threads=1).metadata
    if not _same_model(meta, store.metadata):
        have = store.metadata
        raise InputError(f"{store.root}: the map store holds maps of another model ({have.source or 'unnamed'}: "
                         f"{len(have.layers)} layers, grid {have.tokens.grid}) than --model {model} "
                         f"({meta.source or 'unnamed'}: {len(meta.layers)} layers, grid {meta.tokens.grid}); "
                         "give the model that made the store, or leave --model out")


def _check_heads(store, options: VisualizeOptions) -> None:
    if options.save_raw:
        raise InputError("--save-raw needs the full captured maps, which a map store does not keep; "
                         "use attnvis batch --save images --save-raw")
    per_head = options.head is not None or (not options.avg_heads and store.metadata.reduction == "none")
    if per_head and store.layout.heads is None:
        flag = f"--head {options.head}" if options.head is not None else "--no-avg-heads"
        raise InputError(f"{flag} needs per-head maps, but {store.root} stored head means only; "
                         "run attnvis batch again with --store-heads")


def _grids(store, key: str, layer: int, options: VisualizeOptions) -> list[tuple[str, np.ndarray]]:
    """(file suffix, grid) of one layer, as :func:`attnvis.visualize.layer_images` gives them (a test keeps them equal)."""
    if options.head is not None:
        return [(f"_head_{options.head}", store.heads(key)[layer][options.head])]
    if not options.avg_heads and store.layout.heads is not None:
        return [(f"_head_{h}", grid) for h, grid in enumerate(store.heads(key)[layer])]
    return [("", store[key][layer])]


def render_key(store, key: str, layers: list[int], options: VisualizeOptions, target: Path,
               methods: tuple[str, ...] = ()) -> int:
    """Render and write one stored image's files; return how many. Raises InputError if its source cannot be read."""
    from attnvis.batch.decode import decode
    from attnvis.batch.stages import clean_tmp, write_files
    from attnvis.relevance import relevance_files
    from attnvis.render import render_map
    from attnvis.render.writers import encode_image

    decoded = decode(store.source(key), f"{key} (source {store.source(key)})", None, max_pixels=2**62)
    image = decoded.image
    if image.shape[:2] != store.size(key):
        raise InputError(f"{key}: its source {store.source(key)} is now {image.shape[1]}x{image.shape[0]}, "
                         f"not the {store.size(key)[1]}x{store.size(key)[0]} image the maps were made from")
    _check_source(store, key, decoded.check)
    files, out = [], (np.empty_like(image), np.empty_like(image))
    for i in layers:
        name = safe_name(store.metadata.layers[i].name)
        for suffix, grid in _grids(store, key, i, options):
            heat, over = render_map(grid, image, options.colormap, options.alpha, parallel=False, out=out)
            files += [(f"{key}/attn_map_layer_{i}_{name}{suffix}.{options.format}", encode_image(over, options.format)),
                      (f"{key}/heatmap_layer_{i}_{name}{suffix}.{options.format}", encode_image(heat, options.format))]
    if methods:
        verdict = store.verdict(key)
        for name, rgb in relevance_files(verdict, image, methods, options.colormap, options.alpha, options.format,
                                         parallel=False, out=out):
            files.append((f"{key}/{name}", encode_image(rgb, options.format)))
    clean_tmp(target / key)
    write_files(target, files)
    return len(files)


def _check_source(store, key: str, check: list[int]) -> None:
    """Refuse a source that is not the file the maps were made from: its size or CRC-32 differ from the manifest's."""
    was = store.source_check(key)
    if was is None or (check[0] == was[0] and check[2] == was[2]):
        return
    what = (f"{check[0]:,} bytes, was {was[0]:,}" if check[0] != was[0] else
            f"the same {check[0]:,} bytes long, other content: its CRC-32 differs")
    raise InputError(f"{key}: its source {store.source(key)} changed since the batch stored its maps ({what}); "
                     "its maps are not drawn over another picture: put the file back, or run attnvis batch on it again")


def check_target(output: Path, target: Path) -> None:
    """Refuse an ``--output`` that is the batch's own folder or inside it: its files would be overwritten."""
    root, into = Path(output).resolve(), Path(target).resolve()
    if into == root or root in into.parents:
        raise InputError(f"--output {target} is {'the batch folder' if into == root else 'inside the batch folder'} "
                         f"{output} whose map store is rendered (its own files would be overwritten); "
                         "give a folder outside it")


def render_store(output: str | os.PathLike, target: str | os.PathLike, options: VisualizeOptions | None = None,
                 keys: list[str] | None = None, model: str | None = None, workers: int | None = None,
                 method: str | list[str] | None = None) -> RenderSummary:
    """Render the per-layer files of the images in a map store.

    Args:
        output: the batch output folder holding ``maps/``.
        target: where the files go (``target/<key>/...``).
        options: layer, head, colormap, alpha and format (``save_raw`` is refused).
        keys: only these images (``--image``); default every stored image.
        model: ``--model``: refuse a store made by another model.
        workers: render threads (default: the cores available).
        method: only these of the stored explanation methods (default: every stored one).

    Returns:
        A :class:`RenderSummary`; images whose source moved or changed (size
        or CRC-32 other than the manifest's) are listed in ``missing`` and the
        others are rendered; images the manifest records as done that no
        shard holds are counted in ``absent``.

    Raises:
        InputError: no store, another model's store, a layer/head/key the store does not have;
            ``target`` inside ``output``; a batch writing ``output`` or a render writing ``target``;
            a damaged shard (named).
    """
    from attnvis.batch.lock import OutputLock, ReaderLock
    from attnvis.batch.store import MapStore

    options = options or VisualizeOptions()
    check_options(options)
    check_target(output, target)
    with ReaderLock(output):  # a batch does not start here meanwhile; none runs here now
        store = MapStore(output)
        if model is not None:
            check_model(store, model)
        methods = _methods(store, method)
        if methods and not store.layout.layers and attention_asked(options):
            raise InputError(f"{output}: the map store holds relevance maps only (its run used an explain graph, "
                             "which has no attention outputs); drop --layer/--head/--no-avg-heads")
        layers = check_selection(store.metadata, options) if not methods or attention_asked(options) else []
        _check_heads(store, options)
        unknown = [key for key in keys or () if key not in store]
        if unknown:
            lost = (f"; the manifest records it as done, but no shard holds it (a shard deleted?): run "
                    f"attnvis batch INPUT --output {output} --save maps --resume") if unknown[0] in store.missing else ""
            raise InputError(f"--image {unknown[0]!r} is not in the map store of {output} ({len(store)} images, "
                             f"e.g. {next(iter(store), '')!r}){lost}")
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        summary = RenderSummary(output=target, absent=len(store.missing), notes=list(store.notes))
        chosen = list(dict.fromkeys(keys)) if keys else list(store)
        with OutputLock(target, "render"):  # another render into it would sweep this one's temporary files
            _render_all(store, chosen, layers, options, target, workers, summary, methods)
    return summary


def _render_all(store, chosen: list[str], layers: list[int], options: VisualizeOptions, target: Path,
                workers: int | None, summary: RenderSummary, methods: tuple[str, ...] = ()) -> None:
    """Render ``chosen`` on threads into ``summary``; a damaged or rewritten shard stops it all (one error)."""
    from attnvis.batch.local import available_cores

    with ThreadPoolExecutor(workers or available_cores(), thread_name_prefix="attnvis-render") as pool:
        try:
            for key, result in zip(chosen, pool.map(lambda k: _render_or_reason(store, k, layers, options, target,
                                                                                 methods), chosen)):
                if isinstance(result, str):
                    summary.missing.append((key, result))
                else:
                    summary.rendered, summary.files = summary.rendered + 1, summary.files + result
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _methods(store, method: str | list[str] | None) -> tuple[str, ...]:
    """The explanation methods to draw: ``--method`` (each stored, else one line naming those stored) or all stored."""
    from attnvis.relevance import parse_methods

    stored = tuple(store.layout.methods)
    if method is None:
        return stored
    asked = parse_methods(method)
    missing = [m for m in asked if m not in stored]
    if missing:
        have = f"it holds {', '.join(stored)}" if stored else "it holds none: run attnvis batch with --method"
        raise InputError(f"--method {missing[0]}: the map store of {store.root} has no relevance maps of it ({have})")
    return asked


def _render_or_reason(store, key: str, layers: list[int], options: VisualizeOptions, target: Path,
                      methods: tuple[str, ...] = ()) -> int | str:
    from attnvis.batch._shard_file import DamagedShard, ShardChanged

    try:
        return render_key(store, key, layers, options, target, methods)
    except (DamagedShard, ShardChanged):
        raise  # the store's fault, not this image's: the whole render stops, naming the shard
    except InputError as err:
        return str(err)
