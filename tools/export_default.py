"""Write the embedded default model's ONNX assets from its shipped weights (``assets/tiny_vit.pt``).

- ``tiny_vit.onnx``: ``attnvis export --model default`` (every layer's attention maps), which
  ``attnvis demo``, ``visualize`` and ``batch`` run with ONNX Runtime alone;
- ``tiny_vit_explain.onnx``: ``attnvis export --model default --explain METHODS`` with every method
  of :data:`attnvis.explain.METHODS` (default ``start_layer`` and ``discard_ratio``), which
  ``attnvis demo --method gae`` and ``--method`` with the default model run without PyTorch.

Reproducible: the weights are the shipped file, the exports take no random input, and each
export validates itself against eager PyTorch before it is written. The tests
(``tests/test_light_install.py``) check that both files equal a fresh export, output for output.

Usage:
    python tools/export_default.py [--only plain|explain]
"""

from __future__ import annotations

import argparse

from attnvis.explain import METHODS
from attnvis.explain.trace import Options
from attnvis.export.explain import export_explain
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
        report = export_explain(default_source(), default_explain_path(), list(METHODS), Options(), validate=True)
        print(f"wrote {report.path} ({', '.join(METHODS)})")
        print(report.table())


if __name__ == "__main__":
    main()
