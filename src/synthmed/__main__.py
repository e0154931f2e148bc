"""``python -m synthmed``: the CLI, also what launchers start (``torchrun ... -m synthmed train``)."""

import sys

from synthmed.cli import main

sys.exit(main())
