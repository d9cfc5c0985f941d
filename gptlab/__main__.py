"""``python -m gptlab ...``: the same command line as the ``gptlab`` console script."""

import sys

from gptlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
