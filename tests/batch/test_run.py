"""``attnvis batch``: bad files recorded, outputs mirrored, resumable after SIGKILL, same bytes as visualize."""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from attnvis.visualize import VisualizeOptions
from attnvis.batch.inputs import discover
from attnvis.batch.manifest import MANIFEST, Manifest, load
from attnvis.cli import main
from attnvis.errors import InputError
from attnvis.models.tiny import make_scene
from attnvis.batch.run import EXIT_SOME_FAILED, BatchConfig, run_batch

SEED_FILES = [f"{kind}_layer_{i}_blocks.{i}.attn.png" for i in range(2) for kind in ("attn_map", "heatmap")]


def scene(seed: int, size=(64, 48)) -> np.ndarray:
    return cv2.resize(make_scene(seed)[0], size, interpolation=cv2.INTER_AREA)


def save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(rgb).save(path)
    return path


def batch(model: str, *args: str) -> int:
    return main(["batch", *args, "--model", model, "--device", "cpu", "--no-progress", "--batch-size", "4"])


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root except the manifest (its lines carry times), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height but holds no pixel data: only a header check refuses it cleanly."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def make_bad_files(folder: Path) -> dict[str, str]:
    """One file of each bad kind → the words its manifest reason must contain."""
    good = io.BytesIO()
    Image.fromarray(scene(1)).save(good, "JPEG")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    Image.fromarray(np.random.default_rng(0).random((48, 64), dtype=np.float32)).save(folder / "float.tif")
    (folder / "huge.png").write_bytes(huge_png_header(5000, 5000))
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not an image",
            "float.tif": "unsupported pixel mode F", "huge.png": "--max-pixels"}


def test_bad_files_are_recorded_and_every_good_image_is_rendered(tiny_batch_model, tmp_path):
    good = [save(tmp_path / "in" / f"good{i:02d}.{'jpg' if i % 2 else 'png'}", scene(i)) for i in range(20)]
    bad = make_bad_files(tmp_path / "in" / "bad")  # 1 of each kind in 25 files: 4% each
    out = tmp_path / "out"
    assert batch(tiny_batch_model, str(tmp_path / "in"), "--output", str(out), "--max-pixels", "1000000") == EXIT_SOME_FAILED
    records = load(out / MANIFEST)
    for path in good:
        key = path.name
        assert records[key]["status"] == "ok"
        assert sorted(os.listdir(out / key)) == sorted(SEED_FILES + ["thumbnail.jpg"])
        overlay = cv2.imread(str(out / key / SEED_FILES[0]))
        assert overlay.shape == (48, 64, 3)
    for name, words in bad.items():
        record = records[f"bad/{name}"]
        assert record["status"] == "failed" and words in record["error"] and "\n" not in record["error"], record
        assert not (out / "bad" / name).exists()
    assert len(records) == len(good) + len(bad)


def test_equal_names_in_two_subfolders_do_not_collide(tiny_batch_model, tmp_path):
    save(tmp_path / "in" / "a" / "x.png", scene(1))
    save(tmp_path / "in" / "b" / "x.png", scene(2))
    out = tmp_path / "out"
    assert batch(tiny_batch_model, str(tmp_path / "in"), "--output", str(out)) == 0
    a, b = (out / sub / "x.png" / SEED_FILES[0] for sub in "ab")
    assert a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes()
    grids = load(out / MANIFEST)["a/x.png"]["head_grids"]  # every head's grid, for the gallery's head buttons
    assert grids["grid"] == [4, 4] and [len(grids["layers"][str(i)]) for i in range(2)] == [2, 2]


def test_inputs_from_folder_glob_and_list_file(tmp_path):
    for sub in ("p", "q/r"):
        save(tmp_path / sub / "img.png", scene(3))
    (tmp_path / "q" / "notes.md").write_text("not picked up from a folder")
    (tmp_path / "list.txt").write_text("# one path per line\np/img.png\n\n")
    assert [i.key for i in discover([str(tmp_path / "q")])] == ["r/img.png"]
    assert [i.key for i in discover([str(tmp_path / "*" / "img.png")])] == ["p/img.png"]
    assert [i.key for i in discover([str(tmp_path / "list.txt"), str(tmp_path / "q")])] == ["p/img.png", "q/r/img.png"]
    save(tmp_path / "q" / "out" / "r" / "img.png" / "attn_map.png", scene(4))  # an earlier run's output inside the input
    assert [i.key for i in discover([str(tmp_path / "q")], exclude=tmp_path / "q" / "out")] == ["r/img.png"]


