"""The map store: every layer's map of every image, as Parquet shards under ``OUT/maps/``.

``attnvis batch --save maps`` (or ``both``) keeps, per image, what every file
of that image is rendered from: for each layer the head-mean CLS row
without the prefix columns (the mean over query rows for a model without
CLS), float32, reshapeable to the patch grid. That is ~2.3 KB per image for
the default model and ~9.4 KB for a 12-layer ViT-B/16 at 224, against
megabytes of PNGs; ``attnvis render`` and the gallery render from it later.

Shards are ``OUT/maps/part-NNNNNN.parquet``, one row per image:

- ``image`` (string): the manifest's key; ``source`` (string): the file read;
  ``width``, ``height`` (int32): the image's original size.
- ``layer_{i}`` (fixed-size list of float32, h·w): layer ``i``'s map. For a
  windowed block (Swin) it is the stitched map at its stage's resolution, so
  layers of different stages have different ``h·w``; the layout's ``grids``
  gives each layer's grid (:mod:`attnvis.batch._store_layout`).
- ``heads_{i}`` (fixed-size list of float32, heads·h·w), with ``--store-heads``:
  every head's row, head-major.
- ``rollout`` (fixed-size list of float32, h·w), when the model's maps are
  full self-attention: the same row of the attention rollout over all layers
  (:func:`attnvis.render.rollout.rollout_row`).
- ``relevance_{method}``, ``target``, ``prediction``, ``probability`` with ``--method``
  (:mod:`attnvis.batch._store_relevance`).
- ``thumbnail`` (binary), with ``--save maps``: the gallery's JPEG of the
  image (the last layer's overlay, 192 px wide); ``--save both`` writes it as
  a file beside the image's other files instead.

The schema metadata carries the model's ``attnvis.*`` metadata
(:meth:`ModelMetadata.to_props`) and ``attnvis.store`` (the layout and an
identity hash). Plain Parquet: pyarrow, Ray Data, pandas, Polars and DuckDB
read the shards as they are.

Exactly once: rows are buffered and written as a shard of at most
:data:`SHARD_ROWS` rows (or every :data:`SHARD_SECONDS`) under a temporary
name, fsync'd and renamed; only then are their manifest lines appended. At
the start of a run, every image the run is going to (re)do is first removed
from the shards that hold it (each shard rewritten atomically), so a kill
at any moment, followed by ``--resume``, leaves every image in the store
exactly once with the values an uninterrupted run stores.

Integrity (:mod:`attnvis.batch._shard_file`, :mod:`attnvis.batch._store_scan`):
every page carries a CRC-32, checked when it is read; a shard is read only
while it is the file (inode, size, mtime) the store was opened on; a damaged
shard is named in one line by readers and moved aside by the next batch,
whose images are then redone; an image in two shards is read once and the
other copy removed by the next batch; images the manifest records as stored
that no shard holds are reported (:attr:`MapStore.missing`).

Shard size: 4,096 rows is ~10 MB for the default model and ~38 MB for a
ViT-B, so a million images make ~250 files, and a crash loses at most
4,096 images or a minute of work, whichever is less.
"""

from __future__ import annotations

import bisect
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from attnvis.batch._shard_file import DamagedShard, OpenShard, ShardFile, move_aside, write_table
from attnvis.batch._store_layout import StoreLayout, StoreRow, identity, rows_table  # noqa: F401 - rows_table: public here
from attnvis.batch._store_scan import STORE_PROP, duplicate_notes, keep_once, named_shards, scan_shard
from attnvis.batch._store_relevance import ExplainedRows, read_columns
from attnvis.errors import InputError
from attnvis.metadata import ModelMetadata

STORE_DIR = "maps"
SHARD_ROWS = 4096
SHARD_SECONDS = 60.0
ROW_GROUP = 1024  # rows written together to a shard, and read together when one image is looked up
_SHARD = re.compile(r"part-(\d{6})\.parquet")
_WHAT = "the map store (attnvis batch --save maps)"


def _pa():
    from attnvis._optional import require
    return require("pyarrow", _WHAT)


# --------------------------------------------------------------------------- writing


def shard_paths(root: Path) -> list[Path]:
    """The store's shards, in the order they were written."""
    folder = Path(root) / STORE_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _SHARD.fullmatch(p.name))


