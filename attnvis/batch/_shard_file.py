"""A map-store shard on disk (:mod:`attnvis.batch.store`): written under a temporary name, renamed into place,
read back only as the file it was when the store was opened, every page's CRC checked.

A crash at any moment leaves either the complete shard or a temporary file
(dot-name ending ``.tmp``) that the next run removes, never a half shard. A
failed write (a full disk) removes its temporary file and names the shard.

Every data page carries a CRC-32 (Parquet's page checksum), verified when the
page is read: only the pages read are checked, so a lookup costs no more than
before. A shard is opened by its descriptor and its identity (device, inode,
size, modification time) compared with the one recorded when the store was
opened: a shard rewritten since (by a running ``attnvis batch``) is refused,
never read as if its rows were where they were.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

from attnvis.errors import InputError

DAMAGED_SUFFIX = ".damaged"
RESUME_HINT = "attnvis batch INPUT --output {root} --save maps --resume"


def _pq():
    from attnvis._optional import require
    return require("pyarrow.parquet", "the map store (attnvis batch --save maps)")


class DamagedShard(InputError):
    """A shard that cannot be read (truncated, corrupt bytes, not Parquet): the message names it and the fix.

    Attributes:
        reason: what pyarrow said, on one line.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class ShardChanged(InputError):
    """A shard rewritten or removed since the store was opened (a batch writing the folder)."""


class _Sink(io.RawIOBase):
    """The temporary file under a buffer, written with ``os.write`` (an error is the OS's own, errno kept)."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        return os.write(self.fd, data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return os.lseek(self.fd, pos, whence)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        super().close()


class ShardFile:
    """A shard being written: row groups go to a temporary file as they come; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, schema):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        self.file = io.BufferedWriter(_Sink(fd), 1 << 20)
        try:
            self.writer = _pq().ParquetWriter(self.file, schema, compression="zstd", use_dictionary=False,
                                              write_page_checksum=True)
        except BaseException:
            self.abort()
            raise

    def write(self, table, row_group: int) -> None:
        """Append ``table`` in row groups of ``row_group`` rows; on an error the temporary file is removed."""
        try:
            self.writer.write_table(table, row_group_size=row_group)
        except BaseException as err:
            self.abort()
            raise self._named(err) from None

    def commit(self) -> None:
        """Close, fsync, rename into place and fsync the folder (the rename is on disk before the manifest says so)."""
        try:
            self.writer.close()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException as err:
            self.abort()
            raise self._named(err) from None
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the temporary file (what was buffered is discarded: the disk may be full)."""
        sink = self.file.raw
        fd, sink.fd = sink.fd, -1  # closed first: the buffer's flush cannot reach the disk (nor a reused descriptor)
        if fd >= 0:
            os.close(fd)
        try:
            self.file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def _named(self, err: BaseException) -> BaseException:
        """An OS error names the shard being written (the OS's own names no file, or the temporary one)."""
        if isinstance(err, OSError) and err.errno is not None:
            return OSError(err.errno, err.strerror or os.strerror(err.errno), str(self.path))
        if isinstance(err, OSError):  # pyarrow's own I/O error: its text, the shard named
            return OSError(errno.EIO, f"cannot write the map store shard ({' '.join(str(err).split())})", str(self.path))
        return err


def write_table(table, path: Path, row_group: int) -> None:
    """Write a whole shard under a temporary name, then rename it into place (see :class:`ShardFile`)."""
    shard = ShardFile(path, table.schema)
    shard.write(table, row_group)
    shard.commit()


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename is on disk before the manifest says so
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- reading


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a shard is the file it was: replaced (a new inode), rewritten or truncated (size, time)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def damaged(path: Path, err: BaseException) -> DamagedShard:
    """The one-line error of an unreadable shard: what pyarrow said, and the fix."""
    reason = " ".join(str(err).split()) or type(err).__name__
    root = path.parent.parent
    reason = reason[:200]
    return DamagedShard(f"{path}: damaged map store shard ({reason}); run {RESUME_HINT.format(root=root)}: "
                        f"it moves the shard aside ({path.name}{DAMAGED_SUFFIX}) and redoes its images", reason)


def _native_file(handle):
    """An Arrow file reading the open file ``handle`` (Linux: through ``/proc/self/fd``), else ``None``.

    Read through the Python file object, every buffer is a Python object, and
    Arrow's reading threads release some of them after a read has returned,
    which takes the GIL: in a process that is exiting (an error line, then
    the exit) the interpreter stops such a thread inside C++ and the process
    aborts ("terminate called without an active exception"). An Arrow file
    holds Arrow's own buffers. ``/proc/self/fd/N`` opens the file the
    descriptor holds, even when its path names another file by now.
    """
    proc = f"/proc/self/fd/{handle.fileno()}"
    if not os.path.exists(proc):
        return None
    import pyarrow as pa

    return pa.OSFile(proc)


class OpenShard:
    """``with OpenShard(path, ident) as file:`` a verified :class:`pyarrow.parquet.ParquetFile` of the shard.

    Opened by descriptor, so what is read is the file whose identity was
    checked. ``ident`` ``None``: any (the store is being opened; the
    identity is then :attr:`ident`). pyarrow's errors while opening or
    reading in the block become :class:`DamagedShard`.

    Raises:
        ShardChanged: the shard is gone or is not the file ``ident`` describes.
        DamagedShard: it cannot be read.
    """

    def __init__(self, path: Path, ident: tuple | None = None):
        self.path, self.want, self.ident, self.handle, self.native = Path(path), ident, None, None, None

    def __enter__(self):
        try:
            self.handle = open(self.path, "rb")
        except FileNotFoundError:
            if self.want is None:
                raise
            raise ShardChanged(self._changed("removed")) from None
        self.ident = identity(os.fstat(self.handle.fileno()))
        if self.want is not None and self.ident != tuple(self.want):
            self.handle.close()
            raise ShardChanged(self._changed("rewritten"))
        try:
            self.native = _native_file(self.handle)
            return _pq().ParquetFile(self.native or self.handle, page_checksum_verification=True)
        except BaseException as err:
            self._close()
            raise self._translate(err) from None

    def __exit__(self, kind, err, tb) -> None:
        self._close()
        if err is not None and not isinstance(err, InputError):
            translated = self._translate(err)
            if translated is not err:
                raise translated from None

    def _close(self) -> None:
        if self.native is not None:
            self.native.close()
        self.handle.close()

    def _translate(self, err: BaseException) -> BaseException:
        import pyarrow as pa

        if isinstance(err, InputError) or (isinstance(err, OSError) and err.errno is not None):
            return err  # ours, or the OS's (a file being written in the block: the disk may be full)
        if isinstance(err, (pa.ArrowException, OSError, ValueError, EOFError)):  # pyarrow's: bad bytes, a short file
            return damaged(self.path, err)
        return err

    def _changed(self, how: str) -> str:
        root = self.path.parent.parent
        return (f"{self.path} was {how} after the map store was opened (an attnvis batch is writing {root}?); "
                "its rows are not read: open the store again (attnvis.load_maps) once the batch is done")


def move_aside(path: Path) -> Path:
    """Rename a damaged shard to ``NAME.damaged`` (``.damaged.2``, … if taken): kept for a look, out of the store."""
    target, n = path.with_name(path.name + DAMAGED_SUFFIX), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{n}")
    os.replace(path, target)
    return target
