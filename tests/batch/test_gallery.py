"""The batch gallery: data scripts, and a headless Chromium check that every image loads from file://."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnvis.metadata import LayerInfo, ModelMetadata
from attnvis.batch.gallery import GALLERY_DIR, write_gallery
from attnvis.render import encode_image

META = ModelMetadata(layers=[LayerInfo(f"blocks.{i}.attn", "self", 2, 17, 17) for i in range(2)])
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:] = colour
    rgb[10:30, 20:40] = 255 - np.asarray(colour, np.uint8)
    path.write_bytes(encode_image(rgb, "jpg" if path.suffix == ".jpg" else "png"))
    return path.as_posix()


def _record(root: Path, key: str, words: list[str] | None = None) -> dict:
    """A manifest record with real files: 2 layers × (mean, head 0, head 1), per caption word if any."""
    maps = []
    for w in range(len(words)) if words else [None]:
        for layer in range(2):
            for head in (None, 0, 1):
                stem = f"layer_{layer}_blocks.{layer}.attn" + ("" if head is None else f"_head_{head}") + ("" if w is None else f"_word_{w}")
                colour = (40 + 100 * layer, 60 * (head or 0), 200)
                maps.append({"layer": layer, "head": head, "word": w,
                             "overlay": _png(root / key / f"attn_map_{stem}.png", colour).removeprefix(root.as_posix() + "/"),
                             "heatmap": _png(root / key / f"heatmap_{stem}.png", colour[::-1]).removeprefix(root.as_posix() + "/")})
    thumb = _png(root / key / "thumbnail.jpg", (0, 160, 90)).removeprefix(root.as_posix() + "/")
    record = {"key": key, "status": "ok", "maps": maps, "thumb": thumb, "size": [48, 64], "prediction": "circle"}
    return record | ({"words": words} if words else {})


def _mean_only_record(root: Path, key: str) -> dict:
    """As a default run writes it: mean-head files only, every head's 4×4 grid for the browser preview."""
    import base64

    record = _record(root, key)
    record["maps"] = [m for m in record["maps"] if m["head"] is None]
    grids = [base64.b64encode((np.arange(16, dtype=np.uint8) * (h + 1)).tobytes()).decode() for h in range(2)]
    record["head_grids"] = {"grid": [4, 4], "layers": {"0": grids, "1": grids}}
    record["source"] = _png(root.parent / "inputs" / key, (200, 30, 30))
    return record


@pytest.fixture
def site(tmp_path) -> Path:
    records = [_record(tmp_path, "a/x.png"), _record(tmp_path, "b/x.png"),
               {"key": "bad.jpg", "status": "failed", "error": "bad.jpg: the file is empty (0 bytes)"},
               _record(tmp_path, "odd name #1?.png", words=["a", "red", "circle"]), _mean_only_record(tmp_path, "plain.png")]
    write_gallery(tmp_path, records, META, title="test <gallery>")
    return tmp_path


def _data(path: Path):
    call = re.fullmatch(r"attnvisGallery\.(\w+)\((.*)\);\n", path.read_text(encoding="utf-8"), re.S)
    return call.group(1), json.loads(call.group(2))


