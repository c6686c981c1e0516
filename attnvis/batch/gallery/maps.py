"""The gallery's side of the map store: each shard's maps as small scripts the page loads on demand.

A page on ``file://`` cannot ``fetch``, so the maps travel as scripts:
``gallery/maps/part-NNNNNN_CCCC.js`` holds rows ``C·chunk … C·chunk + chunk - 1``
of shard ``part-NNNNNN`` as base64 float32 (``[rows, floats per row]``: every
layer's map, then every head's when stored, then the rollout when stored, then
each explanation method's relevance map (``batch --method``); each
layer at its own grid, ``grids``, which differ between a Swin's stages),
and calls ``attnvisGallery.maps(name, base64)``. A chunk is at most
:data:`CHUNK_BYTES` of floats, so opening an image loads a few hundred KB
whatever the number of images; the thumbnails grid never loads maps.
Scripts newer than their shard are kept as they are.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np

CHUNK_BYTES = 256 << 10
MAPS_DIR = "maps"


def _floats_per_row(layout) -> int:
    sizes = [layout.layer_patches(i) for i in range(layout.layers)]  # windowed models: each stage's h·w
    return (sum(sizes) + sum(n * hw for n, hw in zip(layout.heads or (), sizes)) + (layout.patches if layout.rollout else 0)
            + len(layout.methods) * layout.patches)


def _rows(table, layout) -> np.ndarray:
    """A shard's rows as float32 [rows, floats per row], in the order the page reads them."""
    from attnvis.batch.store import _column
    from attnvis.relevance import output_name

    parts = [_column(table, f"layer_{i}", layout.layer_patches(i)) for i in range(layout.layers)]
    parts += [_column(table, f"heads_{i}", n * layout.layer_patches(i)) for i, n in enumerate(layout.heads or ())]
    parts += [_column(table, "rollout", layout.patches)] if layout.rollout else []
    parts += [_column(table, output_name(m), layout.patches) for m in layout.methods]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype="<f4")


def _write_shard(store, number: int, chunk: int, folder: Path) -> None:
    """Shard ``number``'s scripts, a row group at a time (chunk 0 last: its time says the shard's scripts are complete)."""
    from attnvis.render.writers import write_bytes_atomic

    with store._open(number) as file:  # the shard the store indexed, its pages' checksums verified
        _write_groups(file, store.shards[number], store.layout, chunk, folder, write_bytes_atomic)


def _write_groups(file, shard: Path, layout, chunk: int, folder: Path, write_bytes_atomic) -> None:
    columns = [c for c in file.schema_arrow.names if c.startswith(("layer_", "heads_", "rollout", "relevance_"))]
    first, pending, start = None, np.empty((0, _floats_per_row(layout)), "<f4"), 0
    for group in range(file.num_row_groups):
        pending = np.concatenate([pending, _rows(file.read_row_group(group, columns=columns), layout)])
        last = group == file.num_row_groups - 1
        while len(pending) >= chunk or (last and len(pending)):
            rows, pending = pending[:chunk], pending[chunk:]
            name = f"{shard.stem}_{start // chunk:04d}"
            script = f'attnvisGallery.maps("{name}","{base64.b64encode(rows.tobytes()).decode("ascii")}");\n'.encode()
            if start == 0:
                first = (folder / f"{name}.js", script)
            else:
                write_bytes_atomic(folder / f"{name}.js", script)
            start += chunk
    if first is not None:
        write_bytes_atomic(*first)


def write_map_scripts(root: Path, gallery_dir: str):
    """Write the map scripts of ``root``'s store; return the page's map facts and the store.

    Returns ``(None, None)`` when ``root`` has no store (``--save images``).
    """
    from attnvis.batch.store import MapStore, shard_paths

    if not shard_paths(root):
        return None, None
    store = MapStore(root)
    layout = store.layout
    chunk = max(1, CHUNK_BYTES // (4 * _floats_per_row(layout)))
    folder = root / gallery_dir / MAPS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = [path.stem for path in store.shards]
    for number, path in enumerate(store.shards):
        first = folder / f"{path.stem}_0000.js"
        if not first.is_file() or first.stat().st_mtime_ns < path.stat().st_mtime_ns:
            _write_shard(store, number, chunk, folder)
    for entry in os.scandir(folder):  # scripts of shards no longer there
        if entry.name.endswith(".js") and entry.name.rsplit("_", 1)[0] not in names:
            os.unlink(entry.path)
    info = {"layers": layout.layers, "grid": list(layout.grid), "heads": None if layout.heads is None else list(layout.heads),
            "grids": [list(layout.layer_grid(i)) for i in range(layout.layers)],  # per layer; the rollout's is "grid"
            "rollout": layout.rollout, "methods": list(layout.methods), "chunk": chunk, "shards": names, "dir": f"{gallery_dir}/{MAPS_DIR}"}
    return info, store
