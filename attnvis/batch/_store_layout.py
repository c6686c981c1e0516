"""What a map store's rows hold (:mod:`attnvis.batch.store`): the layout, and one image's row.

Every layer's row is the grid ``attnvis visualize`` renders for it, flattened:
the head-mean CLS row reshapeable to the patch grid for global attention, and
for a windowed block (Swin) its stitched map at its stage's resolution
(:func:`attnvis.render.window_grid`). Layers of different stages then have
grids of different sizes, so the layout records a grid per layer
(:attr:`StoreLayout.grids`) where they differ from the patch grid.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from attnvis.metadata import PROP_PREFIX, ModelMetadata
from attnvis.batch._store_relevance import write_columns
from attnvis.relevance import Verdict

FORMAT = 1


@dataclass(frozen=True)
class StoreLayout:
    """What a store's rows hold.

    Attributes:
        layers: number of layers.
        grid: the patch grid ``(h, w)`` (the rollout's grid, and every layer's unless ``grids`` says otherwise).
        heads: per layer, its number of heads when per-head rows are stored, else ``None``.
        rollout: whether the ``rollout`` column is stored.
        grids: per layer its grid ``(h, w)``, when they are not all ``grid``
            (windowed models: each stage's resolution); else ``None``.
        thumbs: whether the ``thumbnail`` column (the gallery's JPEG) is stored:
            with ``--save maps``, which writes no per-image folder to hold it.
        methods: the explanation methods stored (``batch --method``): a
            ``relevance_{method}`` column each (underscores for hyphens, as the
            graph's outputs), at the patch grid, plus ``target``, ``prediction``
            and ``probability``.
    """

    layers: int
    grid: tuple[int, int]
    heads: tuple[int, ...] | None = None
    rollout: bool = False
    grids: tuple[tuple[int, int], ...] | None = None
    thumbs: bool = False
    methods: tuple[str, ...] = ()

    @property
    def patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def layer_grid(self, layer: int) -> tuple[int, int]:
        """Layer ``layer``'s grid ``(h, w)``."""
        return self.grid if self.grids is None else self.grids[layer]

    def layer_patches(self, layer: int) -> int:
        """The length of layer ``layer``'s row (h·w of its grid)."""
        h, w = self.layer_grid(layer)
        return h * w

    def to_json(self) -> dict:
        doc = {"format": FORMAT, "layers": self.layers, "grid": list(self.grid),
               "heads": None if self.heads is None else list(self.heads), "rollout": self.rollout}
        if self.grids is not None:  # only then: a store of one grid keeps the identity it always had
            doc["grids"] = [list(grid) for grid in self.grids]
        if self.thumbs:
            doc["thumbs"] = True
        if self.methods:
            doc["methods"] = list(self.methods)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "StoreLayout":
        heads, grids = doc.get("heads"), doc.get("grids")
        return cls(int(doc["layers"]), tuple(doc["grid"]), None if heads is None else tuple(heads),
                   bool(doc.get("rollout")), None if grids is None else tuple(tuple(grid) for grid in grids),
                   bool(doc.get("thumbs")), tuple(doc.get("methods") or ()))


def has_rollout(meta: ModelMetadata) -> bool:
    """Whether the model's captured maps allow a rollout: full self-attention of one size, every layer."""
    sizes = {(layer.q_len, layer.k_len) for layer in meta.layers}
    return (meta.reduction in ("none", "mean-heads") and len(sizes) == 1 and all(q == k for q, k in sizes)
            and all(layer.kind == "self" and layer.window is None for layer in meta.layers))


def layout_for(meta: ModelMetadata, store_heads: bool, thumbs: bool = False, methods: tuple[str, ...] = (),
               attention: bool = True) -> StoreLayout:
    """The layout a run stores for this model (``store_heads``: ``--store-heads``; ``thumbs``: JPEGs in the store;
    ``methods``: ``--method``'s relevance columns; ``attention=False``: no layer rows, as for an explain graph,
    which has no attention outputs)."""
    if not attention:
        return StoreLayout(0, tuple(meta.tokens.grid), thumbs=thumbs, methods=tuple(methods))
    heads = tuple(layer.heads for layer in meta.layers) if store_heads else None
    grid = tuple(meta.tokens.grid)
    grids = tuple(grid if layer.window is None else tuple(layer.window.grid) for layer in meta.layers)
    return StoreLayout(len(meta.layers), grid, heads, has_rollout(meta), None if set(grids) <= {grid} else grids, thumbs,
                       tuple(methods))


def identity(meta: ModelMetadata, layout: StoreLayout) -> str:
    """Hash of what makes two stores' rows comparable: the model's metadata (not attnvis's version) and the layout."""
    props = {k: json.loads(v) for k, v in meta.to_props().items() if k != PROP_PREFIX + "version"}
    doc = json.dumps({"model": props, "layout": layout.to_json()}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


@dataclass
class StoreRow:
    """One image's row, made by the render stage and written by the driver.

    Attributes:
        key: the image's key; source: the file read; height, width: its size.
        layers: per layer float32 [h·w] (its own grid's h·w).
        heads: per layer float32 [heads, h·w], or ``None``.
        rollout: float32 [h·w], or ``None``.
        thumbnail: the gallery's JPEG, or ``None``.
        verdict: with ``--method``, the image's :class:`attnvis.relevance.Verdict`, or ``None``.
    """

    key: str
    source: str
    height: int
    width: int
    layers: list[np.ndarray]
    heads: list[np.ndarray] | None = None
    rollout: np.ndarray | None = None
    thumbnail: bytes | None = None
    verdict: Verdict | None = None


def _grid(attn: np.ndarray, meta: ModelMetadata, layer: int) -> np.ndarray:
    """Layer ``layer``'s head-mean grid, as :func:`attnvis.visualize.layer_images` draws it."""
    from attnvis.render import attention_grid, window_grid

    window = meta.layers[layer].window
    return attention_grid(attn, meta.tokens) if window is None else window_grid(attn, window)


def _head_grids(attn: np.ndarray, meta: ModelMetadata, layer: int) -> np.ndarray:
    """Layer ``layer``'s per-head grids ``[heads, h·w]``, as ``--no-avg-heads`` draws them."""
    from attnvis.render import head_grids, window_head_grids

    window = meta.layers[layer].window
    grids = head_grids(attn, meta.tokens) if window is None else window_head_grids(attn, window)
    return grids.reshape(grids.shape[0], -1)


def make_row(key: str, source: str, size_hw: tuple[int, int], attn: list[np.ndarray], meta: ModelMetadata,
             layout: StoreLayout, thumbnail: bytes | None = None, rollout: np.ndarray | None = None,
             verdict: Verdict | None = None) -> StoreRow:
    """An image's store row from its captured maps (per layer, no batch axis).

    The layer rows are the grids ``attnvis visualize`` renders (for a windowed
    block its stitched map), so rendering them gives the files ``--save
    images`` writes, byte for byte.
    """
    from attnvis.render.rollout import cls_rows_with_rollout, rollout_row

    fused = cls_rows_with_rollout(attn, meta.tokens) if layout.rollout and rollout is None else None  # the common case
    if rollout is not None:  # computed with the maps (on the GPU, whose attn are then each head's query row)
        fused = None
    if fused is not None:
        layers, roll = list(fused[0]), fused[1]
    else:
        layers = [_grid(a, meta, i).reshape(-1) for i, a in enumerate(attn)]  # per layer (h_i·w_i,)
        roll = rollout if rollout is not None else rollout_row(attn, meta.tokens) if layout.rollout else None
    heads = [_head_grids(a, meta, i) for i, a in enumerate(attn)] if layout.heads is not None else None
    return StoreRow(key, source, int(size_hw[0]), int(size_hw[1]), layers, heads, roll, thumbnail, verdict)


# --------------------------------------------------------------------------- a shard's table


def _pa():
    from attnvis._optional import require
    return require("pyarrow", "the map store (attnvis batch --save maps)")


# Columns are built from their buffers: pa.array() on anything first imports pandas when it is
# installed (0.2-0.5 s, once per run, on the thread that feeds the model).
def _fixed(pa, values: np.ndarray, width: int):
    """float32 [n, width] → a fixed-size-list column."""
    flat = np.ascontiguousarray(values, np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.Array.from_buffers(pa.float32(), len(flat), [None, pa.py_buffer(flat)]), width)


def _int32(pa, values: list[int]):
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(np.asarray(values, np.int32))])


def _binary(pa, values: list[bytes], kind):
    """A string (``kind`` ``pa.string()``, values UTF-8) or binary column."""
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(values))])