def test_gallery_data_scripts_carry_layers_heads_words_and_failures(site):
    kind, run = _data(site / GALLERY_DIR / "run.js")
    assert kind == "run" and run["layers"] == ["blocks.0.attn", "blocks.1.attn"] and (run["ok"], run["failed"]) == (4, 1)
    kind, (number, entries) = _data(site / GALLERY_DIR / "page_0000.js")
    assert (kind, number, len(entries)) == ("page", 0, 5)
    assert entries[4]["src"] == "../inputs/plain.png" and entries[4]["grids"]["grid"] == [4, 4]
    assert entries[2] == {"key": "bad.jpg", "status": "failed", "error": "bad.jpg: the file is empty (0 bytes)"}
    assert entries[3]["words"] == ["a", "red", "circle"] and len(entries[3]["maps"]) == 3 * 2 * 3
    html = (site / "index.html").read_text()
    assert "<title>test &lt;gallery&gt;</title>" in html and "fetch(" not in html  # file:// forbids fetch


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--window-size=1000,800"]
    return subprocess.run([CHROMIUM, *flags, *extra, url], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_gallery_images_load_in_headless_chromium(site, tmp_path):
    dom = _chromium((site / "index.html").as_uri(), tmp_path, "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-state="ready"' in body and 'data-broken="0"' in body and 'data-loaded="4"' in body, body
    assert "bad.jpg: the file is empty" in dom
    # Open the captioned image at word 2, layer 1, head 1, heatmap view (as clicking would).
    view = "#page=0&img=3&layer=1&head=1&view=heatmap&word=2"
    dom = _chromium((site / "index.html").as_uri() + view, tmp_path, "--dump-dom").stdout
    main = re.search(r'<img class="main" src="([^"]+)"', dom).group(1)
    assert main == "odd%20name%20%231%3F.png/heatmap_layer_1_blocks.1.attn_head_1_word_2.png"
    assert 'data-broken="0"' in dom and 'data-loaded="5"' in dom  # 4 thumbnails + the big map
    assert '<button class="on">circle</button>' in dom and '<button class="on">head 1</button>' in dom
    # A head without files (default run): previewed on a canvas over the source image.
    dom = _chromium((site / "index.html").as_uri() + "#page=0&img=4&layer=1&head=1", tmp_path, "--dump-dom").stdout
    assert '<canvas width="64" height="48" class="main">' in dom and 'alt="source"' in dom
    assert 'data-broken="0"' in dom and 'data-loaded="5"' in dom  # 4 thumbnails + the source image


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_gallery_screenshot_shows_the_thumbnails(site, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium((site / "index.html").as_uri(), tmp_path, f"--screenshot={shot}")
    pixels = cv2.imread(str(shot))[..., ::-1]  # RGB
    thumb_green = np.all(np.abs(pixels.astype(int) - (0, 160, 90)) <= 12, axis=-1)  # the thumbnails' colour
    assert thumb_green.sum() > 4 * 150 * 50, "thumbnails are not visible in the screenshot"


@pytest.mark.parametrize("source", ["/data/photos/a b.jpg", "in/x.png", "x.png", "../up/y.jpg", "in/../in/z.jpg"])
def test_source_paths_are_relative_to_the_output_as_relpath_makes_them(tmp_path, monkeypatch, source):
    import os

    from attnvis.batch.gallery import _Relative

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "out" / "run"
    relative = _Relative(root)
    want = Path(os.path.relpath(source, root)).as_posix()
    assert relative(source) == want and relative(source) == want  # the folder's relpath, then from the cache


_NODE_CARD = r"""
const vm = require("vm"), fs = require("fs");
const node = (tag) => ({ tag, kids: [], dataset: {}, append(...k) { this.kids.push(...k); }, addEventListener() {} });
const ctx = { window: { addEventListener() {} }, document: { createElement: node, addEventListener() {}, getElementById: () => node("div") },
              history: { replaceState() {} }, location: { hash: "" }, URLSearchParams, console };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
const G = ctx.window.attnvisGallery;
G.pages = {};
vm.runInContext("S.page = 1", ctx);
const entries = JSON.parse(process.argv[3]);
G.page([0, entries, [null, "QUJD"]]);  // the second entry's thumbnail from the store (--save maps)
ctx.entries = entries;
vm.runInContext("var cards = entries.map((e, i) => card(e, i))", ctx);
console.log(JSON.stringify(ctx.cards.map((c) => c.kids.filter((k) => k.tag === "img").map((k) => k.src))));
"""


def test_gallery_urls_of_files_named_like_a_scheme_are_encoded(tmp_path):
    """A file named ``data:x.jpg`` is a file: its thumbnail's URL is relative, not a ``data:`` URL."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = Path(__file__).resolve().parents[2] / "attnvis" / "batch" / "gallery" / "gallery.js"
    entries = [{"key": "data:x.jpg", "status": "ok", "thumb": "data:x.jpg/thumbnail.jpg", "maps": []},
               {"key": "y.jpg", "status": "ok", "thumb": None, "maps": []}]
    (tmp_path / "card.js").write_text(_NODE_CARD)
    out = subprocess.run([node, str(tmp_path / "card.js"), str(script), json.dumps(entries)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [["data%3Ax.jpg/thumbnail.jpg"], ["data:image/jpeg;base64,QUJD"]]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_gallery_shows_the_thumbnail_of_a_file_named_data_colon(tmp_path):
    record = _record(tmp_path, "data:x.jpg")
    write_gallery(tmp_path, [record, _record(tmp_path, "a#b.png")], META)
    dom = _chromium((tmp_path / "index.html").as_uri() + "#page=0&img=0&layer=1&view=heatmap", tmp_path, "--dump-dom").stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-state="ready"' in body and 'data-broken="0"' in body and 'data-loaded="3"' in body, body
    assert 'src="data%3Ax.jpg/thumbnail.jpg"' in dom
