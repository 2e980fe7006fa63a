"""Benchmark of a store upgraded in place (``python -m bench.upgrade``).

A year of history must survive an upgrade of portwatch, and its pages must stay fast:
an upgraded store keeps the table settings it was created with (granule sizes cannot be
altered), so it is not the store a new install builds. This bench builds ``--hosts`` x
``--days`` with the code of an older revision (``--from``, a git revision: its
``bench.history`` generator and change recorder, run from a temporary ``git worktree``
in a child process), then opens the store with this code (``Store.from_url`` steps it
through ``MIGRATIONS``), scans two more days through this code's recorder, merges the
page indexes as a scan's end does, and times the pages' SQL uncached
(``bench.history.page_timings``).

Owns: the old build and the timing. Touches no network except the recorders' bounded
closure re-probes of the synthetic loopback addresses (127.2.0.0 upwards).
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FROM = "7bef100~1"  # layout 9: before port_latest and the 256-row granules

# Run in the child process, with the old revision's code (see build_old).
_OLD_BUILD = """
import pickle, random, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from bench.history import synthetic_hosts, evolve, record_day
from stream_processors.store import Store, SCHEMA_VERSION
hosts_n, days, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(16)
hosts = synthetic_hosts(hosts_n)
now = datetime.now(UTC).replace(microsecond=0, second=0, minute=0)
db = Store.from_url(f"chdb://{out / 'store'}")
for day in range(days):
    evolve(hosts, rng, 3, first=day == 0)
    record_day(db, hosts, f"day-{day:03d}", now - timedelta(days=days - day))
    if day % 10 == 0:
        print(f"  old code (layout {SCHEMA_VERSION}): built day {day + 1}/{days}",
              file=sys.stderr, flush=True)
db.close()
ports = {h.target.ip: [(p, v.entry, v.version, v.cert) for p, v in h.ports.items()]
         for h in hosts}
with open(out / "model.pkl", "wb") as f:
    pickle.dump((ports, rng.getstate(), now, SCHEMA_VERSION), f)
"""


def build_old(revision: str, hosts: int, days: int, out: Path) -> None:
    tree = Path(tempfile.mkdtemp(prefix="portwatch-bench-upgrade-tree-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                    revision], check=True)
    try:
        # The old revision's packages first on sys.path, before this checkout's install
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(tree)!r})\n"
                        + _OLD_BUILD, str(hosts), str(days), str(out)], check=True, cwd=tree)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False)
        shutil.rmtree(tree, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--from", dest="revision", default=DEFAULT_FROM,
                        help=f"git revision whose code builds the store (default {DEFAULT_FROM})")
    args = parser.parse_args(argv)
    from bench.history import (
        HostLife,
        PortLife,
        evolve,
        freeze_model,
        page_timings,
        print_pages,
        record_day,
        synthetic_hosts,
    )
    from stream_processors.store import SCHEMA_VERSION, Store

    tmp = Path(tempfile.mkdtemp(prefix="portwatch-bench-upgrade-"))
    try:
        begin = time.perf_counter()
        build_old(args.revision, args.hosts, args.days, tmp)
        build_s = time.perf_counter() - begin
        with open(tmp / "model.pkl", "rb") as f:
            ports, state, now, old_layout = pickle.load(f)  # noqa: S301 - our own file
        hosts = [HostLife(h.target, {p: PortLife(e, v, c) for p, e, v, c in ports[h.target.ip]})
                 for h in synthetic_hosts(args.hosts)]
        rng = random.Random()
        rng.setstate(state)
        begin = time.perf_counter()
        db = Store.from_url(f"chdb://{tmp / 'store'}")
        upgrade_s = time.perf_counter() - begin
        days = []
        for i, when in enumerate((now - timedelta(hours=12), now)):
            evolve(hosts, rng, 3, first=False)
            freeze_model()
            days.append(record_day(db, hosts, f"upgraded-{i}", when, one_call=True))
        begin = time.perf_counter()
        merged = db.compact_page_indexes()
        merge_s = time.perf_counter() - begin
        (observations,), = db.query("SELECT count() FROM port_observations")
        one = hosts[len(hosts) // 2].target.ip
        page_ms = page_timings(db, now, one)
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbench/upgrade: {args.hosts:,} hosts x {args.days} days built by {args.revision} "
          f"(layout {old_layout}) in {build_s:.0f}s, upgraded to layout {SCHEMA_VERSION} in "
          f"{upgrade_s:.1f}s; {observations:,} observations; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    for i, (spent, events) in enumerate(days):
        print(f"day {i + 1} through this code: changes {spent:.2f}s ({events} events)")
    print(f"the page indexes merged ({', '.join(merged) or 'none'}): {merge_s:.2f}s")
    print_pages(page_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