class StoreWriter:
    """Appends rows to a run's store; opened by :func:`open_writer` (see the module docstring).

    ``add(row, record)`` buffers a row group's rows, then writes them to the
    shard being filled (a temporary file); a full (or old) shard is renamed
    into place, then its records go to the manifest with ``"store"`` naming
    it. Memory holds one row group of rows and a shard's records, whatever
    the number of images.
    """

    def __init__(self, root: Path, meta: ModelMetadata, layout: StoreLayout, keys: dict[str, Path], next_number: int):
        self.root, self.meta, self.layout = Path(root), meta, layout
        self.keys = keys  # key → shard already holding it
        self.number = next_number
        self.manifest = None
        self._rows: list[StoreRow] = []  # not yet in the shard file
        self._records: list[dict] = []  # the shard's, for the manifest once it is in place
        self._shard: ShardFile | None = None
        self._since = 0.0
        self.notes: list[str] = []  # what opening found and did: damaged shards moved aside, copies removed

    def prune(self, keys: set[str]) -> int:
        """Remove these keys from the shards holding them (each rewritten atomically); return rows removed."""
        doomed: dict[Path, set[str]] = {}
        for key in keys & self.keys.keys():
            doomed.setdefault(self.keys.pop(key), set()).add(key)
        for path, gone in doomed.items():
            remove_rows(path, gone)
        return sum(len(gone) for gone in doomed.values())

    def add(self, row: StoreRow, record: dict) -> None:
        if not self._records:
            self._since = time.monotonic()
        self._rows.append(row)
        self._records.append(record)
        if len(self._rows) >= ROW_GROUP:
            self._write_rows()
        if len(self._records) >= SHARD_ROWS or time.monotonic() - self._since >= SHARD_SECONDS:
            self.flush()

    def _write_rows(self) -> None:
        table = rows_table(self._rows, self.meta, self.layout)
        if self._shard is None:
            self._shard = ShardFile(self.root / STORE_DIR / f"part-{self.number:06d}.parquet", table.schema)
        shard, self._shard = self._shard, None  # a failed write removed its file: nothing left to put in place
        shard.write(table, ROW_GROUP)
        self._shard, self._rows = shard, []

    def flush(self) -> None:
        """Put the shard being filled in place, then its manifest lines."""
        if not self._records:
            return
        if self._rows:
            self._write_rows()
        shard, self._shard = self._shard, None
        shard.commit()  # a failure removes the temporary file and names the shard
        self.number += 1
        rel = f"{STORE_DIR}/{shard.path.name}"
        for record in self._records:
            self.keys[record["key"]] = shard.path
            record["store"] = rel
            self.manifest.append(record)
        self._records = []

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, kind, err, tb) -> None:
        if isinstance(err, OSError):  # a full disk, a lost folder: another write would fail too
            if self._shard is not None:
                self._shard.abort()
            self._shard, self._rows, self._records = None, [], []
            return
        try:
            self.flush()  # what was done before an error or Ctrl-C is kept
        except OSError:
            if err is None:
                raise  # else the error that stopped the run is the one to see


def remove_rows(path: Path, gone: set[str]) -> None:
    """Rewrite a shard without these keys (atomically), or delete it when none is left."""
    pa = _pa()
    import pyarrow.compute as pc

    with OpenShard(path) as file:
        table = file.read()
    kept = table.filter(pc.invert(pc.is_in(table.column("image"), pa.array(sorted(gone), pa.string()))))
    if kept.num_rows:
        write_table(kept, path, ROW_GROUP)
    else:
        path.unlink()


def open_writer(root: Path, meta: ModelMetadata, layout: StoreLayout) -> StoreWriter:
    """Open ``root/maps`` for a run: remove a killed run's temporary files, check the shards are this model's.

    Raises:
        InputError: the folder holds maps of another model or another
            ``--store-heads`` setting (rows of two models never mix).
    """
    folder = Path(root) / STORE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            os.unlink(entry.path)
    ours, scans, notes = identity(meta, layout), [], []
    for path in shard_paths(root):
        try:
            scan = scan_shard(path, verify=True)  # every page's CRC: a damaged shard's images are redone
        except DamagedShard as err:
            moved = move_aside(path)
            notes.append(f"{path} is damaged ({err.reason}): moved aside to {moved.name}; its images are redone")
            continue
        if scan.doc is None or scan.doc.get("identity") != ours:
            raise InputError(f"{folder} holds maps of another model or --store-heads setting ({path.name}: "
                             f"{_describe(scan.doc)}; this run: {_describe({**layout.to_json(), 'source': meta.source})}); "
                             f"use another --output, or delete {folder} to start the store over")
        scans.append(scan)
    where, dropped = keep_once(scans, named_shards(root, scans))
    number = max((int(_SHARD.fullmatch(scan.path.name).group(1)) + 1 for scan in scans), default=0)
    writer = StoreWriter(root, meta, layout, {key: scans[s].path for key, (s, _) in where.items()}, number)
    for s, gone in dropped.items():
        remove_rows(scans[s].path, gone)  # the copies not kept
    writer.notes = notes + duplicate_notes(scans, dropped, "removed from it")
    return writer