def test_batch_writes_the_same_bytes_as_visualize(tiny_batch_model, tmp_path):
    from attnvis.visualize import visualize_attention_on_image

    save(tmp_path / "in" / "one.png", scene(5, (80, 60)))
    assert batch(tiny_batch_model, str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--no-avg-heads", "--save-raw") == 0
    result = visualize_attention_on_image(tiny_batch_model, tmp_path / "in" / "one.png", tmp_path / "vis", avg_heads=False,
                                          save_raw=True, device="cpu")
    assert len(result.files) == 2 * 2 * 2 + 2  # layers × heads × (overlay, heatmap) + raw
    for path in result.files:
        assert (tmp_path / "out" / "one.png" / path.name).read_bytes() == path.read_bytes(), path.name
    maps = load(tmp_path / "out" / MANIFEST)["one.png"]["maps"]
    assert [(m["layer"], m["head"]) for m in maps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert maps[3]["overlay"] == "one.png/attn_map_layer_1_blocks.1.attn_head_1.png"


def test_resume_skips_complete_images_and_redoes_missing_files(tiny_batch_model, tmp_path, capsys):
    for i in range(6):
        save(tmp_path / "in" / f"{i}.png", scene(i))
    args = (str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    assert batch(tiny_batch_model, *args) == 0
    (tmp_path / "out" / "3.png" / SEED_FILES[1]).unlink()
    capsys.readouterr()
    assert batch(tiny_batch_model, *args, "--resume") == 0
    assert "1 done, 5 skipped" in capsys.readouterr().out
    assert (tmp_path / "out" / "3.png" / SEED_FILES[1]).is_file()
    assert batch(tiny_batch_model, *args, "--resume", "--colormap", "viridis") == 0  # other options: nothing is skipped
    assert "6 done, 0 skipped" in capsys.readouterr().out


def test_summary_names_the_gallery_only_when_written(tiny_batch_model, tmp_path, capsys):
    save(tmp_path / "in" / "a.png", scene(0))
    assert batch(tiny_batch_model, str(tmp_path / "in"), "--output", str(tmp_path / "plain"), "--no-gallery") == 0
    assert "gallery:" not in capsys.readouterr().out and not (tmp_path / "plain" / "index.html").exists()
    assert batch(tiny_batch_model, str(tmp_path / "in"), "--output", str(tmp_path / "shown")) == 0
    assert f"gallery: {tmp_path / 'shown' / 'index.html'}" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("colormap", "rainbow"), ("format", "bmp"), ("alpha", 1.5)])
def test_bad_render_options_are_refused_before_any_work(tmp_path, option, value):
    save(tmp_path / "in" / "a.png", scene(0))
    options = VisualizeOptions(**{option: value})
    with pytest.raises(InputError, match=f"--{option}"):
        run_batch(BatchConfig([str(tmp_path / "in")], str(tmp_path / "out"), model="default", options=options))
    assert not (tmp_path / "out").exists()


def test_renderer_warm_up_overlaps_the_model_opening_and_its_errors_surface(monkeypatch, tmp_path):
    import threading

    from attnvis.batch import stages
    from attnvis.errors import AttnvisError

    save(tmp_path / "in" / "a.png", scene(0))
    release, finished = threading.Event(), threading.Event()

    def slow(options):  # still loading...
        release.wait(30)
        finished.set()

    monkeypatch.setattr(stages, "warm_up", slow)
    config = BatchConfig([str(tmp_path / "in")], str(tmp_path / "out"), model=str(tmp_path / "missing.onnx"))
    with pytest.raises(AttnvisError, match="missing.onnx"):  # ...yet a model that does not open is reported
        run_batch(config)
    assert not finished.is_set()  # without waiting for it
    release.set()

    def broken(options):
        raise RuntimeError("kernel cache unreadable")

    monkeypatch.setattr(stages, "warm_up", broken)
    with pytest.raises(RuntimeError, match="kernel cache unreadable"):
        run_batch(BatchConfig([str(tmp_path / "in")], str(tmp_path / "out"), model="default"))


def test_manifest_ignores_and_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / MANIFEST
    path.write_bytes(b'{"key": "a", "status": "ok"}\n{"key": "b", "status": "ok"}\n{"key": "c", "sta')
    assert sorted(load(path)) == ["a", "b"]
    with Manifest(path) as manifest:
        manifest.append({"key": "d", "status": "failed"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "d"]


def test_sigkill_then_resume_gives_exactly_the_files_of_an_uninterrupted_run(tiny_batch_model, tmp_path, run_until_killed):
    n = 48
    for i in range(n):
        save(tmp_path / "in" / f"s{i % 4}" / f"{i:03d}.jpg", scene(i, (320, 240)))
    args = [str(tmp_path / "in"), "--model", tiny_batch_model, "--device", "cpu", "--no-progress", "--batch-size", "4", "--workers", "2"]
    assert main(["batch", *args, "--output", str(tmp_path / "full")]) == 0
    killed = tmp_path / "killed"
    run_until_killed([sys.executable, "-m", "attnvis.cli", "batch", *args, "--output", str(killed)], killed / MANIFEST, 8)
    assert 0 < len(load(killed / MANIFEST)) < n
    assert main(["batch", *args, "--output", str(killed), "--resume"]) == 0
    expected, got = tree(tmp_path / "full"), tree(killed)
    assert sorted(got) == sorted(expected)  # no partial or temporary file left, none missing
    assert [k for k in got if got[k] != expected[k]] == []
    assert all(r["status"] == "ok" for r in load(killed / MANIFEST).values())


def test_manifest_records_read_back_the_last_line_of_each_key_in_the_asked_order(tmp_path):
    from attnvis.batch.manifest import MANIFEST, Manifest, Records

    with Manifest(tmp_path / MANIFEST) as manifest:
        for key, status in [("a", "failed"), ("b", "ok"), ("a", "ok"), ("c", "ok")]:
            manifest.append({"key": key, "status": status})
    (tmp_path / MANIFEST).open("ab").write(b'{"key": "d", "sta')  # a torn last line is not a record
    records = Records(tmp_path / MANIFEST, ["c", "a", "missing", "d", "b"])
    assert len(records) == 3 and [r["key"] for r in records] == ["c", "a", "b"]
    assert records[1] == {"key": "a", "status": "ok"} and records[1:] == [records[1], records[2]]
