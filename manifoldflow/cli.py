"""The console script `manifoldflow` (see [`manifoldflow.commands`][]): this module
keeps its entry point and the names of a run's files."""

import sys

from .commands.main import main as main
from .commands.options import CHECKPOINT as CHECKPOINT
from .commands.run import RUN_FILE as RUN_FILE


if __name__ == "__main__":
    sys.exit(main())
