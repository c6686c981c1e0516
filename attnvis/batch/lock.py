"""One writer per output folder: a lock file holding the owner's command, pid, host and start time.

Two runs writing into one folder (``attnvis batch``, or ``attnvis render``
into its ``--output``) would delete each other's temporary files (each sweeps
leftovers of killed runs when it starts). The second run therefore stops at
once, naming the holder. A lock whose process is gone (``kill -9``, a crash)
is stale: it is taken over, so ``--resume`` after a crash needs no manual step.

Readers of a map store (``attnvis render OUT``) hold a :class:`ReaderLock`
in ``OUT`` (``.attnvis-read-*.lock``, one per reader): a batch starting
there stops while one is alive, and a reader does not start while a batch
holds ``OUT``. Each takes its own file first and then looks for the
other's, so of two starting together at least one sees the other.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from attnvis.errors import InputError

LOCK_NAME = ".attnvis-batch.lock"
READER_PREFIX, READER_SUFFIX = ".attnvis-read-", ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's content, or None when it is unreadable (torn by a crash while being written)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


class OutputLock:
    """``with OutputLock(folder):`` holds ``folder/.attnvis-batch.lock`` for the block.

    Args:
        folder: the output folder.
        command: who holds it (``batch``, ``render``), named to a run that finds it held.

    Raises:
        InputError: another live run holds the folder (the message names it).
    """

    def __init__(self, folder: str | os.PathLike, command: str = "batch"):
        self.path = Path(folder) / LOCK_NAME
        self.command = command
        self.held = False

    def __enter__(self) -> "OutputLock":
        for _ in range(3):  # a stale lock is removed and the take retried
            if self._take():
                return self
            self._break_stale()
        raise InputError(f"cannot take the lock {self.path}: it keeps reappearing; is another batch starting there?")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _take(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}, f)
        self.held = True
        return True

    def _break_stale(self) -> None:
        holder = _holder(self.path)
        if holder is not None and (holder.get("host") != socket.gethostname() or _alive(holder["pid"])):
            raise InputError(f"{_in_use(self.path, holder)}; wait for it to finish or choose another --output")
        if holder is None and time.time() - self._mtime() < 10:
            time.sleep(0.1)  # being written by a run starting right now: look again
            return
        self.path.unlink(missing_ok=True)  # stale: its process is gone

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0


def _in_use(path: Path, holder: dict) -> str:
    """``FOLDER is in use by another attnvis batch (pid N, since T)`` (or on another host)."""
    command = holder.get("command") if holder.get("command") in ("batch", "render") else "batch"
    if holder.get("host") != socket.gethostname():
        return (f"{path.parent} is in use by an attnvis {command} on host {holder.get('host')} (pid {holder['pid']}; "
                f"if none runs there any more, delete {path})")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"{path.parent} is in use by another attnvis {command} (pid {holder['pid']}, since {since})"


def _live(path: Path, remove: bool = False) -> dict | None:
    """The holder of a lock file while it is alive (or on another host); ``remove``: a dead holder's file goes
    (a reader's, named by its pid: no other process takes that name, so removing it races with no one)."""
    holder = _holder(path)
    if holder is None:
        return None
    if holder.get("host") != socket.gethostname() or _alive(holder["pid"]):
        return holder
    if remove:
        path.unlink(missing_ok=True)
    return None


class ReaderLock:
    """``with ReaderLock(folder):`` reads a map store's folder; refused while a live batch writes there.

    Raises:
        InputError: an ``attnvis batch`` (or render into it) holds the folder.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path: Path | None = self.folder / f"{READER_PREFIX}{os.getpid()}-{os.urandom(4).hex()}{READER_SUFFIX}"

    def __enter__(self) -> "ReaderLock":
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:  # no such folder (the store's open says so), or one this user cannot write: read unannounced
            self.path = None
        else:
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": "render"}, f)
        writer = _live(self.folder / LOCK_NAME)
        if writer is not None:
            self.__exit__()
            raise InputError(f"{_in_use(self.folder / LOCK_NAME, writer)}, which is writing its map store; "
                             "wait for it to finish, then run attnvis render again")
        return self

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def check_no_readers(folder: str | os.PathLike) -> None:
    """Under the batch's lock: stop if a live ``attnvis render`` reads the folder's map store.

    Raises:
        InputError: naming the reader (its stale files are removed).
    """
    for entry in os.scandir(folder):
        if entry.name.startswith(READER_PREFIX) and entry.name.endswith(READER_SUFFIX):
            holder = _live(Path(entry.path), remove=True)
            if holder is not None:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
                where = "" if holder.get("host") == socket.gethostname() else f" on host {holder.get('host')}"
                raise InputError(f"{folder} is being read by attnvis render{where} (pid {holder['pid']}, since {since}), "
                                 "which a batch here would disturb; wait for it to finish or choose another --output")
