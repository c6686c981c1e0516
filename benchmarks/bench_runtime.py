#!/usr/bin/env python3
"""PyTorch against ONNX Runtime on one model: the script form of ``attnvis bench`` (same code, same flags).

    python benchmarks/bench_runtime.py --preset vit-s --batch-sizes 1,8,32 --json benchmarks/out/vit-s.json

Writes the JSON, a markdown table beside it (.md) and a plot (.png); see benchmarks/RESULTS.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attnvis.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
