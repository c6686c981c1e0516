"""Make the batch-1 references beside these tests importable (``import explain_reference``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
