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


def test_cache_key_tells_random_weights_and_weight_bytes_apart(tmp_path):
    from attnvis.runtime.loader import _cache_key

    spec = "timm:vit_tiny_patch16_224"
    assert _cache_key(spec, None, "none", None, random_weights=True) != _cache_key(spec, None, "none", None)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"a" * 64)
    stat = weights.stat()
    first = _cache_key(spec, str(weights), "none", None)
    weights.write_bytes(b"b" * 64)  # other weights, same path, size and mtime
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _cache_key(spec, str(weights), "none", None) != first


@pytest.fixture(scope="module")
def random_timm_cache(tmp_path_factory):
    """A cache holding a random-weight export of a timm ViT, made by ``visualize --random-weights``."""
    pytest.importorskip("timm")
    from attnvis.cli import main
    from attnvis.models import sample_image_path

    cache = tmp_path_factory.mktemp("random-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNVIS_CACHE", str(cache))
        assert main(["visualize", "--image", str(sample_image_path()), "--model", "timm:vit_tiny_patch16_224",
                     "--random-weights", "--layer", "0", "--output", str(cache / "o")]) == 0
    assert list((cache / "onnx").glob("*.onnx"))
    return cache


@pytest.mark.parametrize("command", ["visualize", "batch"])
def test_a_random_weight_export_is_not_used_without_random_weights(random_timm_cache, tmp_path, capsys,
                                                                  monkeypatch, command):
    from attnvis.cli import main
    from attnvis.models import sample_image_path

    monkeypatch.setenv("ATTNVIS_CACHE", str(random_timm_cache))
    image = ["--image", str(sample_image_path())] if command == "visualize" else [str(sample_image_path()),
                                                                                   "--no-progress"]
    capsys.readouterr()
    code = main([command, *image, "--model", "timm:vit_tiny_patch16_224", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "--weights" in err and "--random-weights" in err, err
