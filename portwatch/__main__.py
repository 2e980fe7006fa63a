"""``python -m portwatch``: the same as the ``portwatch`` command."""

import sys

from portwatch.cli import main

sys.exit(main())
