"""The command line audit's findings (a damaged store, the TLS trust store, checkpoints,
inventories with a BOM or unknown columns, discover's scope, the scope fence, serve's
port, a store path that is a file), through the real ``portwatch`` command: one line
on stderr, the right exit code, no traceback.

Nothing here is scanned or sent anywhere: every case is refused before discovery
starts, and the Kafka address is a loopback port nothing listens on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from portwatch.assembly import Assembly
from portwatch.settings import Settings
from producers.shards import ScanPlan
from tests.conftest import REPO, CliResult, run_cli
from tests.e2e.test_cli_errors import assert_refused
from tests.loopback import free_port


def assert_one_line(result: CliResult, message: str, *, code: int) -> None:
    """One stderr line, no traceback, no output: test_cli_errors' check."""
    assert_refused(result, message, code=code)


# -- 1. a damaged store ----------------------------------------------------------------

_SEED = """
import json, sys
from datetime import UTC, datetime, timedelta
from schemas.records import (Finding, HostScan, OpenPort, PortRange, Proto, RiskColor,
                             ServiceInfo, Target)
from stream_processors.store import Store
db = Store.from_url(sys.argv[1])
when = datetime.now(UTC) - timedelta(hours=1)
host = Target(ip="127.0.0.1", target="127.0.0.1")
db.insert_findings([Finding(port=OpenPort(scan_id="s1", target=host, port=8080,
                                          observed_at=when),
                            service=ServiceInfo(service="http"), risk_color=RiskColor.GREEN)])
db.insert_host_scans([HostScan("s1", host, when, when, 65535, 1, proto=Proto.TCP,
                               ports=(PortRange(1, 65535),))])
print(json.dumps(db.query("SELECT data_paths FROM system.tables WHERE database = "
                          "currentDatabase() AND name = 'port_latest'")[0][0]))
db.close()
"""


