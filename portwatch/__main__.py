"""``python -m portwatch``: the same as the ``portwatch`` command."""

import sys

from portwatch.launch import main

sys.exit(main())
