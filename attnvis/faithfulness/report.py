"""What ``attnvis evaluate`` leaves: scores.parquet, summary.json, summary.md, curves.png, and the printed table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from attnvis.faithfulness._perturbation import FRACTIONS

Z95 = 1.959963984540054  # two-sided 95% of the normal distribution


def finish(out: Path, clf, method_names: list[str], metrics, scored: int, elapsed: float, failed: list[str]) -> dict:
    """Merge the parts into ``scores.parquet`` and write the summaries; return the summary."""
    from attnvis._optional import require
    from attnvis.render.writers import write_bytes_atomic

    pa = require("pyarrow", "attnvis evaluate")
    pq = require("pyarrow.parquet", "attnvis evaluate")
    tables = [pq.read_table(p) for p in sorted((out / "parts").glob("part-*.parquet"))]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({"image": pa.array([], pa.string())})
    tmp = out / f".scores.parquet.{os.urandom(6).hex()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / "scores.parquet")
    columns = table.to_pydict() if table.num_rows else {}
    summary = summarize(columns, method_names, metrics)
    summary.update(model=clf.metadata.source or "model", device=getattr(clf.session, "device", "cpu"),
                   images=len(set(columns.get("image", []))), scored_this_run=scored, seconds=round(elapsed, 3),
                   images_per_second=round(scored / elapsed, 3) if elapsed > 0 and scored else None, failed=failed)
    write_bytes_atomic(out / "summary.json", json.dumps(summary, indent=1, allow_nan=False, default=_nan).encode())
    text = markdown(summary, metrics)
    write_bytes_atomic(out / "summary.md", text.encode())
    print(text)
    note = plot_curves(out / "curves.png", columns, method_names, metrics)
    if note:
        print(note)
    for line in failed:
        print(f"skipped {line}")
    return summary


def _nan(value):
    return None


def summarize(columns: dict, method_names: list[str], metrics) -> dict:
    """methods × metrics: mean, 95% confidence interval (normal approximation), n; NaN values (no ground truth) left out."""
    methods = np.asarray(columns.get("method", []))
    out = {"metrics": {m.name: {"higher_is_better": m.higher, "anchor": m.anchor} for m in metrics}, "methods": {}}
    for name in method_names:
        rows = methods == name
        entry = {}
        for metric in metrics:
            values = np.asarray(columns.get(metric.name, []), np.float64)[rows] if rows.any() else np.zeros(0)
            values = values[np.isfinite(values)]
            mean = float(values.mean()) if len(values) else None
            half = float(Z95 * values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
            entry[metric.name] = {"mean": mean, "ci95": None if half is None else [mean - half, mean + half], "n": len(values)}
        out["methods"][name] = entry
    out["best"] = {m.name: _best(out["methods"], m) for m in metrics}
    return out


def _best(methods: dict, metric) -> str | None:
    scored = [(v[metric.name]["mean"], name) for name, v in methods.items() if v[metric.name]["mean"] is not None]
    if not scored:
        return None
    return (max if metric.higher else min)(scored)[1]


def markdown(summary: dict, metrics) -> str:
    """The "which map to trust" table: methods × metrics, mean ± 95% CI half-width, the best per metric in bold."""
    head = "| method | " + " | ".join(f"{m.name} {'↑' if m.higher else '↓'}" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for name, entry in summary["methods"].items():
        cells = []
        for m in metrics:
            cell = entry[m.name]
            if cell["mean"] is None:
                cells.append("–")
                continue
            text = f"{cell['mean']:.3f}" + (f" ± {(cell['ci95'][1] - cell['mean']):.3f}" if cell["ci95"] else "")
            cells.append(f"**{text}**" if summary["best"][m.name] == name else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = max((c["n"] for e in summary["methods"].values() for c in e.values()), default=0)
    lines.append("")
    lines.append(f"{n} images; mean ± half-width of the 95% confidence interval; ↑ higher is better, ↓ lower is better; "
                 "bold: the best method per metric.")
    return "\n".join(lines) + "\n"


def plot_curves(path: Path, columns: dict, method_names: list[str], metrics) -> str | None:
    """Mean curve per method for each curve metric; a one-line note instead when matplotlib is missing."""
    curved = [m for m in metrics if m.curve and f"{m.name}_curve" in columns]
    if not curved:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "curves.png not written: matplotlib is not installed (pip install 'attnvis[bench]')"
    methods = np.asarray(columns["method"])
    fig, axes = plt.subplots(1, len(curved), figsize=(4.2 * len(curved), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], curved):
        for name in method_names:
            rows = [c for c, m in zip(columns[f"{metric.name}_curve"], methods) if m == name and c is not None]
            if not rows:
                continue
            mean = np.mean(np.asarray(rows, np.float64), axis=0)
            xs = np.asarray(FRACTIONS) if metric.name.startswith("perturbation") else np.linspace(0, 1, len(mean))
            ax.plot(xs, mean, label=name)
        ax.set_title(metric.name)
        ax.set_xlabel(metric.curve)
        ax.set_ylabel("top-1 = target" if metric.name.startswith("perturbation") else "p(class)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return None
