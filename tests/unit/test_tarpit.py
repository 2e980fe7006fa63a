"""TarpitDetector: counting, flagging, holding back and bounding (pure bookkeeping)."""

from __future__ import annotations

import pytest

from probers.discovery.tarpit import TarpitDetector
from schemas.records import OpenPort, Proto, Target

HOST = Target(ip="198.18.1.2", target="198.18.1.2")
OTHER = Target(ip="198.18.1.3", target="198.18.1.3")


def _open(port: int, target: Target = HOST, proto: Proto = Proto.TCP) -> OpenPort:
    return OpenPort(scan_id="s", target=target, port=port, proto=proto, engine="masscan")


def test_ports_up_to_the_threshold_pass_and_the_host_is_not_a_tarpit() -> None:
    # Given a detector with threshold 3
    detector = TarpitDetector(threshold=3)
    # When a host reports exactly 3 open ports
    decisions = [detector.admit(_open(p)) for p in (22, 80, 443)]
    # Then all pass and nothing is flagged
    assert decisions == [True, True, True]
    assert detector.is_tarpit(HOST.ip) is False
    assert detector.flagged_hosts() == []
    assert detector.open_count(HOST.ip) == 3


def test_crossing_the_threshold_flags_the_host_and_holds_further_ports() -> None:
    # Given a detector with threshold 3
    detector = TarpitDetector(threshold=3)
    # When a host reports 6 open ports
    decisions = [detector.admit(_open(p)) for p in range(1, 7)]
    # Then the first 3 pass, the rest are held and the host is flagged
    assert decisions == [True, True, True, False, False, False]
    assert detector.is_tarpit(HOST.ip) is True
    assert [p.port for p in detector.held(HOST.ip)] == [4, 5, 6]
    (verdict,) = detector.flagged_hosts()
    assert (verdict.ip, verdict.open_seen, verdict.admitted, verdict.held, verdict.dropped) == (
        HOST.ip, 6, 3, 3, 0,
    )
    assert "answers on every port" in verdict.note()


def test_hosts_are_counted_separately() -> None:
    # Given a detector with threshold 2 and one host already flagged
    detector = TarpitDetector(threshold=2)
    for p in range(1, 5):
        detector.admit(_open(p))
    # When another host reports two ports
    decisions = [detector.admit(_open(p, OTHER)) for p in (22, 80)]
    # Then they pass: the other host is not a tarpit
    assert decisions == [True, True]
    assert detector.is_tarpit(OTHER.ip) is False
    assert [v.ip for v in detector.flagged_hosts()] == [HOST.ip]


def test_duplicates_are_neither_counted_nor_passed_twice() -> None:
    # Given a detector with threshold 2
    detector = TarpitDetector(threshold=2)
    # When the same port is reported three times (a second masscan pass), then another
    decisions = [detector.admit(_open(22)) for _ in range(3)] + [detector.admit(_open(80))]
    # Then it counts once and the host stays below the threshold
    assert decisions == [True, False, False, True]
    assert detector.open_count(HOST.ip) == 2
    assert detector.is_tarpit(HOST.ip) is False


def test_tcp_and_udp_of_the_same_number_are_distinct_ports() -> None:
    detector = TarpitDetector(threshold=1)
    assert detector.admit(_open(53, proto=Proto.TCP)) is True
    assert detector.admit(_open(53, proto=Proto.UDP)) is False
    assert detector.is_tarpit(HOST.ip) is True


def test_held_ports_are_bounded_by_max_held_and_the_excess_is_counted() -> None:
    # Given a detector that holds at most 5 ports per flagged host
    detector = TarpitDetector(threshold=10, max_held=5)
    # When a host answers on 1000 ports
    passed = sum(detector.admit(_open(p)) for p in range(1, 1001))
    # Then 10 passed, 5 are held, 985 were counted as dropped
    assert passed == 10
    verdict = detector.verdict(HOST.ip)
    assert verdict is not None
    counts = (verdict.open_seen, verdict.admitted, verdict.held, verdict.dropped)
    assert counts == (1000, 10, 5, 985)
    assert "985 more not kept" in verdict.note()


def test_take_held_hands_the_ports_over_once_and_keeps_the_bound() -> None:
    # Given a flagged host with 3 held ports and max_held 4
    detector = TarpitDetector(threshold=1, max_held=4)
    for p in (1, 2, 3, 4):
        detector.admit(_open(p))
    # When the runner takes them for identification, then more ports arrive
    taken = [p.port for p in detector.take_held(HOST.ip)]
    later = [detector.admit(_open(p)) for p in (5, 6)]
    # Then it got them once; one more fits under the bound (3 taken + 1), one is dropped
    assert taken == [2, 3, 4]
    assert detector.take_held(HOST.ip)[0].port == 5
    assert later == [False, False]
    verdict = detector.verdict(HOST.ip)
    assert verdict is not None and (verdict.held, verdict.dropped) == (4, 1)


def test_unknown_hosts_and_forget() -> None:
    detector = TarpitDetector(threshold=1)
    assert detector.is_tarpit("198.18.1.9") is False
    assert detector.take_held("198.18.1.9") == []
    assert detector.verdict("198.18.1.9") is None
    detector.admit(_open(1))
    detector.admit(_open(2))
    detector.forget(HOST.ip)
    assert detector.is_tarpit(HOST.ip) is False
    assert detector.open_count(HOST.ip) == 0


@pytest.mark.parametrize(("threshold", "max_held"), [(0, 10), (1, -1)])
def test_bad_parameters_are_refused(threshold: int, max_held: int) -> None:
    with pytest.raises(ValueError):
        TarpitDetector(threshold, max_held=max_held)
