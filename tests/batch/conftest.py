"""Fixtures of the batch tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest


def _run_until_killed(cmd: list[str], manifest: Path, lines: int, timeout: float = 120.0) -> None:
    """Start ``cmd``, SIGKILL it once ``manifest`` has ``lines`` lines (the batch must still be running)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file() and manifest.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the batch ended before it could be killed; give it more images"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture()
def run_until_killed():
    """``run_until_killed(cmd, manifest, lines)``: a batch killed with SIGKILL mid-run."""
    return _run_until_killed


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def chromium(tmp_path):
    """``chromium(url, *flags)``: headless Chromium's stdout (``--dump-dom``, ``--screenshot=FILE``); skips without it."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
             "--window-size=1000,900", "--force-device-scale-factor=1", "--hide-scrollbars", "--force-color-profile=srgb"]

    def run(url: str, *extra: str) -> str:
        return subprocess.run([CHROMIUM, *flags, *extra, url], capture_output=True, text=True, timeout=90).stdout

    return run
