"""The composition root (portwatch/assembly.py): every setting `portwatch settings` shows
reaches the component it configures, built the way the commands build it; and the
engine table (probers/discovery/engines.py) has an implementation for every engine.

Given a non-default value for one setting (through its PORTWATCH_* variable), when the
components are built from the settings, then the value is read back off the component
itself, not off the settings object. Nothing is scanned; the store is a real chdb one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

from portwatch.assembly import Assembly
from portwatch.settings import Settings
from probers.discovery.base import EngineUnavailable
from probers.discovery.connect import ConnectEngine
from probers.discovery.engines import ENGINES, EngineName, build_engine, choose_engine
from probers.discovery.masscan import MasscanEngine
from probers.discovery.udp import UdpEngine
from schemas.records import PortRange, Proto, Shard, Target
from schemas.topics import topic_names

LOOPBACK = Target("127.0.0.1", "127.0.0.1")


def shard(proto: Proto) -> Shard:
    return Shard("s", f"s:{proto.value}:0", (LOOPBACK,), (PortRange(1, 10),), proto)


def tcp_engine(a: Assembly) -> Any:
    return a.engine_factory(engine="connect")(shard(Proto.TCP))


def udp_engine(a: Assembly) -> Any:
    engine = a.engine_factory()(shard(Proto.UDP))
    assert isinstance(engine, UdpEngine)
    return engine.options


def masscan_engine(a: Assembly) -> Any:
    engine = build_engine(EngineName.MASSCAN, a.engine_options())
    assert isinstance(engine, MasscanEngine)
    return engine


def engine_choice(a: Assembly) -> str:
    try:
        return type(a.engine_factory()(shard(Proto.TCP))).__name__
    except EngineUnavailable as exc:  # masscan cannot scan loopback: the choice reached it
        return f"refused: {exc}"


def worker(a: Assembly) -> Any:
    return a.worker_options(a.topics())


def pipeline(a: Assembly) -> Any:
    return a.pipeline_options(a.topics())


def alert_rules(a: Assembly) -> list[str] | None:
    config = a.alert_config()
    return None if config is None else [rule.name for rule in config.rules]


def runner(a: Assembly, store: Any) -> Any:
    return a.embedded_runner(store)


# setting -> (value from the environment, what the component says, what it must say)
Case = tuple[str, Callable[..., Any], Any]
CASES: dict[str, Case] = {
    "store": ("chdb:///tmp/pw-elsewhere", lambda a, s: a.store_location().path,
              "/tmp/pw-elsewhere"),
    "scope_allow": ("127.0.0.0/8", lambda a, s: [str(n) for n in a.scope().allow],
                    ["127.0.0.0/8"]),
    "ports": ("22,80", lambda a, s: a.scan_input(["127.0.0.1"]).tcp_ports,
              (PortRange(22, 22), PortRange(80, 80))),
    "udp": ("53,161", lambda a, s: a.scan_input(["127.0.0.1"]).udp_ports,
            (PortRange(53, 53), PortRange(161, 161))),
    "engine": ("masscan", lambda a, s: engine_choice(a),
               "refused: masscan cannot scan loopback (127.0.0.1)"),
    "concurrency": ("77", lambda a, s: tcp_engine(a).concurrency, 77),
    "timeout": ("0.25", lambda a, s: tcp_engine(a).timeout, 0.25),
    "retries": ("3", lambda a, s: tcp_engine(a).retries, 3),
    "rate": ("1234", lambda a, s: masscan_engine(a).rate, 1234),
    "masscan_passes": ("3", lambda a, s: masscan_engine(a).passes, 3),
    "masscan_binary": ("/opt/masscan", lambda a, s: masscan_engine(a).binary, "/opt/masscan"),
    "masscan_adapter": ("veth9", lambda a, s: masscan_engine(a).adapter, "veth9"),
    "masscan_adapter_ip": ("198.18.0.9", lambda a, s: masscan_engine(a).adapter_ip,
                           "198.18.0.9"),
    "masscan_router_mac": ("02:00:00:00:00:09", lambda a, s: masscan_engine(a).router_mac,
                           "02:00:00:00:00:09"),
    "udp_rate": ("123", lambda a, s: udp_engine(a).rate, 123.0),
    "udp_timeout": ("0.5", lambda a, s: udp_engine(a).timeout, 0.5),
    "udp_retries": ("2", lambda a, s: udp_engine(a).retries, 2),
    "udp_concurrency": ("99", lambda a, s: udp_engine(a).concurrency, 99),
    "udp_deadline": ("42", lambda a, s: udp_engine(a).deadline, 42.0),
    "nmap_data": ("NMAPDIR", lambda a, s: (a.stage_context().fallback.path,
                                           udp_engine(a).nmap_data,
                                           masscan_engine(a).nmap_payloads), ()),
    "identify_concurrency": ("5", lambda a, s: (runner(a, s).identify_workers,
                                                pipeline(a).identify_concurrency), (5, 5)),
    "per_host_connections": ("2", lambda a, s: a.stage_context().per_host_connections, 2),
    "banner_wait": ("0.7", lambda a, s: a.stage_context().identify.banner_wait, 0.7),
    "identify_budget": ("4", lambda a, s: a.stage_context().identify.budget, 4.0),
    "snmp_public_community": ("true", lambda a, s: (
        a.stage_context().identify.snmp_public_community,
        udp_engine(a).snmp_public_community), (True, True)),
    "nmap_probes": ("false", lambda a, s: a.stage_context().fallback, None),
    "prevalence_prior": ("false", lambda a, s: a.store_parameters(), {"no_prior": 1}),
    "tls": ("false", lambda a, s: a.stage_context().tls_probe, None),
    "tls_timeout": ("1.5", lambda a, s: a.stage_context().tls_probe.timeout, 1.5),
    "tls_budget": ("9", lambda a, s: a.stage_context().tls_probe.budget, 9.0),
    # a real PEM bundle: the settings refuse a path that is none (TRUST: written below)
    "tls_trust_store": ("TRUST", lambda a, s: a.stage_context().tls_probe.trust_store,
                        "TRUST"),
    "tarpit_threshold": ("300", lambda a, s: (runner(a, s).tarpit_threshold,
                                              worker(a).tarpit_threshold), (300, 300)),
    "shard_ports": ("1000", lambda a, s: (
        runner(a, s).shard_ports,
        a.scan_plan(a.scan_input(["127.0.0.1"]))[0].plans[0].ports_per_shard), (1000, 1000)),
    "shard_hosts": ("4", lambda a, s: (
        runner(a, s).shard_hosts,
        a.scan_plan(a.scan_input(["127.0.0.1"]))[0].plans[0].hosts_per_shard), (4, 4)),
    "shard_attempts": ("3", lambda a, s: (runner(a, s).shard_attempts,
                                          worker(a).shard_attempts), (3, 3)),
    "batch_size": ("50", lambda a, s: runner(a, s).batch_size, 50),
    "batch_seconds": ("2.5", lambda a, s: (runner(a, s).batch_seconds,
                                           pipeline(a).sink_within), (2.5, 2.5)),
    "alerts": ("ALERTS", lambda a, s: alert_rules(a), ["risky-opened"]),
    "kafka": ("127.0.0.1:19092", lambda a, s: (worker(a).bootstrap, pipeline(a).bootstrap),
              ("127.0.0.1:19092", "127.0.0.1:19092")),
    "broker_wait": ("5", lambda a, s: a.broker().wait, 5),
    "topic_replication": ("3", lambda a, s: a.broker().replication, 3),
    "topic_prefix": ("team-a.", lambda a, s: (a.topics(), worker(a).group_id),
                     (topic_names("team-a."), "team-a.portwatch-discover")),
    "session_timeout": ("20", lambda a, s: (worker(a).session_timeout_ms,
                                            pipeline(a).session_timeout), (20_000, 20.0)),
    "max_poll_interval": ("100", lambda a, s: (
        worker(a).max_poll_interval_ms,
        a.engine_factory(engine="connect", shard_deadline=a.shard_deadline())(
            shard(Proto.TCP)).deadline), (100_000, 80.0)),
    "commit_interval": ("0.5", lambda a, s: pipeline(a).commit_interval, 0.5),
    "sink_buffer": ("42", lambda a, s: pipeline(a).sink_buffer, 42),
    "change_settle": ("30", lambda a, s: a.change_stage(s).hold.settle, 30.0),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in fields(Settings):
        monkeypatch.delenv(Settings.env_name(f.name), raising=False)


def test_the_table_covers_every_setting() -> None:
    assert sorted(CASES) == sorted(f.name for f in fields(Settings))


ALERTS_FILE = """\
channels:
  hook: {webhook: "http://127.0.0.1:9/hook", secret_file: hook.secret}
