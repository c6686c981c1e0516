"""The map store: ``attnvis batch --save maps``, ``attnvis.load_maps``, ``attnvis render`` and the gallery's overlay."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import attnvis
from attnvis.batch.manifest import MANIFEST, load
from attnvis.cli import main
from attnvis.models.tiny import make_scene

pytest.importorskip("pyarrow", reason='the map store needs pyarrow: pip install "attnvis[maps]"')


def scene(seed: int, size=(64, 48)) -> np.ndarray:
    return cv2.resize(make_scene(seed)[0], size, interpolation=cv2.INTER_AREA)


def images(folder: Path, n: int, size=(64, 48), suffix: str = "png") -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"s{i % 2}" / f"{i:03d}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene(i, size)).save(path)
        paths.append(path)
    return paths


def batch(model: str, inputs: Path, out: Path, *args: str) -> int:
    return main(["batch", str(inputs), "--output", str(out), "--model", model, "--device", "cpu", "--no-progress",
                 "--batch-size", "4", *args])


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*_layer_*"))}


def test_a_maps_run_never_imports_pandas(tiny_batch_model, tmp_path):
    """pyarrow's pa.array() and Array.to_numpy() import pandas when it is installed: 0.2-0.5 s of every run."""
    pytest.importorskip("pandas")
    images(tmp_path / "in", 3)
    args = ["batch", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", tiny_batch_model,
            "--device", "cpu", "--no-progress", "--save", "maps"]
    code = f"import sys; from attnvis.cli import main; rc = main({args!r}); print(rc, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.splitlines()[-1] == "0 False"  # and the store and gallery were written
    assert (tmp_path / "out" / "maps").is_dir() and (tmp_path / "out" / "index.html").is_file()


def test_store_round_trip_equals_the_models_maps(tiny_batch_model, tmp_path):
    from attnvis.batch.stages import infer
    from attnvis.render import attention_grid, attention_rollout
    from attnvis.runtime import open_model, preprocess

    paths = images(tmp_path / "in", 6)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps", "--store-heads") == 0
    assert not list((tmp_path / "out").rglob("*_layer_*"))  # maps only: no per-layer image file
    store = attnvis.load_maps(tmp_path / "out")
    session = open_model(tiny_batch_model, device="cpu")
    assert store.metadata.to_props() == session.metadata.to_props() and len(store) == 6
    assert sorted(store) == sorted(f"s{i % 2}/{i:03d}.png" for i in range(6))
    for path in paths[:2]:
        key = path.relative_to(tmp_path / "in").as_posix()
        image = np.asarray(Image.open(path).convert("RGB"))
        attn = infer(session, [preprocess([image], session.metadata.preprocess)[0]], 4)[0][0]
        expected = np.stack([attention_grid(a, session.metadata.tokens) for a in attn])
        assert store[key].dtype == np.float32 and store[key].shape == (2, 4, 4)
        assert np.array_equal(store[key], expected)
        assert np.array_equal(store.heads(key)[1][1], attention_grid(attn[1], session.metadata.tokens, head=1))
        assert np.allclose(store.rollout(key).ravel(), attention_rollout(attn)[0, 1:], atol=1e-6)  # the reference rollout
        assert store.size(key) == (48, 64) and store.source(key) == str(path.resolve())
        with pytest.raises(ValueError):
            store[key][0, 0, 0] = 1.0  # read-only
    table = store.table()
    assert table.column("image").to_pylist() == list(store) and table.schema.metadata[b"attnvis.layers"]
    assert np.array_equal(store.array()[2], store[list(store)[2]])
    frame = store.to_pandas()
    assert len(frame) == 6 and np.array_equal(np.stack(frame["layer_1"]).reshape(6, 4, 4), store.array()[:, 1])
    record = load(tmp_path / "out" / MANIFEST)[list(store)[0]]
    assert record["status"] == "ok" and record["store"] == "maps/part-000000.parquet" and record["maps"] == []
    assert record["files"] == [] and record["thumb"] is None


