"""``python -m gptlab.serve``: the same as ``python -m gptlab serve``."""

from __future__ import annotations

import argparse
import sys

from gptlab.serve.server import add_arguments, run


def main() -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m gptlab.serve",
        description="Serve a gptlab model behind the OpenAI API, with a chat page at /.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