def _describe(doc: dict | None) -> str:
    if not doc:
        return "no attnvis store metadata"
    heads = "per-head rows" if doc.get("heads") else "head means"
    grid = "x".join(str(v) for v in doc.get("grid") or ())
    source = f"model {doc['source']!r}, " if doc.get("source") else ""
    methods = f", relevance of {','.join(doc['methods'])}" if doc.get("methods") else ""
    return f"{source}{doc.get('layers')} layers, grid {grid}, {heads}{methods}"


# --------------------------------------------------------------------------- reading


class MapStore(ExplainedRows, Mapping):
    """A read-only mapping from image key to its maps, float32 ``[layers, h, w]`` (see :func:`load_maps`).

    Where the layers' grids differ (windowed models: each block at its
    stage's resolution, ``layout.grids``), ``store[key]`` is a tuple of
    per-layer ``[h_i, w_i]`` arrays instead, so ``store[key][i]`` is layer
    ``i``'s map either way; :meth:`array` then takes one layer at a time.

    Attributes:
        metadata: the model's :class:`ModelMetadata`.
        layout: the :class:`StoreLayout`.
        root: the batch output folder.
        missing: keys the manifest records as stored that no shard holds (a deleted shard), sorted.
        notes: what opening found (images stored twice, ``missing``), one line each.
    """

    def __init__(self, root: str | os.PathLike):
        from attnvis.batch.manifest import MANIFEST, stored

        self.root = Path(root)
        self.shards = shard_paths(self.root)
        if not self.shards:
            raise InputError(f"{self.root}: no map store here (no {STORE_DIR}/part-*.parquet); "
                             f"write one with 'attnvis batch INPUT --output {self.root} --save maps'")
        scans = [scan_shard(path) for path in self.shards]  # DamagedShard names a shard that cannot be opened
        doc, schema = scans[0].doc, scans[0].schema
        if doc is None:
            raise InputError(f"{self.shards[0]}: not an attnvis map store (no {STORE_PROP} in its schema metadata)")
        for scan in scans:
            if (scan.doc or {}).get("identity") != doc.get("identity"):
                raise InputError(f"{scan.path}: its maps are of another model than {self.shards[0].name}'s; "
                                 "a store holds one model's maps")
        props = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        self.metadata = ModelMetadata.from_props(props)
        self.layout = StoreLayout.from_json(doc)
        recorded = stored(self.root / MANIFEST)  # key → (shard, source check) of the images the manifest says are here
        where, self._dropped = keep_once(scans, {key: shard for key, (shard, _) in recorded.items()})
        self._index = dict(sorted(where.items()))
        self._idents = [scan.ident for scan in scans]  # a shard is read only while it is still this file
        self._starts = {s: list(np.cumsum([0] + scan.groups)) for s, scan in enumerate(scans)}
        self._checks = {key: check for key, (_, check) in recorded.items() if check is not None}
        self.missing = sorted(key for key in recorded if key not in self._index)
        self.notes = duplicate_notes(scans, self._dropped, "one copy of each is read; attnvis batch --resume removes "
                                     "the others")
        if self.missing:
            self.notes.append(missing_note(self.root, len(self.missing)))
        self._cache: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._lock = threading.Lock()
        self._thumbs: tuple = (None, [])  # ((shard, row group), its thumbnails)

    def source_check(self, key: str) -> list[int] | None:
        """The source's ``[bytes, mtime_ns, crc32]`` when the batch read it (from the manifest), or None."""
        return self._checks.get(key)

    def _open(self, shard: int) -> OpenShard:
        """``with self._open(s) as file:`` shard ``s``, provided it is still the file the store was opened on."""
        return OpenShard(self.shards[shard], self._idents[shard])

    def _kept(self, shard: int, table):
        """A shard's table without the rows of keys whose kept copy is in another shard (a copied shard)."""
        gone = self._dropped.get(shard)
        if not gone:
            return table
        pa = _pa()
        import pyarrow.compute as pc

        return table.filter(pc.invert(pc.is_in(table.column("image"), pa.array(sorted(gone), pa.string()))))

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __contains__(self, key) -> bool:
        return key in self._index

    def __getitem__(self, key: str) -> np.ndarray | tuple[np.ndarray, ...]:
        group, row = self._row(key)
        if self.layout.grids is not None:  # one grid per layer: (h_i, w_i) each
            return tuple(column[row].reshape(self.layout.layer_grid(i)) for i, column in enumerate(group["layers"]))
        return group["layers"][row].reshape(self.layout.layers, *self.layout.grid)

    def locations(self) -> dict[str, tuple[int, int]]:
        """key → (index in :attr:`shards`, row in that shard), in key order."""
        return dict(self._index)

    def heads(self, key: str) -> list[np.ndarray]:
        """Per layer float32 ``[heads, h, w]`` (stored with ``--store-heads``)."""
        if self.layout.heads is None:
            raise ValueError(f"{self.root}: per-head maps were not stored; run attnvis batch with --store-heads")
        group, row = self._row(key)
        return [group[f"heads_{i}"][row].reshape(n, *self.layout.layer_grid(i)) for i, n in enumerate(self.layout.heads)]

    def rollout(self, key: str) -> np.ndarray | None:
        """The attention rollout's map ``[h, w]``, or ``None`` when the model's maps did not allow one."""
        if not self.layout.rollout:
            return None
        group, row = self._row(key)
        return group["rollout"][row].reshape(self.layout.grid)

    def thumbnail(self, key: str) -> bytes | None:
        """The gallery's JPEG of the image (stored with ``--save maps``), or ``None``.

        Read a row group's thumbnails at a time, apart from its maps (one group kept):
        the gallery asks for every image's in store order.
        """
        if not self.layout.thumbs:
            return None
        shard, number, row = self._locate(key)
        with self._lock:
            if self._thumbs[0] != (shard, number):
                with self._open(shard) as file:
                    group = file.read_row_group(number, columns=["thumbnail"])
                self._thumbs = ((shard, number), group.column("thumbnail").to_pylist())
            return self._thumbs[1][row]

    def source(self, key: str) -> str:
        group, row = self._row(key)
        return group["source"][row]

    def size(self, key: str) -> tuple[int, int]:
        """The image's original ``(height, width)``."""
        group, row = self._row(key)
        return int(group["height"][row]), int(group["width"][row])

    def _row(self, key: str) -> tuple[dict, int]:
        shard, number, row = self._locate(key)
        return self._group(shard, number), row

    def _locate(self, key: str) -> tuple[int, int, int]:
        """(shard, row group, row in the group) of ``key``."""
        shard, row = self._index[key]
        starts = self._starts[shard]
        number = bisect.bisect_right(starts, row) - 1
        return shard, number, row - int(starts[number])

    def _group(self, shard: int, number: int) -> dict:
        """One row group as read-only NumPy arrays (the few most recent kept)."""
        with self._lock:  # readers on several threads (attnvis render)
            cached = self._cache.get((shard, number))
            if cached is not None:
                self._cache.move_to_end((shard, number))
                return cached
            with self._open(shard) as file:  # the shard the index was made from, its pages' CRCs checked
                columns = [name for name in file.schema_arrow.names if name != "thumbnail"]  # read apart (thumbnail())
                group = _arrays(file.read_row_group(number, columns=columns), self.layout)
            self._cache[(shard, number)] = group
            if len(self._cache) > 4:
                self._cache.popitem(last=False)
            return group

    def array(self, layer: int | None = None) -> np.ndarray:
        """Every image's maps, float32 ``[images, layers, h, w]`` in key order (the mapping's order).

        Args:
            layer: only this layer's maps, ``[images, h, w]`` at its own grid
                (the way to take a whole layer where the layers' grids differ).

        Raises:
            ValueError: ``layer`` out of range, or no ``layer`` while the layers' grids differ.
        """
        chosen = list(range(self.layout.layers)) if layer is None else [layer]
        if layer is not None and not 0 <= layer < self.layout.layers:
            raise ValueError(f"layer {layer} is out of range: the store has {self.layout.layers} layers")
        if layer is None and self.layout.grids is not None:
            raise ValueError(f"{self.root}: the layers' grids differ ({', '.join(f'{h}x{w}' for h, w in self.layout.grids)}"
                             "), so they make no [images, layers, h, w] array; use store.array(layer=i) per layer")
        h, w = self.layout.layer_grid(chosen[0])
        out = np.empty((len(self), len(chosen), h, w), np.float32)
        order = {key: i for i, key in enumerate(self._index)}
        for s in range(len(self.shards)):
            with self._open(s) as file:
                table = self._kept(s, file.read(columns=["image", *(f"layer_{i}" for i in chosen)]))
            if not table.num_rows:  # every row a copy read from another shard
                continue
            rows = [order[key] for key in table.column("image").to_pylist()]
            out[rows] = np.stack([_column(table, f"layer_{i}", h * w) for i in chosen], axis=1).reshape(len(rows), -1, h, w)
        out = out if layer is None else out[:, 0]
        out.flags.writeable = False
        return out

    def table(self):
        """The whole store as one pyarrow Table, sorted by ``image``."""
        pa = _pa()
        tables = []
        for s in range(len(self.shards)):
            with self._open(s) as file:
                tables.append(self._kept(s, file.read()))
        return pa.concat_tables(tables).sort_by("image").replace_schema_metadata(tables[0].schema.metadata)

    def to_pandas(self):
        """The whole store as a pandas DataFrame (one row per image; map columns hold arrays)."""
        return self.table().to_pandas()


