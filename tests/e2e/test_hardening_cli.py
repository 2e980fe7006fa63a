"""Issue 11 through the real ``portwatch`` command: scope holds for IPv4-mapped IPv6
(defect 2), bad input is refused with one line and exit 2 before anything is sent or
expanded (defect 9), and JSON/CSV reports carry exactly what the chdb store holds,
CSV defused against formula injection (defect 8)."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from tests import loopback
from tests.conftest import run_cli
from tests.e2e.test_cli_errors import assert_refused

# Loopback only, in both spellings: the v6 entry lets the mapped form past the fence, so
# only the exclusion can stop it (before the fix it did not).
MAPPED_ALLOW = {"PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8,::1/128,::ffff:127.0.0.0/104"}


def test_an_excluded_ipv4_written_as_mapped_ipv6_is_never_contacted(tmp_path: Path) -> None:
    # Given a listener on 127.0.0.1 that counts connections
    accepted: list[int] = []
    lock = threading.Lock()

    def count(conn: socket.socket) -> None:
        with lock:
            accepted.append(1)

    with loopback.listen(count) as listener:
        # When 127.0.0.0/8 is excluded and the target is ::ffff:127.0.0.1
        result = run_cli("scan", "--exclude", "127.0.0.0/8", "::ffff:127.0.0.1", "--ports",
                         str(listener.port), "--udp", "none", "--quiet",
                         store=f"chdb://{tmp_path / 'store'}", env=MAPPED_ALLOW)
    # Then nothing is scanned: one line, exit 2, and the listener saw no connection
    assert_refused(result, "nothing to scan")
    assert accepted == []
    assert not (tmp_path / "store").exists()


def test_a_mapped_exclusion_excludes_the_ipv4_target(tmp_path: Path) -> None:
    # Given the exclusion written as mapped IPv6 and the target as IPv4
    result = run_cli("scan", "--exclude", "::ffff:127.0.0.0/104", "127.0.0.1", "--ports", "1",
                     "--udp", "none", store=f"chdb://{tmp_path / 'store'}")
    # Then the exclusion holds
    assert_refused(result, "nothing to scan")


def _inventory(tmp_path: Path, text: str) -> str:
    path = tmp_path / "assets.yaml"
    path.write_text(text)
    return str(path)


BAD_INPUT = [
    pytest.param(["--ports", "1-", "127.0.0.1"], "'1-' is not a port or range", id="open-end"),
    pytest.param(["--ports", "-5", "127.0.0.1"], "'-5' is not a port or range", id="open-start"),
    pytest.param(["[::1"], "unbalanced brackets in target '[::1'", id="open-bracket"),
    pytest.param(["::1]"], "unbalanced brackets", id="close-bracket"),
    pytest.param(["--udp", "top99999999", "127.0.0.1"], "topN needs 1 <= N <= 65,535",
                 id="udp-top-huge"),
    pytest.param(["--udp", "top0", "127.0.0.1"], "topN needs", id="udp-top-zero"),
    pytest.param(["--udp", "bogus", "127.0.0.1"], "--udp: bad port spec 'bogus'",
                 id="udp-spec-names-the-flag"),
    pytest.param(["--concurrency", str(10**12), "127.0.0.1"],
                 "--concurrency must be between 1 and 100,000", id="concurrency-huge"),
    pytest.param(["--allow-large", "127.0.0.0/8", "::1"],
                 "more than 16,777,216 addresses in all", id="total-ceiling"),
    # (a block inside another counts once toward the ceiling, but is bounded as expanded)
    pytest.param(["--allow-large", "127.0.0.0/8", "127.0.0.0/9"],
                 "the targets name 25,165,824 addresses counting their overlaps, more than "
                 "16,777,216", id="overlaps-ceiling"),
    pytest.param(["127.0.0.0/16", "127.1.0.0/17"], "98,304 addresses in all",
                 id="total-over-a-16"),
    # (a review of 2026-12-05: ::1%lo passed, failed in the engine, and the scan said done)
    pytest.param(["::1%lo"], "an address with a zone (%lo) is not supported", id="zone"),
    pytest.param(["[fe80::1%eth0]"], "an address with a zone (%eth0)", id="zone-bracketed"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                          message: str) -> None:
    result = run_cli("scan", *args, store=f"chdb://{tmp_path / 'store'}", timeout=60)
    assert_refused(result, message)
    assert not (tmp_path / "store").exists()


def test_a_huge_shard_size_from_the_environment_is_refused(tmp_path: Path) -> None:
    result = run_cli("scan", "127.0.0.1", store=f"chdb://{tmp_path / 'store'}",
                     env={"PORTWATCH_SHARD_PORTS": str(10**12)})
    assert_refused(result, "PORTWATCH_SHARD_PORTS='1000000000000' must be between 1 and 65,535")


def test_produce_refuses_a_huge_shard_before_connecting() -> None:
    # (the broker address is a closed loopback port: refused before any connection)
    result = run_cli("produce", "--hosts-per-shard", str(10**12), "--kafka", "127.0.0.1:9",
                     "127.0.0.1")
    assert result.code == 2 and "--shard-hosts must be between 1 and 65,536" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("Org: 5\n", "Org[0]: must be text (an address, range, CIDR or hostname), not a number; "
     "quote it"),
    ("targets: 5\n", "'targets' must be a list"),
    ("Org:\n  - [1, 2]\n", "is not a target"),
    ("- {target: [127.0.0.1]}\n", "a target must be text"),
    ("- {target: 127.0.0.1, organization: {a: b}}\n", "organization and asset must be text"),
    ("Org: {target: 127.0.0.1, asset: [x]}\n", "organization and asset must be text"),
    ("a: &a [*a]\n", "is not a target"),
])
def test_bad_inventory_shapes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    result = run_cli("scan", "--inventory", _inventory(tmp_path, text),
                     store=f"chdb://{tmp_path / 'store'}")
    assert_refused(result, message)


# -- defect 8: output carries what is stored --------------------------------------------

SERVER = ":smile: nginx =HYPERLINK(\"http://x\")"
BANNER = "=cmd|' /C calc'!A0 " + "x" * 500 + "\x1b[31m"


def test_json_and_csv_carry_exactly_what_is_stored(tmp_path: Path) -> None:
    # Given a finding stored with a product holding rich emoji and markup codes, and a
    # 500+ character banner that starts with a spreadsheet formula
    import subprocess
    import sys

    from tests.conftest import REPO

    store = f"chdb://{tmp_path / 'store'}"
    # (stored by a process of its own: chdb allows one path per process, and a test
    # module before this one in the worker may hold the shared test path)
    seeded = subprocess.run([sys.executable, "-c", _SEED_HOSTILE, store, SERVER, BANNER],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert seeded.returncode == 0, seeded.stderr
    # When the List is rendered as JSON
    as_json = run_cli("report", "list", "--format", "json", store=store)
    assert as_json.code == 0, as_json.stderr
    (row,) = json.loads(as_json.stdout)
    # Then it carries the stored text unchanged (no emoji, no markup, no cut)
    assert row["product"] == SERVER
    assert row["banner"] == BANNER
    # When rendered as CSV
    as_csv = run_cli("report", "list", "--format", "csv", store=store)
    assert as_csv.code == 0, as_csv.stderr
    header, values = list(csv.reader(io.StringIO(as_csv.stdout)))
    cells = dict(zip(header, values, strict=True))
    # Then the whole banner is there, and formula-looking cells are prefixed with '
    assert cells["banner"] == "'" + BANNER
    assert cells["product"] == SERVER
    assert cells["port"] == "8080"


_SEED_HOSTILE = """
import sys
from datetime import UTC, datetime
from schemas.records import Finding, OpenPort, ServiceInfo, Target
from stream_processors.store import Store

