"""A map-store shard on disk (:mod:`attnvis.batch.store`): written under a temporary name, renamed into place.

A crash at any moment leaves either the complete shard or a temporary file
(dot-name ending ``.tmp``) that the next run removes, never a half shard.
"""

from __future__ import annotations

import os
from pathlib import Path


def _pq():
    from attnvis._optional import require
    return require("pyarrow.parquet", "the map store (attnvis batch --save maps)")


class ShardFile:
    """A shard being written: row groups go to a temporary file as they come; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, schema):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        self.file = open(self.tmp, "wb")
        self.writer = _pq().ParquetWriter(self.file, schema, compression="zstd", use_dictionary=False)

    def write(self, table, row_group: int) -> None:
        """Append ``table`` in row groups of ``row_group`` rows."""
        self.writer.write_table(table, row_group_size=row_group)

    def commit(self) -> None:
        """Close, fsync, rename into place and fsync the folder (the rename is on disk before the manifest says so)."""
        try:
            self.writer.close()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def write_table(table, path: Path, row_group: int) -> None:
    """Write a whole shard under a temporary name, then rename it into place (see :class:`ShardFile`)."""
    shard = ShardFile(path, table.schema)
    try:
        shard.write(table, row_group)
    except BaseException:
        shard.abort()
        raise
    shard.commit()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename is on disk before the manifest says so
    finally:
        os.close(fd)
