"""``python -m attnvis.cli``: the console script."""

import sys

from attnvis.cli import main

sys.exit(main())
