"""``index.html``: a gallery of a batch's outputs that works from the file system.

The page itself is ``index.html``, ``gallery.js`` and ``gallery.css``, package
data beside this module. Browsers refuse ``fetch`` on ``file://`` pages, so the data travels as
scripts: ``gallery/run.js`` (run facts) and ``gallery/page_NNNN.js`` (up to
:data:`PAGE_SIZE` images each, loaded when their page is shown), each calling
``attnvisGallery.*``. A ``--save maps`` run's thumbnails are in its map store,
not in files: a page script carries its images' thumbnails as ``data:`` URLs. The page shows thumbnails; clicking one opens its maps
with buttons for layers, heads, overlay/heatmap, one per explanation method
(``batch --method``: the relevance maps, beside the layers, and the predicted
and explained classes) and, for captioning models, the caption's words. The URL hash keeps the view (``#page=0&img=3&layer=1``),
so a view can be linked or opened by a test.

When every ``<img>`` on screen has finished loading, ``<body>`` gets
``data-state="ready"``, ``data-loaded`` and ``data-broken`` (images that
failed to load): what the headless-browser test checks.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from attnvis.metadata import ModelMetadata
from attnvis.relevance import labels_of

PAGE_SIZE = 200
GALLERY_DIR = "gallery"
_STATIC = ("gallery.js", "maps.js", "gallery.css")  # package data beside this module, copied next to the page


def gallery_entry(record: dict, relative: "_Relative") -> dict:
    """The compact form of a manifest record the page needs (source paths made relative to the output by ``relative``)."""
    entry = {"key": record["key"], "status": record["status"]}
    if record["status"] != "ok":
        entry["error"] = record.get("error") or "failed"
        return entry
    entry.update(thumb=record.get("thumb"), size=record.get("size"), prediction=record.get("prediction"),
                 maps=[[m["layer"], m.get("head"), m["overlay"], m["heatmap"], m.get("word")] for m in record.get("maps", [])])
    if record.get("words"):
        entry["words"] = record["words"]
    explained = record.get("explained")
    if explained:  # --method: [top-1 class, its probability, class explained]; the relevance files (images mode)
        entry["verdict"] = [explained["prediction"], explained["probability"], explained["target"]]
        entry["rel"] = [[f["method"], f["overlay"], f["heatmap"]] for f in explained.get("files") or ()]
    if record.get("head_grids") and record.get("source"):  # head previews drawn over the source image
        entry["grids"] = record["head_grids"]
        entry["src"] = relative(record["source"])
    return entry


class _Relative:
    """Source paths relative to the output root, as URLs; ``os.path.relpath`` once per folder, not per image."""

    def __init__(self, root: Path):
        self.root, self.folders = root, {}

    def __call__(self, source: str) -> str:
        folder, name = os.path.split(source)
        if folder not in self.folders:
            self.folders[folder] = Path(os.path.relpath(folder or ".", self.root)).as_posix()
        rel = self.folders[folder]
        return name if rel == "." else f"{rel}/{name}"


def _with_maps(entry: dict, record: dict, store, where: dict, relative: _Relative) -> str | None:
    """An entry whose maps are in the store gets ``m`` ([shard, row]) and ``src`` (the source image, for the
    overlay). Returns the thumbnail the store holds (``--save maps``) in base64, for :func:`_page_script`."""
    if record["status"] != "ok" or record["key"] not in where:
        return None
    entry["m"] = list(where[record["key"]])
    if record.get("source"):
        entry["src"] = relative(record["source"])
    jpeg = None if entry.get("thumb") else store.thumbnail(record["key"])
    return base64.b64encode(jpeg).decode("ascii") if jpeg else None


def _script(call: str, payload) -> bytes:
    # "</" cannot end a <script> block early when the data is loaded as a script file,
    # but escaping it keeps the data safe to inline too.
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")
    return f"attnvisGallery.{call}({data});\n".encode()


def _page_script(number: int, entries: list[dict], thumbs: list[str | None]) -> bytes:
    """``attnvisGallery.page([number, entries, thumbs])``: ``thumbs[i]``, the base64 JPEG of entry i or null,
    becomes its ``thumb`` (a ``data:`` URL) in the page.

    Base64 needs no escaping in a JSON string, so the thumbnails (~90% of a page's bytes) are written
    as they are instead of through ``json.dumps``, which scans every character (with the paths made
    relative once per folder: the gallery of an 800-image ``--save maps`` run in 44 ms instead of 54).
    """
    data = _script("page", [number, entries])
    if not any(thumbs):
        return data
    listed = ",".join("null" if t is None else f'"{t}"' for t in thumbs).encode("ascii")
    return data[:data.rindex(b"]")] + b",[" + listed + b"]])" + b";\n"


def write_gallery(root: str | Path, records: Sequence[dict], meta: ModelMetadata, title: str = "attnvis batch",
                  colormap: str = "jet", alpha: float = 0.5) -> Path:
    """Write ``index.html`` and its data scripts into ``root``.

    Args:
        root: the batch output folder (record paths are relative to it).
        records: manifest records, in display order (ok and failed): a list, or
            :class:`attnvis.batch.manifest.Records` reading them back page by page.
        meta: the model's metadata (layer names for the buttons).
        title: the page title.
        colormap: the run's colormap (head previews are drawn with it).
        alpha: the run's overlay weight.

    Returns:
        The path of ``index.html``.
    """
    from attnvis.batch.gallery.maps import write_map_scripts
    from attnvis.render import COLORMAPS, colormap_table
    from attnvis.render.writers import write_bytes_atomic

    root = Path(root)
    (root / GALLERY_DIR).mkdir(parents=True, exist_ok=True)
    maps, store = write_map_scripts(root, GALLERY_DIR)  # the map store, drawn by the browser (maps.js)
    where = store.locations() if store is not None else {}
    pages, ok = max(1, -(-len(records) // PAGE_SIZE)), 0
    relative = _Relative(root)
    for number in range(pages):  # a page's records at a time: records may be read back lazily (manifest.Records)
        page = records[number * PAGE_SIZE:(number + 1) * PAGE_SIZE]
        ok += sum(r["status"] == "ok" for r in page)
        entries = [gallery_entry(r, relative) for r in page]
        thumbs = [_with_maps(entry, r, store, where, relative) for entry, r in zip(entries, page)]
        write_bytes_atomic(root / GALLERY_DIR / f"page_{number:04d}.js", _page_script(number, entries, thumbs))
    run = {"title": title, "layers": [layer.name for layer in meta.layers], "pages": pages, "pageSize": PAGE_SIZE,
           "total": len(records), "ok": ok, "failed": len(records) - ok, "classes": labels_of(meta),
           "lut": colormap_table(colormap).tobytes().hex(), "alpha": alpha, "colormap": colormap, "maps": maps,
           "luts": {name: colormap_table(name).tobytes().hex() for name in COLORMAPS} if maps else None}
    write_bytes_atomic(root / GALLERY_DIR / "run.js", _script("run", run))
    static = resources.files(__name__)
    for name in _STATIC:
        write_bytes_atomic(root / GALLERY_DIR / name, static.joinpath(name).read_bytes())
    page = static.joinpath("index.html").read_text(encoding="utf-8").replace("{{TITLE}}", _escape(title))
    return write_bytes_atomic(root / "index.html", page.encode("utf-8"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