def test_a_damaged_table_gives_one_line_not_a_traceback(tmp_path: Path) -> None:
    # Given a store with one finding, whose port_latest data parts are overwritten in
    # place with garbage (same size, so the engine still attaches them)
    path = tmp_path / "store"
    seeded = subprocess.run([sys.executable, "-c", _SEED, f"chdb://{path}"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert seeded.returncode == 0, seeded.stderr
    table_dirs = [Path(p) for p in json.loads(seeded.stdout)]
    damaged = [f for d in table_dirs for f in d.rglob("data.bin")]
    assert damaged
    for data in damaged:
        data.write_bytes((b"GARBAGE!" * (data.stat().st_size // 8 + 1))[:data.stat().st_size])
    # When the List is asked for, then one line names the store and the engine's error
    result = run_cli("report", "list", store=f"chdb://{path}", timeout=120)
    assert_one_line(result, f"cannot read the store at {path}: Code: 432. DB::Exception: "
                            "Unknown codec family code", code=1)


# -- 2. the TLS trust store --------------------------------------------------------------


def _trust_store_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    not_pem = tmp_path / "notpem.pem"
    not_pem.write_text("not a certificate\n")
    return {"missing": (str(tmp_path / "ca.pem.typo"),
                        "the trust store cannot be read: No such file or directory"),
            "directory": (str(tmp_path), "the trust store is a directory"),
            "not-pem": (str(not_pem), "the trust store holds no PEM certificate")}


@pytest.mark.parametrize("case", ["missing", "directory", "not-pem"])
def test_a_bad_trust_store_is_refused_before_anything_is_sent(tmp_path: Path,
                                                             case: str) -> None:
    value, problem = _trust_store_cases(tmp_path)[case]
    store = tmp_path / "store"
    env = {"PORTWATCH_TLS_TRUST_STORE": value}
    # When a scan, and the settings listing, run with it
    scanned = run_cli("scan", "--ports", "1", "--udp", "none", "-q", "127.0.0.1",
                      store=f"chdb://{store}", env=env, timeout=120)
    listed = run_cli("settings", env=env, timeout=120)
    # Then both refuse it in one line naming the variable, and no store was made
    for result in (scanned, listed):
        assert_one_line(result, f"PORTWATCH_TLS_TRUST_STORE={value!r}: {problem}", code=2)
    assert not store.exists()


def test_a_pem_trust_store_is_accepted(tmp_path: Path) -> None:
    import trustme

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    result = run_cli("settings", env={"PORTWATCH_TLS_TRUST_STORE": str(ca)}, timeout=120)
    assert result.code == 0, result.stderr
    assert str(ca) in result.stdout


# -- 3. checkpoints and --scan-id --------------------------------------------------------

PORTS = "1-3"


def _checkpoint(tmp_path: Path, **changes: object) -> Path:
    """A checkpoint of `scan --ports 1-3 --udp none --seed 7 127.0.0.1` (its real
    fingerprint), with ``changes`` over its fields."""
    settings = Settings.from_env(ports=PORTS, udp="none")
    work = Assembly(settings).scan_input(["127.0.0.1"])
    plan = ScanPlan.build("20261205T020000-1a2b3c4d", 7, work.targets, work.tcp_ports,
                          work.udp_ports, hosts_per_shard=settings.shard_hosts,
                          ports_per_shard=settings.shard_ports)
    data: dict[str, object] = {"scan_id": plan.scan_id, "seed": 7,
                               "fingerprint": plan.fingerprint, "next_index": {"tcp": 0}}
    data.update(changes)
    path = tmp_path / "ck.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("changes", [
    pytest.param({"next_index": {"tcp": 1_000_000_000}}, id="index-past-the-plan"),
    pytest.param({"next_index": {"tcp": 1.7}}, id="index-not-an-integer"),
    pytest.param({"next_index": {"tcp": 1e30}}, id="index-a-huge-float"),
    pytest.param({"scan_id": "evil\nscan\x1b[31mRED"}, id="scan-id-with-controls"),
    pytest.param({"scan_id": "x" * 200_000}, id="scan-id-huge"),
])
def test_a_checkpoint_portwatch_did_not_write_is_refused(tmp_path: Path,
                                                         changes: dict[str, object]) -> None:
    checkpoint = _checkpoint(tmp_path, **changes)
    store = tmp_path / "store"
    result = run_cli("scan", "--ports", PORTS, "--udp", "none", "--engine", "connect",
                     "--checkpoint", str(checkpoint), "-q", "127.0.0.1",
                     store=f"chdb://{store}", timeout=120)
    assert_one_line(result, f"checkpoint {checkpoint} is not a portwatch checkpoint", code=2)
    assert checkpoint.exists()  # the evidence is kept
    assert not store.exists()


def test_seconds_are_ascii_numbers() -> None:
    from portwatch.console import SECONDS

    assert [SECONDS.convert(v, None, None) for v in ("0", " 2.5 ", "1e3", 7)] == [
        0.0, 2.5, 1000.0, 7.0]
    for bad in ("\u0663", "\uff11\uff12", "1_000", ""):
        with pytest.raises(click.BadParameter, match="is not a number of seconds"):
            SECONDS.convert(bad, None, None)


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "1e9"])
def test_a_wait_that_never_ends_is_refused(seconds: str) -> None:
    # (before: nan and inf passed click's FloatRange, and --wait waited for ever)
    kafka = f"127.0.0.1:{free_port()}"
    for args in (["produce", "--wait", seconds, "--kafka", kafka, "127.0.0.1"],
                 ["discover", "--idle-exit", seconds, "--kafka", kafka]):
        refused = run_cli(*args, "--broker-wait", "0", timeout=120)
        assert_one_line(refused, f"{seconds!r} is not a number of seconds from 0 to "
                                 "2,592,000 (30 days)", code=2)


def test_a_scan_id_that_is_no_scan_id_is_refused_by_produce() -> None:
    kafka = f"127.0.0.1:{free_port()}"
    refused = run_cli("produce", "--ports", PORTS, "--udp", "none", "--scan-id", "x\ny",
                      "--kafka", kafka, "--broker-wait", "0", "127.0.0.1", timeout=120)
    assert_one_line(refused, "bad --scan-id 'x\\ny': letters, digits", code=2)
    # A name like the help's example passes the check and reaches the (absent) broker
    named = run_cli("produce", "--ports", PORTS, "--udp", "none", "--scan-id", "nightly-1",
                    "--kafka", kafka, "--broker-wait", "0", "127.0.0.1", timeout=120)
    assert_one_line(named, "Kafka", code=1)


# -- 4/5. inventories --------------------------------------------------------------------


def test_a_bom_inventory_and_exclude_file_are_read(tmp_path: Path) -> None:
    # Given an inventory and an exclude file saved with a UTF-8 BOM, the exclusion
    # covering the inventory's only target
    inventory = tmp_path / "bom.csv"
    inventory.write_bytes(b"\xef\xbb\xbftarget,organization,asset\n127.0.0.1,Org,web\n")
    excluded = tmp_path / "bom.txt"
    excluded.write_bytes(b"\xef\xbb\xbf127.0.0.0/8\n")
    # When scanned, then both were read: the exclusion leaves nothing to scan
    result = run_cli("scan", "--inventory", str(inventory), "--exclude-file", str(excluded),
                     "--udp", "none", store=f"chdb://{tmp_path / 'store'}", timeout=120)
    assert_one_line(result, "nothing to scan: the exclusions cover all 1 target addresses",
                    code=2)


def test_every_exclude_file_and_inventory_given_is_read(tmp_path: Path) -> None:
    # Given two inventories (one target each) and two exclude files, the first one
    # excluding the first inventory's target, the second the other's
    first, second = tmp_path / "a.csv", tmp_path / "b.yaml"
    first.write_text("target,organization,asset\n127.0.0.12,Org X,x-1\n")
    second.write_text("- {target: 127.0.0.13, organization: Org Y}\n")
    ex1, ex2 = tmp_path / "ex1.txt", tmp_path / "ex2.txt"
    ex1.write_text("127.0.0.12\n")
    ex2.write_text("127.0.0.13\n")
    # When scanned with both of each, then both inventories' targets were read and both
    # files' exclusions hold: nothing is left to scan (before: click kept only the last
    # file of each, and the address the first exclude file named was scanned)
    result = run_cli("scan", "--inventory", str(first), "--inventory", str(second),
                     "--exclude-file", str(ex1), "--exclude-file", str(ex2), "--udp", "none",
                     store=f"chdb://{tmp_path / 'store'}", timeout=120)
    assert_one_line(result, "nothing to scan: the exclusions cover all 2 target addresses",
                    code=2)


def test_an_unknown_inventory_column_is_refused(tmp_path: Path) -> None:
    inventory = tmp_path / "assets.csv"
    inventory.write_text("target,organisation\n127.0.0.1,Org\n")
    result = run_cli("scan", "--inventory", str(inventory), "--udp", "none",
                     store=f"chdb://{tmp_path / 'store'}", timeout=120)
    assert_one_line(result, "assets.csv: line 1: unknown column 'organisation'", code=2)
    assert not (tmp_path / "store").exists()


# -- 6. discover checks its scope before the broker --------------------------------------


@pytest.mark.parametrize(("flags", "message"), [
    (["--exclude", "not-a-net"], "bad exclusion 'not-a-net'"),
    (["--exclude-file", "/nonexistent/portwatch-exclude"], "cannot read exclude file"),
])
def test_discover_refuses_a_bad_scope_before_the_broker(flags: list[str],
                                                        message: str) -> None:
    result = run_cli("discover", *flags, "--kafka", f"127.0.0.1:{free_port()}",
                     "--broker-wait", "0", timeout=120)
    assert_one_line(result, message, code=2)


# -- 7. the scope fence ------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    (" , ", "PORTWATCH_SCOPE_ALLOW=',' holds no CIDR block"),
    ("foo", "PORTWATCH_SCOPE_ALLOW: bad allowed network 'foo'"),
])
def test_a_bad_scope_fence_is_refused_by_every_command(tmp_path: Path, value: str,
                                                       message: str) -> None:
    env = {"PORTWATCH_SCOPE_ALLOW": value}
    scanned = run_cli("scan", "--ports", "1", "--udp", "none", "-q", "127.0.0.1",
                      store=f"chdb://{tmp_path / 'store'}", env=env, timeout=120)
    listed = run_cli("settings", env=env, timeout=120)
    for result in (scanned, listed):
        assert_one_line(result, message, code=2)
    assert not (tmp_path / "store").exists()


