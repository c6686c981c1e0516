"""``python -m attnvis`` is the ``attnvis`` command."""

import sys

from attnvis.cli import main

sys.exit(main())