def test_save_maps_keeps_the_thumbnails_in_the_store_and_writes_no_image_folder(tiny_batch_model, tmp_path):
    from attnvis.batch.stages import THUMB_WIDTH

    images(tmp_path / "in", 5, size=(320, 240))
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["gallery", "maps"]  # no s0/, s1/
    store = attnvis.load_maps(tmp_path / "out")
    assert store.layout.thumbs and "thumbnail" in store.table().column_names
    for key in store:
        thumb = cv2.imdecode(np.frombuffer(store.thumbnail(key), np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape == (THUMB_WIDTH * 240 // 320, THUMB_WIDTH, 3)
    page = (tmp_path / "out" / "gallery" / "page_0000.js").read_text()
    number, entries, thumbs = json.loads(page.removeprefix("attnvisGallery.page(").removesuffix(");\n"))
    assert number == 0 and len(entries) == len(thumbs) == 5  # the page carries them: no file to load
    assert [base64.b64decode(t) for t in thumbs] == [store.thumbnail(e["key"]) for e in entries]
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "both", "--save", "both") == 0
    both = attnvis.load_maps(tmp_path / "both")  # --save both: the thumbnail is a file in the image's folder
    assert not both.layout.thumbs and both.thumbnail(key) is None and (tmp_path / "both" / key / "thumbnail.jpg").is_file()


@pytest.mark.parametrize("flags", [[], ["--layer", "1", "--colormap", "viridis", "--alpha", "0.3"],
                                   ["--no-avg-heads", "--format", "jpg"], ["--head", "1"]])
def test_render_from_the_store_writes_the_bytes_of_save_images(tiny_batch_model, tmp_path, flags):
    images(tmp_path / "in", 3, size=(80, 60))
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "img", *flags) == 0
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "maps", "--save", "maps", "--store-heads") == 0
    assert main(["render", str(tmp_path / "maps"), "--output", str(tmp_path / "r"), *flags]) == 0
    want = {p.relative_to(tmp_path / "img").as_posix(): p.read_bytes() for p in (tmp_path / "img").rglob("*_layer_*")}
    got = {p.relative_to(tmp_path / "r").as_posix(): p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert len(want) >= 3 * 2 and sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


def test_save_both_writes_files_and_store_and_render_picks_images(tiny_batch_model, tmp_path, capsys):
    images(tmp_path / "in", 4)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "both", "--save", "both") == 0
    assert len(attnvis.load_maps(tmp_path / "both")) == 4 and len(files(tmp_path / "both")) == 4 * 4
    assert main(["render", str(tmp_path / "both"), "--output", str(tmp_path / "r"), "--image", "s1/001.png"]) == 0
    assert sorted(p.parent.name for p in (tmp_path / "r").rglob("*_layer_*")) == ["001.png"] * 4
    assert main(["render", str(tmp_path / "both"), "--output", str(tmp_path / "r"), "--image", "nope.png"]) == 2
    assert "--image 'nope.png' is not in the map store" in capsys.readouterr().err


