"""Benchmark: one alert delivery pass of a burst of events (``python -m bench.alert_pass``).

Owns: the ``python -m bench.alert_pass [--events N] [--per-message M] [--runs R]``
command. Each run, on a fresh chdb store: N change events (distinct ports of loopback
addresses, red, opened) are queued for one webhook rule (``digest: 0``), then one
``AlertDispatcher.deliver_due()`` pass sends them to a signing receiver on 127.0.0.1 (the
test suite's ``tests/alert_receivers.py``), in messages of M events. It prints the
queueing time, the pass's time, and the share of it spent claiming (one insert per
event: ClickHouse keeps one of competing inserts per deduplication token, so a claim
cannot be batched without losing that guarantee), as medians over the runs.

There is no reference tool to set beside it (no other scanner delivers its own
alerts); the figure is kept to see what a burst costs (a first scan of a large estate
opens thousands of ports at once) and whether a change moves it.

Must not touch: any address but 127.0.0.1; the repository's files.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from portwatch.alerts import AlertDispatcher, load_alerts
from schemas.records import ChangeEvent, ChangeKind, Proto, Severity, Target
from stream_processors.store import Store
from tests.alert_receivers import webhook_receiver

SECRET = b"bench-secret-0123456789"


def _events(n: int) -> list[ChangeEvent]:
    now = datetime.now(UTC)
    return [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.HIGH,
                        target=Target(ip=f"127.0.{i // 250}.{i % 250 + 1}",
                                      target=f"127.0.{i // 250}.{i % 250 + 1}",
                                      organization="Bench"),
                        scan_id="bench", previous_scan_id="", proto=Proto.TCP,
                        port=1 + i % 65_000, after="redis open", risk_color="red",
                        service="redis", observed_at=now)
            for i in range(n)]


def one_run(n: int, per_message: int, workdir: Path) -> tuple[float, float, float, int]:
    """(queue s, pass s, claims s, messages) of one run on a fresh store."""
    store = Store.from_url(f"chdb://{workdir / 'store'}")
    try:
        with webhook_receiver(SECRET) as receiver:
            rules = workdir / "alerts.yaml"
            rules.write_text(
                "channels:\n"
                f'  hook: {{webhook: "{receiver.url}", secret_env: BENCH_SECRET}}\n'
                "rules:\n  - name: burst\n    when: {kinds: [opened]}\n"
                "    notify: [hook]\n    digest: 0\n"
                f"delivery: {{max_events_per_message: {per_message}}}\n")
            dispatcher = AlertDispatcher(store, load_alerts(
                rules, env={"BENCH_SECRET": SECRET.decode()}))
            begin = time.perf_counter()
            dispatcher.submit(_events(n))
            queued = time.perf_counter() - begin
            profile = cProfile.Profile()
            begin = time.perf_counter()
            profile.enable()
            report = dispatcher.deliver_due()
            profile.disable()
            passed = time.perf_counter() - begin
            assert report.sent == n, report
        claims = sum(row[3] for key, row in pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
                     if key[2] == "_claim")
        return queued, passed, claims, report.messages
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.alert_pass", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--per-message", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="portwatch-bench-alerts-") as tmp:
            results.append(one_run(args.events, args.per_message, Path(tmp)))
    queued, passed, claims = (statistics.median(r[i] for r in results) for i in range(3))
    print(f"bench/alert_pass: {args.events:,} events, {results[0][3]} messages of at most "
          f"{args.per_message}, median of {args.runs}: queued in {queued:.2f}s; the pass "
          f"{passed:.2f}s, of which claims {claims:.2f}s "
          f"({1000 * claims / args.events:.2f} ms per event)", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
