"""``python -m semisupseg`` (how the Slicer module starts the worker)."""

import sys

from .cli import main

sys.exit(main())