def _column(table, name: str, width: int) -> np.ndarray:
    """A fixed-size-list float32 column → read-only [rows, width]."""
    flat = table.column(name).combine_chunks().flatten()  # no nulls: the values buffer is the data
    values = np.frombuffer(flat.buffers()[1], np.float32)[flat.offset:flat.offset + len(flat)]  # (to_numpy imports pandas)
    values = values.reshape(table.num_rows, width)
    values.flags.writeable = False
    return values


def _arrays(table, layout: StoreLayout) -> dict:
    """A row group's columns: ``layers`` (n, L, h·w), or per layer (n, h_i·w_i) where the grids differ."""
    layers = [_column(table, f"layer_{i}", layout.layer_patches(i)) for i in range(layout.layers)]
    if layout.grids is None:  # (n, L, h*w); L = 0 for a store of relevance maps only (an explain graph's run)
        layers = np.stack(layers, axis=1) if layers else np.empty((table.num_rows, 0, layout.patches), np.float32)
        layers.flags.writeable = False
    group = {"layers": layers, "source": table.column("source").to_pylist(), "width": table.column("width").to_numpy(),
             "height": table.column("height").to_numpy()}
    for i, heads in enumerate(layout.heads or ()):
        group[f"heads_{i}"] = _column(table, f"heads_{i}", heads * layout.layer_patches(i))
    if layout.rollout:
        group["rollout"] = _column(table, "rollout", layout.patches)
    group.update(read_columns(table, layout, _column))
    return group


