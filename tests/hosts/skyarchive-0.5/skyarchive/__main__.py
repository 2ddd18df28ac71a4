"""Run the CLI: ``python -m skyarchive``."""

import sys

from .cli import main

sys.exit(main())
