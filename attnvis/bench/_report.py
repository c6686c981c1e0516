"""Reporting for :mod:`attnvis.bench`: goal checks, the markdown table, the plot, the JSON file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

#: (name, numerator variant, denominator variant, quantity, goal, "min" | "max", devices), from issue 7
GOALS = (
    ("ort-all vs torch-eager, images/s", "ort-all", "torch-eager", "images_per_s", 1.0, "min", ("cpu", "cuda")),
    ("ort-cls / ort-all, map bytes", "ort-cls", "ort-all", "map_bytes_per_image", 1e-3, "max", ("cpu", "cuda")),
    ("ort-all / ort-plain - 1, latency", "ort-all", "ort-plain", "latency", 0.10, "max", ("cpu", "cuda")),
    ("best ORT vs torch-eager, images/s", "ort-best", "torch-eager", "images_per_s", 1.5, "min", ("cuda",)),
    # issue 16: the fair baseline (pinned copies once per batch), and in-graph cls close to the plain model
    ("best ORT vs torch-pinned, images/s", "ort-best", "torch-pinned", "images_per_s", 1.5, "min", ("cuda",)),
    ("ort-cls / ort-plain, images/s", "ort-cls", "ort-plain", "images_per_s", 0.9, "min", ("cuda",)),
    ("ort-fp16-cls / ort-fp16-plain, images/s", "ort-fp16-cls", "ort-fp16-plain", "images_per_s", 0.9, "min",
     ("cuda",)),
)


def _value(row: dict, quantity: str) -> float:
    return row["latency_ms"]["median"] if quantity == "latency" else row[quantity]


def _pick(rows: dict[str, dict], name: str) -> dict | None:
    if name != "ort-best":
        return rows.get(name)
    ort = [r for n, r in rows.items() if n.startswith("ort-") and not n.endswith("-plain")]
    return max(ort, key=lambda r: r["images_per_s"]) if ort else None


def goal_checks(rows: list[dict], device: str = "cpu") -> list[dict]:
    """Each goal for ``device`` at each batch size where both of its variants were measured."""
    checks = []
    for batch in sorted({r["batch"] for r in rows}):
        by_name = {r["variant"]: r for r in rows if r["batch"] == batch}
        for name, top, bottom, quantity, goal, sense, devices in GOALS:
            a, b = _pick(by_name, top), _pick(by_name, bottom)
            if device not in devices or a is None or b is None or not _value(b, quantity):
                continue
            ratio = _value(a, quantity) / _value(b, quantity) - (1.0 if quantity == "latency" else 0.0)
            met = ratio >= goal if sense == "min" else ratio <= goal
            checks.append({"check": name, "batch": batch, "value": ratio, "goal": goal, "sense": sense,
                           "met": bool(met), "variant": a["variant"]})
    return checks


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt_mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown_table(result: dict) -> str:
    """One row per (variant, batch): latency median [IQR], images/s, map bytes per image, memory."""
    device = result["config"]["device"]
    extra = " device MiB |" if device == "cuda" else ""
    lines = [f"| variant | batch | latency ms, median [q1–q3] | images/s | maps to host / image | host MiB setup / call |{extra}",
             "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if extra else "")]
    for r in result["rows"]:
        lat = r["latency_ms"]
        dev = f" {_fmt_mb(r['device_mb'])} |" if extra else ""
        lines.append(f"| {r['variant']} | {r['batch']} | {lat['median']:.2f} [{lat['q1']:.2f}–{lat['q3']:.2f}] | "
                     f"{r['images_per_s']:.1f} | {_fmt_bytes(r['map_bytes_per_image'])} | "
                     f"{_fmt_mb(r['host_setup_mb'])} / {_fmt_mb(r['host_peak_mb'])} |{dev}")
    return "\n".join(lines)


def checks_table(checks: list[dict]) -> str:
    """The goal checks as a markdown table."""
    lines = ["| check | batch | value | goal | met |", "| --- | ---: | ---: | ---: | --- |"]
    for c in checks:
        goal = f"{'≥' if c['sense'] == 'min' else '≤'} {c['goal']:g}"
        lines.append(f"| {c['check']} | {c['batch']} | {c['value']:.4g} | {goal} | {'yes' if c['met'] else 'NO'} |")
    return "\n".join(lines)


def summary_text(result: dict) -> str:
    """The whole markdown report: header, table, checks, numba line."""
    m, cfg, numba = result["machine"], result["config"], result["numba"]
    head = (f"attnvis bench: {result['model']['name']} ({result['model']['layers']} attention layers), "
            f"{cfg['device']} [{m['device_name']}], {cfg['threads']} threads, {cfg['repeats']} timed runs "
            f"after {cfg['warmup']} warm-ups, interleaved")
    parts = [head, "", markdown_table(result)]
    if result["checks"]:
        parts += ["", checks_table(result["checks"])]
    if numba:
        parts += ["", f"numba render_map: first call {numba['first_call_s']:.2f} s (compile or cache load), "
                      f"then {numba['steady_call_ms']:.2f} ms per call"]
    return "\n".join(parts)


def minor_label(value: float) -> str:
    """A log axis' minor tick label: only 2× and 5× a power of ten, so that labels never overlap."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def write_plot(result: dict, path: Path) -> Path:
    """images/s by batch size, one line per variant, IQR as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name in dict.fromkeys(r["variant"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["variant"] == name), key=lambda r: r["batch"])
        batches = [r["batch"] for r in rows]
        ips = [r["images_per_s"] for r in rows]
        # images/s at the latency quartiles: q1 latency is the fast end
        low = [v - r["batch"] * 1e3 / r["latency_ms"]["q3"] for v, r in zip(ips, rows)]
        high = [r["batch"] * 1e3 / r["latency_ms"]["q1"] - v for v, r in zip(ips, rows)]
        ax.errorbar(batches, ips, yerr=[low, high], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # variants can differ by orders of magnitude
    ax.set_xticks(sorted({r["batch"] for r in result["rows"]}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: minor_label(v)))
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (median, IQR bars)")
    ax.set_title(f"{result['model']['name']} on {result['config']['device']} [{result['machine']['device_name']}]",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _atomic(path: Path, write) -> Path:
    """Write through a temporary name, then rename: nothing half-written is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(result: dict, path: Path) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))


def write_markdown(result: dict, path: Path) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(summary_text(result) + "\n"))
