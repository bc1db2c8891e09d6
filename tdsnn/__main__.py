"""``python -m tdsnn`` (and ``torchrun -m tdsnn``) run the command line."""

from tdsnn.cli import entry

entry()
