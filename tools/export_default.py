"""Write the embedded default model's ONNX assets from its shipped weights (``assets/tiny_vit.pt``).

- ``tiny_vit.onnx``: ``attnvis export --model default`` (every layer's attention maps), which
  ``attnvis demo``, ``visualize`` and ``batch`` run with ONNX Runtime alone;
- ``tiny_vit_explain.onnx``: ``attnvis export --model default --explain METHODS`` with every method
  of :data:`attnvis.explain.METHODS` whose exported row equals eager PyTorch within the export's
  tolerance on this model (default ``start_layer`` and ``discard_ratio``); a method that does not is
  left out and named (``--method`` with it then exports the model through PyTorch, as for any spec).
  ``attnvis demo --method gae`` and ``--method`` with the default model run it without PyTorch.

Reproducible: the weights are the shipped file, the exports take no random input, and the written
export validates itself against eager PyTorch. The tests (``tests/test_light_install.py``) check
that both files equal a fresh export, output for output.

Usage:
    python tools/export_default.py [--only plain|explain]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from attnvis.explain import METHODS, relevance_output
from attnvis.explain.trace import Options
from attnvis.export.explain import compare_explain, export_explain
from attnvis.export.onnx import export_onnx
from attnvis.models import default_explain_path, default_onnx_path
from attnvis.sources import default_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("plain", "explain"), default=None, help="write only this asset")
    args = parser.parse_args()
    if args.only in (None, "plain"):
        report = export_onnx(default_source(), default_onnx_path(), validate=True)
        print(f"wrote {report.path}")
    if args.only in (None, "explain"):
        methods = traced_exactly(list(METHODS))
        report = export_explain(default_source(), default_explain_path(), methods, Options(), validate=True)
        print(f"wrote {report.path} ({', '.join(methods)})")
        print(report.table())


def traced_exactly(methods: list[str]) -> list[str]:
    """The methods whose exported rows equal eager PyTorch within the export's tolerance on the default model."""
    with tempfile.TemporaryDirectory() as folder:
        trial = export_explain(default_source(), Path(folder) / "all.onnx", methods, Options(), validate=False)
        rows = compare_explain(trial.path, default_source(), trial.metadata)
    failed = {name for name, diff, tol in rows if diff > tol}
    kept = [m for m in methods if relevance_output(m) not in failed]
    for name, diff, tol in rows:
        if name in failed:
            print(f"left out {name}: max |ORT - PyTorch| {diff:.3e} > tolerance {tol:.1e}")
    return kept


if __name__ == "__main__":
    main()
