"""Make the NumPy references beside these tests importable (``from render_reference import ...``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
