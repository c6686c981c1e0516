"""The export cache: entries are verified before use, a bad one is rebuilt, a killed export's leftovers swept."""

from __future__ import annotations

import os
import time

import pytest

from attnvis.runtime.loader import _verified, exported_path, open_model, sweep_stale_temporaries


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_truncated_cache_entry_is_rebuilt(cache):
    spec = dict(reduce="cls")  # not the shipped default: goes through the cache
    path = exported_path(None, **spec)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])  # a crash mid-copy, a full disk
    assert not _verified(path)
    assert exported_path(None, **spec) == path
    assert _verified(path) and path.stat().st_size > len(good) // 3
    assert open_model(None, reduce="cls").metadata.reduction == "cls"


def test_entry_without_its_seal_is_rebuilt(cache):
    path = exported_path(None, reduce="mean-heads")
    path.with_name(path.name + ".sha256").unlink()
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    exported_path(None, reduce="mean-heads")
    assert path.stat().st_mtime_ns != before
    assert path.with_name(path.name + ".sha256").is_file()


def test_stale_temporaries_are_swept_fresh_ones_kept(tmp_path):
    old, fresh = tmp_path / ".x.onnx.aaaa.tmp", tmp_path / ".y.onnx.bbbb.tmp"
    old.write_bytes(b"killed export")
    fresh.write_bytes(b"export in progress")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert sweep_stale_temporaries(tmp_path) == 1
    assert not old.exists() and fresh.exists()


def test_default_model_is_the_shipped_onnx(cache):
    from attnvis.models import default_onnx_path

    assert exported_path(None) == default_onnx_path()
    assert not cache.exists()  # nothing exported
