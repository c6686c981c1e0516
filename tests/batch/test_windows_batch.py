"""``attnvis batch`` on a windowed-attention model (a tiny Hugging Face Swin, exported to ONNX).

Its blocks' maps have one resolution per stage (10×14, 5×7, 3×4 for a
40×56 input), so the map store keeps a grid per layer. Oracles: ``attnvis
visualize`` (the files, byte for byte), :func:`attnvis.render.window_grid`
of the model's own output (the stored rows, equal), and ``--save images``
(what ``attnvis render`` writes from the store, byte for byte).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import attnvis
from attnvis.batch.stages import THUMB_NAME
from attnvis.cli import main
from tests.batch.test_store import batch, files
from tests.batch.test_store import images as store_images

transformers = pytest.importorskip("transformers")
pytest.importorskip("pyarrow", reason='the map store needs pyarrow: pip install "attnvis[maps]"')

SIZE = (40, 56)
GRIDS = ((10, 14),) * 2 + ((5, 7),) * 2 + ((3, 4),) * 2


@pytest.fixture(scope="module")
def swin(tmp_path_factory) -> str:
    """A tiny random SwinForImageClassification (3 stages, heads 1, 2, 2) on 40×56 inputs, exported once."""
    from attnvis.export import export_onnx
    from attnvis.sources import load_source
    from tests.export.test_export_swin import save_tiny_swin

    directory = tmp_path_factory.mktemp("swin")
    save_tiny_swin(directory)
    export_onnx(load_source(str(directory / "model")), directory / "swin.onnx", validate=False)
    return str(directory / "swin.onnx")


def images(folder: Path, n: int, size=(80, 60)) -> list[Path]:
    return store_images(folder, n, size)


FLAGS = {"default": [], "heads+raw": ["--no-avg-heads", "--save-raw"],
         "one head": ["--layer", "3", "--head", "1", "--colormap", "viridis", "--alpha", "0.3"]}


@pytest.mark.parametrize("flags", list(FLAGS.values()), ids=list(FLAGS))
def test_save_images_writes_the_bytes_of_visualize(swin, tmp_path, flags):
    paths = images(tmp_path / "in", 2)
    assert batch(swin, tmp_path / "in", tmp_path / "out", *flags) == 0
    counts = {"default": 6 * 2, "heads+raw": (1 + 1 + 2 * 4) * 2 + 6, "one head": 2}
    for path in paths:
        key = path.relative_to(tmp_path / "in").as_posix()
        vis = tmp_path / "vis" / key
        assert main(["visualize", "--image", str(path), "--model", swin, "--output", str(vis), "--device", "cpu",
                     *flags]) == 0
        want = {p.name: p.read_bytes() for p in vis.iterdir()}
        got = {p.name: p.read_bytes() for p in (tmp_path / "out" / key).iterdir() if p.name != THUMB_NAME}
        assert len(want) == counts[next(k for k, v in FLAGS.items() if v == flags)] and sorted(got) == sorted(want)
        assert [name for name in want if got[name] != want[name]] == []


def _maps_of(swin: str, path: Path):
    """The model's own maps of one image, as the batch computes them (batch of 4), and its metadata."""
    from attnvis.batch.stages import infer
    from attnvis.runtime import open_model, preprocess

    session = open_model(swin, device="cpu")
    image = np.asarray(Image.open(path).convert("RGB"))
    return infer(session, [preprocess([image], session.metadata.preprocess)[0]], 4)[0][0], session.metadata


def test_store_keeps_each_stage_grid_and_reads_per_layer(swin, tmp_path):
    from attnvis.batch.cores import map_bytes
    from attnvis.render import window_grid, window_head_grids

    paths = images(tmp_path / "in", 3)
    assert batch(swin, tmp_path / "in", tmp_path / "out", "--save", "maps", "--store-heads") == 0
    store = attnvis.load_maps(tmp_path / "out")
    assert store.layout.grids == GRIDS and store.layout.grid == GRIDS[0] and not store.layout.rollout
    attn, meta = _maps_of(swin, paths[1])
    assert map_bytes(meta) == sum(a.nbytes for a in attn)  # the memory budget counts every window
    key = "s1/001.png"
    assert [m.shape for m in store[key]] == list(GRIDS) and all(m.dtype == np.float32 for m in store[key])
    for i, (stored, a) in enumerate(zip(store[key], attn)):
        assert np.array_equal(stored, window_grid(a, meta.layers[i].window))
        assert np.array_equal(store.heads(key)[i], window_head_grids(a, meta.layers[i].window))
    with pytest.raises(ValueError):
        store[key][2][0, 0] = 1.0  # read-only
    assert store.array(layer=2).shape == (3, 5, 7) and np.array_equal(store.array(layer=2)[list(store).index(key)], store[key][2])
    with pytest.raises(ValueError, match=r"grids differ \(10x14, 10x14, 5x7.*store.array\(layer=i\)"):
        store.array()
    frame = store.to_pandas()
    assert [len(frame[f"layer_{i}"][0]) for i in range(6)] == [h * w for h, w in GRIDS]
    assert store.rollout(key) is None


@pytest.mark.parametrize("flags", [[], ["--no-avg-heads", "--format", "jpg"], ["--layer", "2", "--head", "1"]])
def test_render_from_the_store_writes_the_bytes_of_save_images(swin, tmp_path, flags):
    images(tmp_path / "in", 3)
    assert batch(swin, tmp_path / "in", tmp_path / "img", *flags) == 0
    assert batch(swin, tmp_path / "in", tmp_path / "maps", "--save", "maps", "--store-heads") == 0
    assert main(["render", str(tmp_path / "maps"), "--output", str(tmp_path / "r"), *flags, "--model", swin]) == 0
    want, got = files(tmp_path / "img"), files(tmp_path / "r")
    assert len(want) >= 3 * 2 and sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


@pytest.mark.parametrize("view, layer", [("heatmap", 3), ("overlay", 5)])
def test_gallery_draws_each_layer_at_its_stage_grid(swin, tmp_path, chromium, view, layer):
    """``--save both``: the page computes a 5×7 or 3×4 layer from the store as the renderer does."""
    images(tmp_path / "in", 2, size=(320, 240))
    assert batch(swin, tmp_path / "in", tmp_path / "out", "--save", "both", "--store-heads") == 0
    key = list(attnvis.load_maps(tmp_path / "out"))[1]
    url = (tmp_path / "out" / "index.html").as_uri() + f"#page=0&img=1&layer={layer}&view={view}&cmap=jet&alpha=0.5&norm=map"
    dom = chromium(url, "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-state="ready"' in body and 'data-broken="0"' in body, body
    x, y, w, h = (int(v) for v in re.search(r'data-canvas="([\d,]+)"', body).group(1).split(","))
    shot = tmp_path / "shot.png"
    chromium(url, f"--screenshot={shot}")
    pixels = cv2.imread(str(shot))[..., ::-1].astype(int)[y:y + h, x:x + w]
    name = f"{'heatmap' if view == 'heatmap' else 'attn_map'}_layer_{layer}_"
    rendered = next((tmp_path / "out" / key).glob(f"{name}*.png"))  # --save both: the renderer's file beside the store
    diff = np.abs(pixels - np.asarray(Image.open(rendered).convert("RGB")).astype(int)).max(axis=-1)
    assert (w, h) == (320, 240) and (diff <= 1).mean() >= 0.999, f"only {(diff <= 1).mean():.5f} within one level"
    if view == "heatmap":
        assert (diff == 0).all()
