"""Opening a map store's shards (:mod:`attnvis.batch.store`): each one's keys and identity, checked.

A shard that cannot be read is :class:`~attnvis.batch._shard_file.DamagedShard`
(``load_maps`` and ``render`` name it; ``batch`` moves it aside and redoes its
images). An image found in two shards (a copied shard) is kept once: the copy
in the shard the manifest names for it, else the first; the other copies are
listed so that readers skip them and ``batch`` removes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from attnvis.batch._shard_file import OpenShard

STORE_PROP = "attnvis.store"


def store_doc(schema) -> dict | None:
    """The ``attnvis.store`` entry of a shard's schema metadata (layout and identity), or None."""
    raw = (schema.metadata or {}).get(STORE_PROP.encode())
    return json.loads(raw) if raw else None


@dataclass
class Scanned:
    """One shard as opened: its path, identity (:func:`~attnvis.batch._shard_file.identity`), schema,
    store entry, keys (in row order) and rows per row group."""

    path: Path
    ident: tuple
    schema: object
    doc: dict | None
    keys: list[str]
    groups: list[int] = field(default_factory=list)


def scan_shard(path: Path, verify: bool = False) -> Scanned:
    """Open a shard and read its keys; ``verify``: read every page too (each page's CRC checked).

    Raises:
        DamagedShard: it cannot be read, or a page's checksum does not match.
    """
    opener = OpenShard(path)
    with opener as file:
        meta = file.metadata
        groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if verify:  # a row group at a time: memory holds one
            keys = []
            for g in range(len(groups)):
                keys += file.read_row_group(g).column("image").to_pylist()
        else:
            keys = file.read(columns=["image"]).column("image").to_pylist()
        schema = file.schema_arrow
    return Scanned(Path(path), opener.ident, schema, store_doc(schema), keys, groups)


def keep_once(scans: list[Scanned], named: dict[str, str]) -> tuple[dict[str, tuple[int, int]], dict[int, set[str]]]:
    """Where each key's kept copy is, ``key → (shard, row)``, and per shard the keys whose copy there is not kept.

    Args:
        scans: the shards, in order.
        named: ``key → "maps/part-NNNNNN.parquet"``, the shard the manifest names for the image
            (only asked about keys stored twice).
    """
    where: dict[str, tuple[int, int]] = {}
    dropped: dict[int, set[str]] = {}
    for s, scan in enumerate(scans):
        for row, key in enumerate(scan.keys):
            first = where.get(key)
            if first is None:
                where[key] = (s, row)
                continue
            if first[0] == s:  # twice in one shard (never written so): the first row is read
                continue
            ours = named.get(key) == f"{scan.path.parent.name}/{scan.path.name}"
            keep, drop = ((s, row), first[0]) if ours else (first, s)
            where[key] = keep
            dropped.setdefault(drop, set()).add(key)
    return where, dropped


def named_shards(root: Path, scans: list[Scanned]) -> dict[str, str]:
    """key → the shard the manifest names for it (``maps/part-NNNNNN.parquet``); read only when some image
    is in two shards (:func:`keep_once` asks about those alone)."""
    if sum(len(scan.keys) for scan in scans) == len({key for scan in scans for key in scan.keys}):
        return {}
    from attnvis.batch.manifest import MANIFEST, stored

    return {key: shard for key, (shard, _) in stored(Path(root) / MANIFEST).items()}


def duplicate_notes(scans: list[Scanned], dropped: dict[int, set[str]], action: str) -> list[str]:
    """One line per shard holding copies not kept: how many, and ``action`` (what is done about them)."""
    return [f"{scans[s].path}: {len(keys)} image{'s' if len(keys) != 1 else ''} stored twice (also in another shard of "
            f"the map store, e.g. {sorted(keys)[0]!r}: a copied shard?); {action}" for s, keys in sorted(dropped.items())]
