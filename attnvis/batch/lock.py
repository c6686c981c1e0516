"""One batch per output folder: a lock file holding the owner's pid, host and start time.

Two runs writing into one folder would delete each other's temporary files
(each sweeps leftovers of killed runs when it starts). The second run
therefore stops at once, naming the holder. A lock whose process is gone
(``kill -9``, a crash) is stale: it is taken over, so ``--resume`` after a
crash needs no manual step.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from attnvis.errors import InputError

LOCK_NAME = ".attnvis-batch.lock"


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

    Raises:
        InputError: another live batch holds the folder (the message names it).
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
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
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
        self.held = True
        return True

    def _break_stale(self) -> None:
        holder = _holder(self.path)
        if holder is not None and holder.get("host") != socket.gethostname():
            raise InputError(f"{self.path.parent} is in use by an attnvis batch on host {holder.get('host')} "
                             f"(pid {holder['pid']}); if none runs there any more, delete {self.path}")
        if holder is not None and _alive(holder["pid"]):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise InputError(f"{self.path.parent} is in use by another attnvis batch (pid {holder['pid']}, since "
                             f"{since}); wait for it to finish or choose another --output")
        if holder is None and time.time() - self._mtime() < 10:
            time.sleep(0.1)  # being written by a run starting right now: look again
            return
        self.path.unlink(missing_ok=True)  # stale: its process is gone

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0
