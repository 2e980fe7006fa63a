"""Installs the harness's socket fence (tests/netfence.py) in every Python process a test
or benchmark starts: tests/netfence.py puts this directory first on PYTHONPATH."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
try:
    from tests import netfence
except ImportError:  # a child run from elsewhere with this PYTHONPATH: nothing to fence
    pass
else:
    netfence.install()
finally:
    del sys.path[0]
