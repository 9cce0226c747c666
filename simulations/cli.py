"""Command-line plumbing shared by every entry point (simulations, figures, bench).

Bad input on any command line ends as one line on stderr and exit code 2, never a usage dump or
a traceback: :class:`OneLineArgumentParser` does it for argparse errors, and entry points catch
ValueError from config validation and print it with :func:`fail`.
"""

from __future__ import annotations

import argparse
import sys


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse parser whose errors print ``PROG: error: MESSAGE`` (one line) and exit 2."""

    def error(self, message):
        print(f"{self.prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
        raise SystemExit(2)


def fail(prog: str, error: BaseException, code: int = 2) -> int:
    """Print ``PROG: error: MESSAGE`` on one line of stderr and return ``code``."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code
