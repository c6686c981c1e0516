#!/usr/bin/env python
"""The seed guide's command line, unchanged: ``python tools/visualize_attention.py --image IMG ...``.

A thin shim over ``attnvis visualize``; every flag is the same.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attnvis.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["visualize", *sys.argv[1:]]))
