"""How the masscan engine plans its runs: retry passes over silent ports only,
command lines, source ports. Pure planning: no masscan, no packets (the runs
themselves are tested against namespace hosts in tests/integration)."""

from __future__ import annotations

import math

from probers.discovery.masscan import MAX_RANGES_PER_RUN, MasscanEngine
from probers.discovery.masscan_path import MasscanPath
from probers.discovery.tap import CLOSED, OPEN, AnswerTap
from schemas.records import PortRange, Shard, Target

ALL = (PortRange(1, 65535),)
HOSTS = ("198.18.9.2", "198.18.9.3")


def _shard(ports: tuple[PortRange, ...] = ALL, seed: int = 7, index: int = 3) -> Shard:
    return Shard(
        scan_id="s", shard_id="s-3", seed=seed, index=index,
        targets=tuple(Target(ip=ip, target=ip) for ip in HOSTS), ports=ports,
    )


def _tap() -> AnswerTap:  # never opened: planning reads only its answer table
    return AnswerTap("veth-x", "198.18.9.1", 61000, HOSTS)


def test_first_pass_sends_the_whole_shard_and_expects_every_answer() -> None:
    shard = _shard()
    work = MasscanEngine()._pass_work(shard, shard.targets, _tap(), 0)
    assert work == [(shard.targets, ALL, 2 * 65535)]


def test_retry_pass_without_a_tap_resends_the_whole_shard() -> None:
    shard = _shard()
    assert MasscanEngine()._pass_work(shard, shard.targets, None, 1) == [(shard.targets, ALL, 0)]


def test_retry_pass_resends_only_silent_ports_to_hosts_that_left_any() -> None:
    shard = _shard((PortRange(1, 100),))
    tap = _tap()
    for port in range(1, 101):  # host 1 answered everything
        tap.mark(HOSTS[0], port, CLOSED)
    for port in range(1, 101):  # host 2 left 10-12 and 50 silent
        if port not in (10, 11, 12, 50):
            tap.mark(HOSTS[1], port, OPEN if port == 80 else CLOSED)
    work = MasscanEngine()._pass_work(shard, shard.targets, tap, 1)
    assert work == [([shard.targets[1]], (PortRange(10, 12), PortRange(50, 50)), 4)]


def test_retry_pass_is_empty_when_everything_answered() -> None:
    shard = _shard((PortRange(1, 10),))
    tap = _tap()
    for ip in HOSTS:
        for port in range(1, 11):
            tap.mark(ip, port)
    assert MasscanEngine()._pass_work(shard, shard.targets, tap, 1) == []


def test_a_scattered_silent_set_is_split_into_bounded_command_lines() -> None:
    shard = _shard()
    tap = _tap()
    for port in range(1, 65536, 2):  # every odd port answered on both hosts
        for ip in HOSTS:
            tap.mark(ip, port, CLOSED)
    work = MasscanEngine()._pass_work(shard, shard.targets, tap, 1)
    silent_ports = list(range(2, 65536, 2))
    assert len(work) == -(-len(silent_ports) // MAX_RANGES_PER_RUN)
    assert all(len(ranges) <= MAX_RANGES_PER_RUN for _hosts, ranges, _ in work)
    assert [p for _h, ranges, _ in work for r in ranges for p in r] == silent_ports
    assert sum(expect for _h, _r, expect in work) == 2 * len(silent_ports)


def test_argv_uses_noreset_only_when_the_kernel_owns_the_source_address() -> None:
    engine = MasscanEngine(rate=1234)
    shard = _shard((PortRange(1, 3),))
    own = MasscanPath("veth-x", "198.18.9.1", router_mac="aa:bb:cc:dd:ee:ff", local_source=True)
    other = MasscanPath("veth-x", "198.18.9.250", router_mac="aa:bb:cc:dd:ee:ff")
    a = engine._argv("masscan", shard, shard.targets, shard.ports, own, 1, 0, [], 61234)
    b = engine._argv("masscan", shard, shard.targets, shard.ports, other, 1, 0, [], 0)
    assert "--noreset" in a and "--noreset" not in b
    assert a[a.index("--source-port") + 1] == "61234" and "--source-port" not in b
    assert a[a.index("-p") + 1] == "1-3" and a[a.index("--rate") + 1] == "1234"
    assert a[-2:] == list(HOSTS)


def test_source_port_is_stable_per_shard_and_above_the_ephemeral_range() -> None:
    ports = {
        MasscanEngine._source_port(_shard(seed=s, index=i)) for s in range(5) for i in range(50)
    }
    assert all(61000 <= p < 65500 for p in ports)
    assert len(ports) > 200  # shards of one scan get different ports
    # pinned: 61000 + (seed x 7919 + index x 104729) mod 4500, whatever the process
    assert MasscanEngine._source_port(_shard()) == 61620
    assert MasscanEngine._source_port(_shard(seed=1, index=0)) == 64419


def test_a_pass_deadline_assumes_no_rate_above_what_masscan_can_send() -> None:
    from probers.discovery.masscan_run import PLANNED_RATE_CAP, pass_deadline

    # A --rate of 10,000,000 for 16 hosts x 40,000 ports (a review: masscan sent ~60,000
    # a second, and every pass was killed at 80-90 % done) is planned at the cap: time
    # for the 640,000 probes at 50,000 a second and more
    assert PLANNED_RATE_CAP == 50_000
    assert pass_deadline(640_000, 10_000_000, 1) == pass_deadline(640_000, 50_000, 1)
    assert pass_deadline(640_000, 10_000_000, 1) > 1.5 * 640_000 / 50_000
    # and the default rate (10,000) plans its send time as before: 1.5 x probes / rate
    assert math.isclose(pass_deadline(65_535, 10_000, 1) - pass_deadline(0, 10_000, 1),
                        1.5 * 65_535 / 10_000)
