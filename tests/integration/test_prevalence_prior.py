"""Prevalence with the Internet prior, through the real store and the real CLI.

Given a one-host store, when the List is read, then each port's bucket is the larger of
the estate's count and the Internet prior, and says which (the SQL applies the rule of
stream_processors/prevalence_prior.py: a test compares both); with
PORTWATCH_PREVALENCE_PRIOR=false only the estate counts. End to end: 8080 open on one
loopback host reads "very common (Internet)" on day one and 31337 reads "rare".
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.records import Finding, OpenPort, RiskColor, ServiceInfo, Target
from stream_processors.prevalence_prior import combined
from tests import loopback
from tests.conftest import run_cli, scratch_store

NOW = datetime.now(UTC).replace(microsecond=0)
PRIOR = [("tcp", 443, 20867), ("tcp", 8443, 999), ("tcp", 31337, 16), ("udp", 53, 21350)]


@pytest.fixture
def db(shared_chdb_path: Path):  # type: ignore[no-untyped-def]
    with scratch_store(shared_chdb_path, "pp") as store:
        rows = []
        for i in range(60):  # 8443 open on 60 of your own hosts (the prior says 999)
            t = Target(ip=f"198.18.1.{i}", target=f"198.18.1.{i}")
            rows.append(Finding(port=OpenPort(scan_id="s", target=t, port=8443, observed_at=NOW),
                                service=ServiceInfo(service="https"), risk_color=RiskColor.GREEN))
        one = Target(ip="198.18.0.1", target="198.18.0.1")
        for port in (443, 31337, 40001):
            rows.append(Finding(port=OpenPort(scan_id="s", target=one, port=port, observed_at=NOW),
                                service=ServiceInfo(service="x"), risk_color=RiskColor.YELLOW))
        store.insert_findings(rows)
        assert store.load_internet_prior("test prior", PRIOR) is True
        yield store


def by_port(db: Any) -> dict[int, dict[str, Any]]:
    return {r["port"]: r for r in db.report("list").dicts() if r["ip"] in ("198.18.0.1",
                                                                           "198.18.1.0")}


def test_sql_applies_the_documented_rule(db: Any) -> None:
    rows = by_port(db)
    prior = {port: n for _proto, port, n in PRIOR}
    for port, row in rows.items():
        # Then every row says exactly what the Python rule says
        instances, shown, source = combined(row["instances"], prior.get(port, 0))
        assert (row["prevalence"], row["prevalence_source"]) == (shown, source), port
        assert row["internet_instances"] == prior.get(port, 0)
    assert (rows[443]["prevalence"], rows[443]["prevalence_source"]) == ("very common",
                                                                         "Internet")
    assert (rows[31337]["prevalence"], rows[31337]["prevalence_source"]) == ("rare", "Internet")
    assert (rows[40001]["prevalence"], rows[40001]["prevalence_source"]) == ("rare", "estate")
    assert (rows[8443]["prevalence"], rows[8443]["prevalence_source"]) == ("somewhat common",
                                                                           "Internet")
    # And the prevalence filter uses the combined bucket
    assert {r["port"] for r in db.report("list", {"prevalence": "very common"}).dicts()} == {
        443}


def test_prior_off_counts_the_estate_only(db: Any) -> None:
    db.default_parameters["no_prior"] = 1
    rows = by_port(db)
    assert {p: (r["prevalence"], r["prevalence_source"], r["internet_instances"])
            for p, r in rows.items()} == {
        443: ("rare", "estate", 0), 31337: ("rare", "estate", 0), 40001: ("rare", "estate", 0),
        8443: ("less common", "estate", 0)}


def test_an_unchanged_prior_is_not_reloaded(db: Any) -> None:
    assert db.load_internet_prior("test prior", PRIOR) is False
    assert db.load_internet_prior("test prior v2", PRIOR[:1]) is True
    assert db.query("SELECT proto, port, instances FROM internet_prior FINAL") == [
        ("tcp", 443, 20867)]


# -- end to end: one loopback host, the user's own nmap-services ------------------------------

HOST = "127.0.0.61"


@pytest.fixture(scope="module")
def one_host_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not Path("/usr/share/nmap/nmap-services").is_file():
        pytest.skip("nmap-services not installed (Debian nmap-common)")
    store = f"chdb://{tmp_path_factory.mktemp('prior') / 'store'}"
    with contextlib.ExitStack() as stack:
        for port in (8080, 31337):
            try:
                stack.enter_context(loopback.listen(loopback.http_handler("nginx/1.22.1"),
                                                    (HOST,), port=port))
            except OSError as exc:
                pytest.skip(f"{HOST}:{port} is taken: {exc}")
        result = run_cli("scan", HOST, "--ports", "8080,31337", "--udp", "none", "-q",
                         store=store, env={"PORTWATCH_IDENTIFY_BUDGET": "4",
                                           "PORTWATCH_TLS": "false"})
        assert result.code == 0, result.stderr
    return store


def test_one_host_store_reads_internet_prevalence_on_day_one(one_host_store: str) -> None:
    # When the List is read as JSON
    result = run_cli("report", "list", "-f", "json", store=one_host_store)
    rows = {r["port"]: r for r in json.loads(result.stdout)}
    # Then 8080 is very common thanks to the Internet prior, 31337 rare, each says why
    assert {p: (r["instances"], r["internet_instances"], r["prevalence"],
                r["prevalence_source"]) for p, r in rows.items()} == {
        8080: (1, 4205, "very common", "Internet"), 31337: (1, 16, "rare", "Internet")}
    # And the terminal table says which, in the bucket's cell
    table = run_cli("report", "list", store=one_host_store).stdout
    assert "very common (Internet)" in table and "rare (Internet)" in table


def test_one_host_store_without_the_prior(one_host_store: str) -> None:
    result = run_cli("report", "list", "-f", "json", store=one_host_store,
                     env={"PORTWATCH_PREVALENCE_PRIOR": "false"})
    assert {r["port"]: (r["prevalence"], r["prevalence_source"])
            for r in json.loads(result.stdout)} == {8080: ("rare", "estate"),
                                                    31337: ("rare", "estate")}


@pytest.mark.parametrize("no_prior", [False, True])
def test_an_alert_rules_prevalence_is_the_lists(db: Any, tmp_path: Path, no_prior: bool) -> None:
    from portwatch.alerts import AlertDispatcher, load_alerts

    # Given the reader setting as the CLI sets it (PORTWATCH_PREVALENCE_PRIOR=false)
    db.default_parameters.update({"no_prior": 1} if no_prior else {})
    try:
        alerts = tmp_path / "alerts.yaml"
        alerts.write_text('channels:\n  a: {apprise: "json://127.0.0.1:9/x"}\nrules:\n'
                          "  - name: rare\n    when: {prevalence: [rare]}\n"
                          "    notify: [a]\n")
        dispatcher = AlertDispatcher(db, load_alerts(alerts))
        # When the rule buckets the ports the List shows
        buckets = dispatcher._prevalence({("tcp", p) for p in (443, 8443, 31337, 40001)})
        listed = {p: r["prevalence"] for p, r in by_port(db).items()}
    finally:
        db.default_parameters.pop("no_prior", None)
    # Then each port is in the List's bucket: 443 very common (the Internet's count)
    # with the prior, rare without it
    assert {p: buckets[("tcp", p)] for p in listed} == listed
    assert buckets[("tcp", 443)] == ("rare" if no_prior else "very common")