port = OpenPort(scan_id="s1", target=Target("127.0.0.1", "127.0.0.1"), port=8080,
                observed_at=datetime(2026, 1, 2, tzinfo=UTC))
with Store.from_url(sys.argv[1]) as db:
    db.insert_findings([Finding(port=port, service=ServiceInfo(
        service="http", product=sys.argv[2], banner=sys.argv[3]))])
"""


_SEED_UNCOMPARED = """
import asyncio, sys
from datetime import timedelta
from schemas.records import HostScan, OpenPort, PortRange, Target, utcnow
from stream_processors.history import ChangeRecorder
from stream_processors.stages import unidentified
from stream_processors.store import Store

port = int(sys.argv[2])
with Store.from_url(sys.argv[1]) as store:
    t = Target(ip="127.0.0.2", target="127.0.0.2")
    now = utcnow()
    seen = unidentified(OpenPort(scan_id="s-a", target=t, port=port,
                                 observed_at=now - timedelta(minutes=30)), "x")
    first = HostScan("s-a", t, now - timedelta(minutes=31), now - timedelta(minutes=30), 1, 1,
                     shard_id="s-a:tcp:0", ports=(PortRange(port, port),))
    store.insert_findings([seen])
    store.insert_host_scans([first])
    recorder = ChangeRecorder(store)
    recorder.add_findings([seen])
    asyncio.run(recorder.finish([first]))
    # a later scan that did not see it, stored and never compared (its run was killed)
    store.insert_host_scans([HostScan("s-b", t, now - timedelta(minutes=21),
                                      now - timedelta(minutes=20), 1, 0, shard_id="s-b:tcp:0",
                                      ports=(PortRange(port, port),))])
