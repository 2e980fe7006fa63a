"""Side-by-side benchmarks of portwatch against nmap, masscan and sslscan.

Each module runs as ``python -m bench.<name>`` from the repository root, targets
only loopback (or network namespaces it creates and deletes) and prints a
markdown table for BENCHMARKS.md (``--json`` for machines).

Safety fence: importing the package (every ``python -m bench.<name>`` does) sets
PORTWATCH_SCOPE_ALLOW to loopback and the 198.18.0.0/15 namespace range, as the
tests' conftest does: a scan a benchmark starts through portwatch's settings (the
assembly, any ``portwatch`` process it runs) refuses any other address, whatever the
benchmark asks. And the tests' socket fence (tests/netfence.py): this process and every
Python process it starts connect and send datagrams to loopback and to the namespace
hosts a benchmark made only.
"""

import os

os.environ["PORTWATCH_SCOPE_ALLOW"] = "127.0.0.0/8,::1/128,198.18.0.0/15"

from tests import netfence  # noqa: E402 - after the scope fence, which needs no import

netfence.install()
