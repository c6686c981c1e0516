"""The map store's explanation columns (``attnvis batch --method``): written with a shard, read per image.

Per stored method ``relevance_{method}`` (underscores for hyphens, as the
explain graph's outputs; fixed-size list of float32, h·w at the patch grid,
raw as the graph gives it), and per image ``target`` (int64: the class
explained), ``prediction`` (int64: the top-1 class) and ``probability``
(float32: the top-1 softmax probability).
"""

from __future__ import annotations

import numpy as np

from attnvis.relevance import Verdict, output_name

CLASS_COLUMNS = (("target", "int64"), ("prediction", "int64"), ("probability", "float32"))


def write_columns(pa, rows: list, layout, fixed) -> dict:
    """The explanation columns of ``rows`` (:class:`~attnvis.batch._store_layout.StoreRow` s of ``layout``;
    ``fixed``: the store's float32 [n, width] → column builder)."""
    columns = {}
    for method in layout.methods:
        columns[output_name(method)] = fixed(pa, np.stack([r.verdict.relevance[method].reshape(-1) for r in rows]),
                                             layout.patches)
    for name, dtype in CLASS_COLUMNS if layout.methods else ():
        values = np.asarray([getattr(r.verdict, name) for r in rows], dtype)
        columns[name] = pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
    return columns


def read_columns(table, layout, column) -> dict:
    """A row group's explanation columns as NumPy arrays (``column``: the store's fixed-size-list reader)."""
    group = {output_name(m): column(table, output_name(m), layout.patches) for m in layout.methods}
    group.update((name, table.column(name).to_numpy()) for name, _ in (CLASS_COLUMNS if layout.methods else ()))
    return group


class ExplainedRows:
    """:class:`attnvis.batch.store.MapStore`'s reading of the explanation columns (it provides ``_row``, ``layout``)."""

    def relevance(self, key: str, method: str) -> np.ndarray:
        """``method``'s relevance map of the class explained, float32 ``[h, w]`` (stored with ``batch --method``)."""
        if output_name(method) not in {output_name(m) for m in self.layout.methods}:
            stored = ", ".join(self.layout.methods) or "none: run attnvis batch with --method"
            raise ValueError(f"{self.root}: no relevance maps of method {method!r} are stored (stored: {stored})")
        group, row = self._row(key)
        return group[output_name(method)][row].reshape(self.layout.grid)

    def verdict(self, key: str) -> Verdict | None:
        """The image's top-1 class and probability, the class explained and every stored relevance map
        (:class:`attnvis.relevance.Verdict`); ``None`` when the run explained nothing."""
        if not self.layout.methods:
            return None
        group, row = self._row(key)
        return Verdict(int(group["prediction"][row]), float(group["probability"][row]), int(group["target"][row]),
                       {m: group[output_name(m)][row].reshape(self.layout.grid) for m in self.layout.methods})