"""


@pytest.mark.parametrize("fence", [
    pytest.param({"PORTWATCH_SCOPE_ALLOW": "127.0.0.1/32"}, id="allow-list"),
    pytest.param({"exclude": "127.0.0.2"}, id="exclude")])
def test_the_change_recovery_at_a_scans_start_keeps_to_the_scans_scope(
        tmp_path: Path, fence: dict[str, str]) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    accepted: list[int] = []
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(lambda conn: accepted.append(1), ("127.0.0.2",)) as listener:
        # Given a store where 127.0.0.2's last scan was stored and never compared (its
        # comparison re-probes the port it no longer saw, which listens)
        seeded = subprocess.run([sys.executable, "-c", _SEED_UNCOMPARED, store,
                                 str(listener.port)], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert seeded.returncode == 0, seeded.stderr
        # When a scan of 127.0.0.1 runs with 127.0.0.2 outside its scope
        extra = ["--exclude", fence["exclude"]] if "exclude" in fence else []
        env = {k: v for k, v in fence.items() if k != "exclude"}
        result = run_cli("scan", *extra, "127.0.0.1", "--ports", "1-5", "--udp", "none", "-q",
                         store=store, env=env)
    # Then the scan runs, and nothing connected to 127.0.0.2
    assert result.code == 0, result.stderr
    assert accepted == []


def test_a_tiny_batch_time_still_stores_and_ends(tmp_path: Path) -> None:
    # (a review of 2026-12-05: PORTWATCH_BATCH_SECONDS=1e-12 spun the sink at full CPU
    # forever, deaf to SIGTERM)
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1\r\n")) as listener:
        result = run_cli("scan", "127.0.0.1", "--ports", str(listener.port), "--udp", "none",
                         "-q", store=store, env={"PORTWATCH_BATCH_SECONDS": "1e-12"},
                         timeout=120)
    assert result.code == 0, result.stderr
    listed = json.loads(run_cli("report", "list", "-f", "json", store=store).stdout)
    assert [(r["port"], r["service"]) for r in listed] == [(listener.port, "ssh")]