def test_render_refuses_no_store_and_another_model_and_renders_what_it_can(tiny_batch_model, tmp_path, capsys):
    paths = images(tmp_path / "in", 4)
    assert main(["render", str(tmp_path / "in"), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no map store here" in err and len(err.splitlines()) == 1
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0
    assert main(["render", str(tmp_path / "out"), "--output", str(tmp_path / "r"), "--model", "default"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds maps of another model" in err and "--model default" in err and len(err.splitlines()) == 1
    assert main(["render", str(tmp_path / "out"), "--output", str(tmp_path / "r"), "--head", "0"]) == 2
    assert "--store-heads" in capsys.readouterr().err
    paths[1].rename(tmp_path / "moved.png")
    capsys.readouterr()
    assert main(["render", str(tmp_path / "out"), "--output", str(tmp_path / "r"), "--model", tiny_batch_model]) == 3
    out = capsys.readouterr().out
    assert "3 images rendered" in out and re.search(r"not rendered: s1/001\.png \(source .*001\.png\): file not found", out)
    assert len(list((tmp_path / "r").rglob("*_layer_*"))) == 3 * 4


def test_another_models_store_is_refused_by_batch(tiny_batch_model, tmp_path, capsys):
    images(tmp_path / "in", 2)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps", "--store-heads") == 2
    assert "holds maps of another model or --store-heads setting" in capsys.readouterr().err


def test_rerun_and_resume_keep_every_image_once(tiny_batch_model, tmp_path, monkeypatch):
    from attnvis.batch import store as st

    monkeypatch.setattr(st, "SHARD_ROWS", 3)
    images(tmp_path / "in", 8)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0
    store = attnvis.load_maps(tmp_path / "out")
    assert len(store.shards) == 3
    first = dict(store.items())  # read now: the next runs rewrite the shards
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0  # no --resume: all redone
    again = attnvis.load_maps(tmp_path / "out")  # raises if an image were stored twice
    assert len(again) == 8 and all(np.array_equal(first[k], again[k]) for k in first)
    manifest = tmp_path / "out" / MANIFEST  # s0/000.png's line lost: --resume redoes it, and it is stored once
    manifest.write_bytes(b"".join(line for line in manifest.read_bytes().splitlines(keepends=True)
                                  if json.loads(line).get("key") != "s0/000.png"))
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps", "--resume") == 0
    resumed = attnvis.load_maps(tmp_path / "out")
    assert len(resumed) == 8 and np.array_equal(resumed["s0/000.png"], first["s0/000.png"])
    manifest = tmp_path / "out" / MANIFEST  # killed after a shard's rename, before its manifest lines:
    manifest.write_bytes(b"".join(manifest.read_bytes().splitlines(keepends=True)[:-2]))
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps", "--resume") == 0
    final = attnvis.load_maps(tmp_path / "out")
    assert len(final) == 8 and all(np.array_equal(first[k], final[k]) for k in first)


def test_shards_are_written_a_row_group_at_a_time(tiny_batch_model, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from attnvis.batch import store as st

    images(tmp_path / "in", 8)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "whole", "--save", "maps") == 0
    monkeypatch.setattr(st, "SHARD_ROWS", 5)
    monkeypatch.setattr(st, "ROW_GROUP", 2)  # rows reach the shard's file two at a time, before it is renamed
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0
    store, whole = attnvis.load_maps(tmp_path / "out"), attnvis.load_maps(tmp_path / "whole")
    groups = [[f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
              for f in (pq.ParquetFile(path) for path in store.shards)]
    assert groups == [[2, 2, 1], [2, 1]]
    assert list(store) == list(whole) and all(np.array_equal(store[k], whole[k]) and store.thumbnail(k) == whole.thumbnail(k)
                                              and np.array_equal(store.rollout(k), whole.rollout(k)) for k in whole)
    assert not [p for p in (tmp_path / "out" / "maps").iterdir() if p.name.endswith(".tmp")]
    from attnvis.batch.gallery import maps as gm  # the gallery's map scripts, read a row group at a time

    monkeypatch.setattr(gm, "CHUNK_BYTES", 3 * 4 * gm._floats_per_row(store.layout))  # 3 rows a script: across groups
    for path in (tmp_path / "out" / "gallery" / "maps").iterdir():
        path.unlink()
    gm.write_map_scripts(tmp_path / "out", "gallery")
    for path in store.shards:
        scripts = sorted((tmp_path / "out" / "gallery" / "maps").glob(f"{path.stem}_*.js"))
        data = [re.search(r',"([^"]*)"\);', p.read_text()).group(1) for p in scripts]
        rows = np.concatenate([np.frombuffer(base64.b64decode(d), "<f4") for d in data])
        assert [len(base64.b64decode(d)) // (4 * gm._floats_per_row(store.layout)) for d in data][:1] == [3]
        assert np.array_equal(rows, gm._rows(pq.read_table(path), store.layout).ravel())


_KILLABLE = """
import sys
import attnvis.batch.store as store
store.SHARD_ROWS = 4
store.ROW_GROUP = 2
from attnvis.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("lines", [4, 9])  # just after a shard's manifest lines began; mid-run
def test_sigkill_then_resume_stores_every_image_exactly_once(tiny_batch_model, tmp_path, lines, run_until_killed):
    images(tmp_path / "in", 40, size=(320, 240), suffix="jpg")
    args = [str(tmp_path / "in"), "--model", tiny_batch_model, "--device", "cpu", "--no-progress", "--batch-size", "4",
            "--workers", "2", "--save", "maps", "--no-gallery"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert subprocess.run([sys.executable, "-c", _KILLABLE, "batch", *args, "--output", str(full)]).returncode == 0
    run_until_killed([sys.executable, "-c", _KILLABLE, "batch", *args, "--output", str(killed)], killed / MANIFEST, lines)
    assert 0 < len(load(killed / MANIFEST)) < 40
    assert subprocess.run([sys.executable, "-c", _KILLABLE, "batch", *args, "--output", str(killed), "--resume"]).returncode == 0
    want, got = attnvis.load_maps(full), attnvis.load_maps(killed)  # load_maps refuses an image stored twice
    assert list(got) == list(want) and got.table().num_rows == 40
    assert [k for k in want if not np.array_equal(want[k], got[k]) or want.rollout(k).tobytes() != got.rollout(k).tobytes()] == []
    assert not [p for p in (killed / "maps").iterdir() if p.name.endswith(".tmp")]
    assert all(r["status"] == "ok" and r["store"] for r in load(killed / MANIFEST).values())


@pytest.mark.parametrize("view, alpha, cmap, layer", [("overlay", 0.5, "jet", 1), ("overlay", 0.3, "jet", 0),
                                                      ("heatmap", 0.5, "viridis", 2)])
def test_gallery_overlay_in_chromium_equals_the_python_renderer(tiny_batch_model, tmp_path, chromium, view, alpha, cmap, layer):
    from attnvis.render import render_map

    images(tmp_path / "in", 3, size=(320, 240))
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "out", "--save", "maps") == 0
    store = attnvis.load_maps(tmp_path / "out")
    key = list(store)[1]  # entry 1 of page 0: the gallery lists the images in key order
    url = (tmp_path / "out" / "index.html").as_uri() + f"#page=0&img=1&layer={layer}&view={view}&cmap={cmap}&alpha={alpha}&norm=map"
    dom = chromium(url, "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-state="ready"' in body and 'data-broken="0"' in body, body
    assert dom.count('src="data:image/jpeg;base64,') == 3  # the page script's thumbnails, shown
    assert '<button class="">rollout</button>' in dom or '<button class="on">rollout</button>' in dom
    grid = store.rollout(key) if layer == 2 else store[key][layer]  # layer 2 of the 2-layer model: the rollout
    heat, over = render_map(grid, np.asarray(Image.open(store.source(key)).convert("RGB")), cmap, alpha)
    x, y, w, h = (int(v) for v in re.search(r'data-canvas="([\d,]+)"', body).group(1).split(","))
    assert (w, h) == (320, 240)
    shot = tmp_path / "shot.png"
    chromium(url, f"--screenshot={shot}")
    pixels = cv2.imread(str(shot))[..., ::-1].astype(int)[y:y + h, x:x + w]
    diff = np.abs(pixels - (heat if view == "heatmap" else over).astype(int)).max(axis=-1)
    assert (diff <= 1).mean() >= 0.999, f"only {(diff <= 1).mean():.5f} of pixels within one level"
    if view == "heatmap":
        assert (diff == 0).all()  # the browser's levels are Python's, pixel for pixel




def test_ray_engine_writes_the_same_store_as_the_local_engine(tiny_batch_model, tmp_path):
    pytest.importorskip("ray.data", reason='Ray is not installed: pip install "attnvis[ray]"')
    images(tmp_path / "in", 10)
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "local", "--save", "maps", "--store-heads") == 0
    assert batch(tiny_batch_model, tmp_path / "in", tmp_path / "ray", "--save", "maps", "--store-heads",
                 "--engine", "ray", "--workers", "1") == 0
    local, ray = attnvis.load_maps(tmp_path / "local"), attnvis.load_maps(tmp_path / "ray")
    assert list(ray) == list(local) and ray.metadata.to_props() == local.metadata.to_props()
    for key in local:
        assert np.array_equal(ray[key], local[key]) and ray.source(key) == local.source(key)
        assert all(np.array_equal(a, b) for a, b in zip(ray.heads(key), local.heads(key)))
        assert np.array_equal(ray.rollout(key), local.rollout(key)) and ray.thumbnail(key) == local.thumbnail(key)
