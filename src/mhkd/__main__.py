"""``python -m mhkd`` (and ``torchrun -m mhkd``) runs the command line."""

import sys

from mhkd.cli import main

sys.exit(main())
