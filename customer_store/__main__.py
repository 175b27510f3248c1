"""``customer-store`` and ``python -m customer_store``: the command line, ended quietly by
Ctrl-C at any point, while its modules are still loading too (exit status 130, as a shell
reports SIGINT), never with a traceback."""

from __future__ import annotations

import sys

__all__ = ["EXIT_INTERRUPTED", "run"]

#: The exit status after Ctrl-C: 128 + SIGINT.
EXIT_INTERRUPTED = 130


def run() -> int:
    """Load the command line and run it on ``sys.argv``."""
    try:
        # Imported here, not above: loading takes a while, and Ctrl-C may come meanwhile.
        from customer_store.cli import main

        return main()
    except KeyboardInterrupt:
        print("customer-store: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(run())