rules:
  - name: risky-opened
    when: {kinds: [opened], colors: [red]}
    notify: [hook]
"""


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_setting_reaches_its_component(name: str, monkeypatch: pytest.MonkeyPatch,
                                            store: Any, tmp_path: Any) -> None:
    raw, read, expected = CASES[name]
    if raw == "ALERTS":
        raw = str(tmp_path / "alerts.yaml")
        (tmp_path / "alerts.yaml").write_text(ALERTS_FILE)
        (tmp_path / "hook.secret").write_text("s3cret-s3cret-s3cret\n")
    if raw == "NMAPDIR":  # a directory that exists (a missing one is refused)
        raw = str(tmp_path / "nmap")
        (tmp_path / "nmap").mkdir()
        expected = (raw, raw, f"{raw}/nmap-payloads")
    if raw == "TRUST":
        import trustme

        raw = expected = str(tmp_path / "ours.pem")
        trustme.CA().cert_pem.write_to_path(raw)
    # Given the default, the component does not already say the expected value
    default = read(Assembly(Settings.from_env()), store)
    # When the setting comes from its environment variable
    monkeypatch.setenv(Settings.env_name(name), raw)
    got = read(Assembly(Settings.from_env()), store)
    # Then the component built from the settings carries it
    assert got == expected
    assert default != expected


def test_every_engine_name_has_an_implementation() -> None:
    # Given the engine table, then every name builds an engine that calls itself that
    assert set(ENGINES) == set(EngineName)
    for name in EngineName:
        assert build_engine(name).name == name.value
    assert isinstance(build_engine(EngineName.CONNECT), ConnectEngine)


def test_auto_takes_the_udp_engine_for_udp_and_connect_for_loopback() -> None:
    engine, note = choose_engine("auto", Proto.UDP, [LOOPBACK])
    assert isinstance(engine, UdpEngine) and note == ""
    engine, note = choose_engine("auto", Proto.TCP, [LOOPBACK])
    assert isinstance(engine, ConnectEngine)
    # (masscan cannot scan loopback; without masscan installed, it says so instead)
    assert note.startswith("masscan unavailable: masscan ")
    assert note.endswith("; using the connect engine")
    with pytest.raises(ValueError, match="--engine must be auto, masscan, connect"):
        choose_engine("zmap", Proto.TCP, [LOOPBACK])


def test_targets_from_standard_input_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from portwatch import assembly
    from producers.targets import TargetError

    a = Assembly(Settings.from_env(ports="22", udp="none"))
    # Given targets on standard input, comments and blank lines among them
    monkeypatch.setattr("sys.stdin", io.StringIO("127.0.0.1  # web\n\n127.0.0.2\n"))
    assert [t.ip for t in a.scan_input(["-"]).targets] == ["127.0.0.1", "127.0.0.2"]
    # When a line is longer than any target, or there are too many lines, then one line
    monkeypatch.setattr("sys.stdin", io.StringIO("127.0.0.1\n" + "x" * 5000 + "\n"))
    with pytest.raises(TargetError, match="^standard input line 2: 5,000 characters is not a "
                                          "target$"):
        a.scan_input(["-"])
    monkeypatch.setattr(assembly, "MAX_STDIN_TARGETS", 3)
    monkeypatch.setattr("sys.stdin", io.StringIO("127.0.0.1\n" * 4))
    with pytest.raises(TargetError, match="more than 3 lines of targets"):
        a.scan_input(["-"])


def test_only_org_keeps_one_organization_of_a_shared_inventory(tmp_path: Any) -> None:
    from producers.targets import TargetError

    a = Assembly(Settings.from_env(ports="22", udp="none"))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("Example Corp: [127.0.0.1, 127.0.0.2]\nOther Org: [127.0.0.3]\n")
    # Given a shared inventory and one of its organizations, in another case
    work = a.scan_input(["127.0.0.4"], organization="Example Corp", inventory=str(inventory),
                        only_organization=" example CORP ")
    # Then only that organization's targets are scanned, command-line ones included
    assert [(t.ip, t.organization) for t in work.targets] == [
        ("127.0.0.4", "Example Corp"), ("127.0.0.1", "Example Corp"),
        ("127.0.0.2", "Example Corp")]
    assert [t.ip for t in a.scan_input([], inventory=str(inventory),
                                       only_organization="Other Org").targets] == ["127.0.0.3"]
    # And an organization with no target is one line, before anything is sent
    with pytest.raises(TargetError, match="^no target of organization 'Nobody'$"):
        a.scan_input([], inventory=str(inventory), only_organization="Nobody")


def test_only_org_names_a_label_as_it_was_stored(tmp_path: Any) -> None:
    a = Assembly(Settings.from_env(ports="22", udp="none"))
    inventory = tmp_path / "inventory.csv"
    # Given an organization whose spreadsheet cell held a tab (stored as one space)
    inventory.write_text('target,organization\n127.0.0.1,"Multi\tTab  Org"\n')
    # Then --only-org with the same tab finds it, as `report --org` does (it was refused:
    # no target of organization; a review)
    work = a.scan_input([], inventory=str(inventory), only_organization="Multi\tTab  Org")
    assert [(t.ip, t.organization) for t in work.targets] == [("127.0.0.1", "Multi Tab Org")]


@pytest.mark.parametrize(("udp", "hosts", "ports"), [
    ("", 16, 65_535),         # the top 1,000: TCP's shard size, plan unchanged
    ("1-65535", 1, 65_535),   # every UDP port: one host per shard fits 600 s at 500/s
])
def test_a_udp_shard_fits_its_deadline_at_the_udp_rate(monkeypatch: pytest.MonkeyPatch,
                                                       udp: str, hosts: int,
                                                       ports: int) -> None:
    # (before: 16 hosts x 65,535 UDP ports per shard, 4,194 s of probes against a 600 s
    # deadline: the shard failed every attempt, and a rerun failed the same way)
    if udp:
        monkeypatch.setenv(Settings.env_name("udp"), udp)
    a = Assembly(Settings.from_env())
    work = a.scan_input([f"127.0.9.{n}" for n in range(1, 21)])
    plan, _start = a.scan_plan(work)
    [tcp] = [p for p in plan.plans if p.proto is Proto.TCP]
    [udp_plan] = [p for p in plan.plans if p.proto is Proto.UDP]
    assert (tcp.hosts_per_shard, tcp.ports_per_shard) == (16, 65_535)
    assert (udp_plan.hosts_per_shard, udp_plan.ports_per_shard) == (hosts, ports)
    s = a.settings
    for shard in udp_plan.shards():
        probes = shard.probe_count * (1 + s.udp_retries)
        assert probes / s.udp_rate <= s.udp_deadline / 2
