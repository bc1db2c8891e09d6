"""``python -m tdsnn`` (and ``torchrun -m tdsnn``) run the command line."""

import sys

from tdsnn.cli import main

sys.exit(main())
