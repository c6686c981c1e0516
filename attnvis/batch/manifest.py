"""``manifest.jsonl``: one JSON line per processed image, append-only, never corrupt.

Each record is written with one ``write`` of a complete line to a file opened
with ``O_APPEND``, after the image's files were renamed into place; lines are
``fsync``'d in groups (at most every :data:`SYNC_SECONDS` and at close). A
crash can therefore only leave a torn *last* line, which :func:`load` ignores
and :meth:`Manifest.open` cuts off before appending. An image listed twice
(re-run, ``--resume``) counts by its last line.

Record fields: ``key``, ``source``, ``status`` (``ok`` | ``failed``),
``error`` (one line, or null), ``files`` (every output, relative to the
output folder), ``checks`` (``[size, crc32]`` of each file, for ``--resume``),
``maps`` (``layer``, ``head``, ``overlay``, ``heatmap``), ``store`` (the map-store shard holding
the image's row, ``--save maps|both``), ``source_check`` (``[bytes, mtime_ns, crc32]`` of the source read),
``thumb``, ``size`` ([H, W]), ``prediction``, ``words`` (caption words for
captioning models, each map then carries a ``word`` index), ``plan`` (the
:attr:`RenderPlan.fingerprint`) and ``time`` (UNIX seconds).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

MANIFEST = "manifest.jsonl"
SYNC_SECONDS = 1.0


def _complete_prefix(path: Path) -> int:
    """Length of the file up to and including its last newline."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return pos - step + cut + 1
            pos -= step
    return 0


def _records(path: Path) -> Iterator[tuple[int, bytes, dict]]:
    """(offset, line, record) of every complete, parsable line of the file."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn tail of a killed run
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and "key" in record:
                yield offset, line, record
            offset += len(line)


def load(path: Path) -> dict[str, dict]:
    """The last record of each key; a torn or unparsable line is skipped."""
    return {record["key"]: record for _, _, record in _records(path)}


def _stored_fields(line: bytes):
    """(key, ok, shard, source check) of a line as :class:`Manifest` writes it ("key" first, json.dumps), by
    byte search: a JSON string cannot hold an unescaped quote, so ``"store":"`` and the like match only the
    record's own fields. ``None`` for any other line (a key with an escape, say): parsed whole instead."""
    if not line.startswith(b'{"key":"'):
        return None
    end = line.find(b'"', 8)
    key = line[8:end]
    if end < 0 or b"\\" in key:
        return None
    ok = b'"status":"ok"' in line
    at = line.rfind(b'"store":"') if ok else -1  # the last field, added once the shard is in place
    if at < 0:
        return key.decode("utf-8"), ok, None, None
    shard = line[at + 9:line.find(b'"', at + 9)]
    at = line.find(b'"source_check":[')
    check = [int(v) for v in line[at + 16:line.find(b"]", at)].split(b",")] if at >= 0 else None
    return key.decode("utf-8"), ok, shard.decode("utf-8"), check


def stored(path: Path) -> dict[str, tuple[str, list | None]]:
    """key → (its shard, its ``source_check``) of each image whose last record says it is in the map store.

    Reads only those fields of each line (a third of the time of parsing every record); a line
    in another form is parsed whole.
    """
    out: dict[str, tuple[str, list | None]] = {}
    if not Path(path).is_file():
        return out
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"}\n"):
                if not line.endswith(b"\n"):
                    break  # torn tail of a killed run
                continue
            fields = _stored_fields(line)
            if fields is None:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or "key" not in record:
                    continue
                fields = record["key"], record.get("status") == "ok", record.get("store"), record.get("source_check")
            key, ok, shard, check = fields
            if ok and shard:
                out[key] = (shard, check)
            else:
                out.pop(key, None)
    return out


class Records(Sequence):
    """The last records of some keys, in a given order, read back from the file when asked for.

    What is kept per image is where its line is, not the record: the gallery
    of a million-image run pages through them in bounded memory.

    Args:
        path: the manifest.
        keys: the keys wanted, in order; keys without a record are left out.
    """

    def __init__(self, path: Path, keys):
        self.path = Path(path)
        where = {record["key"]: (offset, len(line)) for offset, line, record in _records(self.path)}
        self._where = [where[key] for key in keys if key in where]

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index):
        if isinstance(index, slice):
            with open(self.path, "rb") as f:
                return [self._read(f, *at) for at in self._where[index]]
        with open(self.path, "rb") as f:
            return self._read(f, *self._where[index])

    def __iter__(self) -> Iterator[dict]:
        for start in range(0, len(self), 1024):
            yield from self[start:start + 1024]

    @staticmethod
    def _read(f, offset: int, length: int) -> dict:
        f.seek(offset)
        return json.loads(f.read(length))


class Manifest:
    """Appends records to ``manifest.jsonl`` durably (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._synced = 0.0

    def open(self) -> "Manifest":
        """Open for appending, first cutting off a torn last line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            keep = _complete_prefix(self.path)
            if keep != self.path.stat().st_size:
                os.truncate(self.path, keep)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self._synced = time.monotonic()
        return self

    def append(self, record: dict) -> None:
        """Write one record as one complete line."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            while line:  # O_APPEND: a whole line per write; one writer, so lines never interleave
                line = line[os.write(self._fd, line):]
        except OSError as err:  # a full disk: name the manifest (os.write names no file)
            if err.filename is not None or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        if time.monotonic() - self._synced >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Manifest":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def file_check(data) -> list[int]:
    """``[size, crc32]`` of a file's bytes, as the manifest records it beside each file."""
    view = memoryview(data).cast("B")
    return [view.nbytes, zlib.crc32(view)]


def _matches(path: Path, check) -> bool:
    try:
        if not isinstance(check, list) or path.stat().st_size != check[0]:
            return False
        return file_check(path.read_bytes()) == check
    except OSError:
        return False


def is_complete(record: dict | None, root: Path, fingerprint: str) -> bool:
    """Whether ``--resume`` may skip this image: rendered with the same plan, every file there with the
    size and CRC-32 the manifest recorded (a truncated or emptied file is redone)."""
    if not record or record.get("status") != "ok" or record.get("plan") != fingerprint:
        return False
    files, checks = record.get("files", ()), record.get("checks")
    if not isinstance(checks, list) or len(checks) != len(files):
        return False  # written before files were checked: redo rather than trust existence
    return all(_matches(root / rel, check) for rel, check in zip(files, checks))
