"""``attnvis evaluate``: every method's maps × every metric, over images or a batch's map store.

Writes ``scores.parquet`` (one row per image × method: each metric's value and curve),
``summary.json`` / ``summary.md`` (methods × metrics: mean and 95% confidence interval) and
``curves.png``. Finished images go to ``OUTPUT/parts/`` as they are done, so ``--resume`` goes on
where a run stopped; nothing half-written is left (temporary name, then rename).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from attnvis.errors import InputError
from attnvis.faithfulness import _ground_truth as gt
from attnvis.faithfulness import methods as methods_mod
from attnvis.faithfulness._model import Classifier, input_maps
from attnvis.faithfulness.metrics import METRICS, check_metrics

DEFAULT_METHODS = ("attention", "rollout")
DEFAULT_METRICS = ("deletion", "insertion", "perturbation", "road")
LOCALISATION = ("pointing-game", "relevance-mass", "relevance-rank")
PARTS = "parts"


@dataclass
class EvaluateConfig:
    """What ``attnvis evaluate`` does (each field is the flag of the same name).

    Attributes:
        inputs: image folders, globs, list files or files; or one ``attnvis batch --save maps`` output folder.
        output: where the scores and summaries go.
        model: any spec attnvis opens (default: the embedded model).
        methods: the maps to score (:func:`attnvis.faithfulness.methods.available`).
        metrics: the metrics (:data:`attnvis.faithfulness.metrics.METRICS`); ``None``: the perturbation
            metrics, and the localisation ones too when ground truth is given.
        boxes: ``--boxes`` JSON; masks: ``--masks`` folder.
        batch_size: images per step (their copies go through the model together).
    """

    inputs: list[str] = field(default_factory=list)
    output: str = "eval"
    model: str | None = None
    methods: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    boxes: str | None = None
    masks: str | None = None
    device: str = "auto"
    batch_size: int = 8
    resume: bool = False
    progress: bool = True
    max_pixels: int | None = None


@dataclass
class Image:
    key: str
    source: str
    stored: dict | None = None  # store mode: method -> grid map


def evaluate(config: EvaluateConfig) -> dict:
    """Run the evaluation; return the summary (as written to ``summary.json``)."""
    from attnvis.faithfulness import report

    have_truth = bool(config.boxes or config.masks)
    metric_names = list(config.metrics or (DEFAULT_METRICS + (LOCALISATION if have_truth else ())))
    metrics = check_metrics(metric_names, have_truth)
    if config.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {config.batch_size}")
    store = _store(config.inputs)
    method_names = list(config.methods or (_stored_methods(store) if store is not None else DEFAULT_METHODS))
    if store is None:
        methods_mod.check_methods(method_names)
    clf = Classifier(config.model or "default", device=config.device)
    explainer = methods_mod.open_explainer(config.model or "default", method_names, config.device) if store is None else None
    images = _store_images(store, method_names, clf) if store is not None else _discover(config)
    truth = _ground_truth(config, images, store)
    out = Path(config.output)
    done = _prepare_output(out, config, method_names, [m.name for m in metrics])
    todo = [im for im in images if im.key not in done]
    start, failed = time.perf_counter(), []
    bar = _progress(len(images), len(images) - len(todo), config.progress)
    for i in range(0, len(todo), config.batch_size):
        chunk = todo[i:i + config.batch_size]
        rows, bad = _score_chunk(clf, chunk, method_names, metrics, truth, config, explainer)
        failed += bad
        _write_part(out, rows)
        bar.update(len(chunk))
    bar.close()
    elapsed = time.perf_counter() - start
    table = report.finish(out, clf, method_names, metrics, len(todo) - len(failed), elapsed, failed)
    return table


# --------------------------------------------------------------------------- inputs


def _store(inputs: list[str]):
    """The map store when the one input is an ``attnvis batch --save maps`` folder, else ``None``."""
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        return None
    from attnvis.batch.store import load_maps, shard_paths

    root = Path(inputs[0])
    if not shard_paths(root):
        if (root / "manifest.jsonl").exists() or (root / "maps").is_dir():
            raise InputError(f"{root}: a batch output without a map store; run attnvis batch with --save maps "
                             "(or evaluate the images themselves)")
        return None
    return load_maps(root)


def _stored_methods(store) -> list[str]:
    layout = store.layout
    found = (["attention"] if layout.layers else []) + (["rollout"] if layout.rollout else [])
    return found + [m for m in methods_mod.EXPLAIN_METHODS if m in layout.methods]


def _store_images(store, method_names: list[str], clf: Classifier) -> list[Image]:
    have = _stored_methods(store) + ["random"]
    for name in method_names:
        if name not in have:
            raise InputError(f"the store in {store.root} has no {name!r} maps (it holds: {', '.join(have[:-1])}); "
                             f"run attnvis batch --save maps{' --method ' + name if name in methods_mod.EXPLAIN_METHODS else ''}"
                             " to store them")
    tokens, grid = clf.metadata.tokens, tuple(store.layout.grid)
    if tokens.grid is None or tuple(tokens.grid) != grid or (store.metadata.source and clf.metadata.source
                                                                and store.metadata.source != clf.metadata.source):
        raise InputError(f"the store's maps are of model {store.metadata.source!r} (grid {grid[0]}x{grid[1]}), not of "
                         f"--model {clf.metadata.source!r}; give --model the model the batch ran")
    return [Image(key, store.source(key), {"store": store}) for key in store]


def _discover(config: EvaluateConfig) -> list[Image]:
    from attnvis.batch.inputs import discover

    if not config.inputs:
        raise InputError("no input: give image folders, globs or files, or a batch output folder with a map store")
    return [Image(item.key, item.path) for item in discover(config.inputs, exclude=config.output)]


def _size(path: str) -> tuple[int, int]:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError):
        return (0, 0)


def _ground_truth(config: EvaluateConfig, images: list[Image], store) -> dict[str, np.ndarray]:
    """key → bool mask of the original image, checked before any work."""
    if not (config.boxes or config.masks):
        return {}
    boxes = gt.load_boxes(config.boxes) if config.boxes else {}
    if config.masks and not Path(config.masks).is_dir():
        raise InputError(f"--masks {config.masks}: not a folder (one binary mask image per input, same stem)")
    truth = {}
    for im in images:
        size = store.size(im.key) if store is not None else _size(im.source)
        found = gt.boxes_for(boxes, im.key, im.source)
        if found is not None:
            gt.check_boxes(found, size, im.key)
            truth[im.key] = gt.box_mask(found, size)
        path = gt.find_mask(config.masks, im.key) if config.masks else None
        if path is not None:
            mask = gt.load_mask(path, size, im.key)
            truth[im.key] = truth[im.key] | mask if im.key in truth else mask
    if not truth:
        raise InputError(f"{'--boxes ' + config.boxes if config.boxes else '--masks ' + config.masks} names none of the "
                         f"{len(images)} images (keys such as {images[0].key!r})")
    return truth


# --------------------------------------------------------------------------- scoring


def _score_chunk(clf: Classifier, chunk: list[Image], method_names, metrics, truth, config,
                 explainer=None) -> tuple[list[dict], list[str]]:
    from attnvis.runtime.images import load_image, preprocess

    pre = clf.metadata.preprocess
    if pre is None:
        raise InputError("the model records no image preprocessing; attnvis evaluate needs an image model")
    loaded, failed = [], []
    for im in chunk:
        try:
            kwargs = {"max_pixels": config.max_pixels} if config.max_pixels else {}
            loaded.append((im, load_image(im.source, **kwargs)))
        except InputError as err:
            failed.append(f"{im.key}: {err}")
    if not loaded:
        return [], failed
    x = preprocess([image for _, image in loaded], pre)
    target = clf.logits(x).argmax(1)
    keys = [im.key for im, _ in loaded]
    grids = _grids(clf, x, loaded, method_names, keys, target, explainer)
    masks = None
    if truth:
        masks = np.stack([gt.to_input(truth[k], pre) if k in truth else np.zeros(pre.size, bool) for k in keys])
    rows = [{"image": k, "source": im.source, "method": m, "target": int(t)}
            for m in method_names for k, (im, _), t in zip(keys, loaded, target)]
    for m_index, method in enumerate(method_names):
        maps = input_maps(grids[method], x.shape[2:], len(x))
        for metric in metrics:
            values, curves = metric.score(clf, x, maps, target, masks)
            values = np.asarray(values, np.float32)
            if metric.needs_masks:
                values = np.where([k in truth for k in keys], values, np.nan).astype(np.float32)
            for b in range(len(keys)):
                row = rows[m_index * len(keys) + b]
                row[metric.name] = float(values[b])
                if curves is not None:
                    row[f"{metric.name}_curve"] = np.asarray(curves[b], np.float32).tolist()
    return rows, failed


def _grids(clf, x, loaded, method_names, keys, target, explainer) -> dict[str, np.ndarray]:
    stored = loaded[0][0].stored
    if stored is None:
        return methods_mod.grid_maps(clf, x, method_names, keys, target, explainer)
    store, out = stored["store"], {}
    for name in method_names:
        if name == "attention":
            out[name] = np.stack([np.asarray(store[k][-1], np.float32) for k in keys])
        elif name == "rollout":
            out[name] = np.stack([store.rollout(k) for k in keys])
        elif name == "random":
            out.update(methods_mod.grid_maps(clf, x, ["random"], keys, target))
        else:
            out[name] = np.stack([store.relevance(k, name) for k in keys])
    return out


# --------------------------------------------------------------------------- output


def _prepare_output(out: Path, config: EvaluateConfig, method_names, metric_names) -> set[str]:
    """Make the output folder; return the images already scored (``--resume``), else clear old parts."""
    identity = {"methods": method_names, "metrics": metric_names, "model": config.model or "default",
                "boxes": config.boxes, "masks": config.masks}
    parts, stamp = out / PARTS, out / "evaluate.json"
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; give a folder")
    if config.resume and stamp.is_file():
        previous = json.loads(stamp.read_text())
        if previous != identity:
            raise InputError(f"--resume: {out} holds a run with other settings ({previous}); give another --output "
                             "or run without --resume to start over")
        return _done_keys(parts)
    if parts.is_dir():
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    from attnvis.render.writers import write_bytes_atomic

    write_bytes_atomic(stamp, json.dumps(identity, indent=1).encode())
    return set()


def _done_keys(parts: Path) -> set[str]:
    from attnvis._optional import require

    pq = require("pyarrow.parquet", "attnvis evaluate")
    keys = set()
    for path in sorted(parts.glob("part-*.parquet")):
        keys.update(pq.read_table(path, columns=["image"]).column("image").to_pylist())
    return keys


def _write_part(out: Path, rows: list[dict]) -> None:
    if not rows:
        return
    from attnvis._optional import require

    pa = require("pyarrow", "attnvis evaluate")
    pq = require("pyarrow.parquet", "attnvis evaluate")
    parts = out / PARTS
    number = len(list(parts.glob("part-*.parquet")))
    path = parts / f"part-{number:05d}.parquet"
    tmp = parts / f".{path.name}.{os.urandom(6).hex()}.tmp"
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, path)


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", desc="evaluate", disable=not enabled, dynamic_ncols=True)


__all__ = ["EvaluateConfig", "evaluate", "asdict"]
