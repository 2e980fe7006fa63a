"""The collector policy of a stream-processor worker (``collector.settle_worker``): what
start-up made is frozen out of later collections, full collections run rarer, young ones as
before. Run in a child interpreter: the policy is process-wide and must not leak into the
test session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import gc, json
before = gc.get_threshold()
startup = [[i] for i in range(50_000)]  # long-lived containers, as a worker's tables
from stream_processors.collector import WORKER_FULL_EVERY, settle_worker
after = settle_worker()
frozen = gc.get_freeze_count()
# a cycle made after start-up is still collected (young collections run as before)
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a
del a, b
found = gc.collect(0) + gc.collect(1)
print(json.dumps({"before": before, "after": after, "frozen": frozen, "found": found,
                  "every": WORKER_FULL_EVERY, "enabled": gc.isenabled()}))
"""


def test_a_worker_freezes_what_startup_made_and_runs_full_collections_rarer() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    got = json.loads(done.stdout)
    young, middle, full = got["before"]
    assert got["after"] == [young, middle, got["every"]]
    assert got["every"] > full  # rarer than Python's default
    assert got["frozen"] > 50_000  # start-up's containers, out of every later walk
    assert got["found"] >= 2  # the new cycle's two objects
    assert got["enabled"] is True  # a policy, not the collector turned off
