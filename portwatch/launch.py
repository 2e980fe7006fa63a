"""The ``portwatch`` command's entry point (``[project.scripts]``, ``python -m portwatch``).

Owns: loading the CLI. A Ctrl-C in the ~0.3 s its modules take to import ended the
command with an import traceback (a review); here it ends as a Ctrl-C after does, one
line and exit 130. This module imports nothing heavy, so the window left is the
interpreter's own start-up.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # as portwatch.console's: not imported from there (that is the load)


def main() -> int:
    try:
        from portwatch.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("portwatch: interrupted\n")
        return EXIT_INTERRUPTED
    return run()