def rows_table(rows: list[StoreRow], meta: ModelMetadata, layout: StoreLayout):
    """The Arrow table of a shard, schema metadata included."""
    pa = _pa()
    hw = layout.patches
    columns = {"image": _binary(pa, [r.key.encode() for r in rows], pa.string()),
               "source": _binary(pa, [r.source.encode() for r in rows], pa.string()),
               "width": _int32(pa, [r.width for r in rows]),
               "height": _int32(pa, [r.height for r in rows])}
    for i in range(layout.layers):
        columns[f"layer_{i}"] = _fixed(pa, np.stack([r.layers[i] for r in rows]), layout.layer_patches(i))  # (n, h·w)
    for i, heads in enumerate(layout.heads or ()):
        columns[f"heads_{i}"] = _fixed(pa, np.stack([r.heads[i] for r in rows]).reshape(len(rows), -1),
                                       heads * layout.layer_patches(i))
    if layout.rollout:
        columns["rollout"] = _fixed(pa, np.stack([r.rollout for r in rows]), hw)
    if layout.thumbs:
        columns["thumbnail"] = _binary(pa, [r.thumbnail for r in rows], pa.binary())
    columns.update(write_columns(pa, rows, layout, _fixed))  # batch --method: relevance_*, target, prediction, probability
    table = pa.table(columns)
    props = dict(meta.to_props())
    props["attnvis.store"] = json.dumps({**layout.to_json(), "identity": identity(meta, layout)})
    return table.replace_schema_metadata(props)