# -- 8. serve --port 0 -------------------------------------------------------------------


def test_serve_refuses_port_zero(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "0", store=f"chdb://{tmp_path / 'store'}",
                     timeout=120)
    assert_one_line(result, "Invalid value for '--port': 0 is not in the range 1<=x<=65535",
                    code=2)


# -- 10. a store path that is a regular file ---------------------------------------------


@pytest.mark.parametrize("command", [
    ["scan", "--ports", "1", "--udp", "none", "-q", "127.0.0.1"],
    ["report", "summary"],
])
def test_a_store_path_that_is_a_file_is_bad_input_everywhere(tmp_path: Path,
                                                             command: list[str]) -> None:
    path = tmp_path / "storefile"
    path.write_text("not a store\n")
    result = run_cli(*command, store=f"chdb://{path}", timeout=120)
    assert_one_line(result, f"the store path {path} is a file, not a store directory", code=2)
    assert path.read_text() == "not a store\n"


def test_a_store_path_under_a_file_is_bad_input(tmp_path: Path) -> None:
    # (it was "[Errno 20] Not a directory", exit 1: a review)
    path = tmp_path / "afile"
    path.write_text("not a store\n")
    result = run_cli("scan", "--ports", "1", "--udp", "none", "-q", "127.0.0.1",
                     store=f"chdb://{path}/sub", timeout=120)
    assert_one_line(result, f"the store path '{path}/sub' cannot be a store directory: a "
                    "part of it is a file; give another --store", code=2)


def test_scan_help_names_the_top_n_udp_form() -> None:
    result = run_cli("scan", "--help", timeout=120)
    assert result.code == 0
    assert "top1000|topN|none|SPEC" in " ".join(result.stdout.split())


def test_settings_names_the_password_variable_and_never_shows_it() -> None:
    # Given the ClickHouse password in the environment
    listed = run_cli("settings", env={"PORTWATCH_CLICKHOUSE_PASSWORD": "s3cret-Value-42"},
                     timeout=120)
    # Then the listing names the variable (it was nowhere: a review), never its value
    assert listed.code == 0, listed.stderr
    assert "s3cret-Value-42" not in listed.stdout + listed.stderr
    [line] = [x for x in listed.stdout.splitlines() if "PORTWATCH_CLICKHOUSE_PASSWORD" in x]
    assert line.split() == ["PORTWATCH_CLICKHOUSE_PASSWORD", "the", "password", "of", "a",
                            "clickhouse://", "--store", "(a", "URL", "carrying", "one", "is",
                            "refused)"]