def missing_note(root: Path, count: int) -> str:
    """The line on images the manifest records as stored that no shard holds (a shard deleted?)."""
    from attnvis.batch._shard_file import RESUME_HINT

    return (f"{count} image{'s' if count != 1 else ''} the manifest records as done {'are' if count != 1 else 'is'} "
            f"not in the map store of {root} (a shard deleted?): run {RESUME_HINT.format(root=root)} to redo them")


def load_maps(output: str | os.PathLike) -> MapStore:
    """The map store of a batch output folder, as a read-only mapping.

    Args:
        output: the folder given to ``attnvis batch --output`` (with ``--save maps`` or ``both``).

    Returns:
        A :class:`MapStore`: ``store[key]`` is float32 ``[layers, h, w]`` (a tuple of
        per-layer ``[h_i, w_i]`` where the layers' grids differ, as for Swin);
        ``store.metadata`` the model's :class:`~attnvis.metadata.ModelMetadata`;
        ``store.array()``, ``store.table()`` and ``store.to_pandas()`` the whole store.

    Images the manifest records as stored that the store lacks (a deleted
    shard) are in ``store.missing``, and said in a :class:`AttnvisWarning`, as
    are images found in two shards (one copy of each is read).

    Raises:
        InputError: no store in the folder, or an inconsistent one; a damaged
            shard (named, with the fix), here or when a row of it is read; a
            shard rewritten since the store was opened, when a row of it is read.
    """
    import warnings

    from attnvis.errors import AttnvisWarning

    store = MapStore(output)
    for note in store.notes:
        warnings.warn(note, AttnvisWarning, stacklevel=2)
    return store
