"""`produce --wait` when the broker goes away in the middle of the wait.

A broker that drops while the lag is being read is a fault this test cannot cause at a
chosen moment on the suite's shared broker: ``group_lag`` is replaced by a FAKE that
raises kafka-python's own timeout error (what describe_topics and the offset requests
raise then), the given number of times.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka.errors import KafkaTimeoutError

from portwatch import distributed_cli
from portwatch.console import EXIT_RUNTIME, PortwatchError
from producers import publish
from producers.publish import GroupLag
from schemas.topics import topic_names


def broker_away(times: int) -> tuple[list[int], Callable[..., GroupLag]]:
    calls = [0]

    def group_lag(bootstrap: str, group_id: str, topics: list[str],
                  timeout: float = 10.0) -> GroupLag:
        calls[0] += 1
        if calls[0] <= times:
            raise KafkaTimeoutError("Failed to get the offsets in 10.0 secs")
        return GroupLag(group_id, 5, 5)

    return calls, group_lag


def test_a_broker_back_within_the_wait_ends_it_drained(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls, fake = broker_away(times=2)
    monkeypatch.setattr(publish, "group_lag", fake)
    distributed_cli._wait_drained("127.0.0.1:9092", topic_names("t-"), timeout=30)
    assert "pipeline drained" in capsys.readouterr().err
    assert calls[0] == 2 + 3  # two failed reads, then the three groups


def test_a_broker_away_for_the_whole_wait_is_one_line_and_exit_1(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _calls, fake = broker_away(times=10**6)
    monkeypatch.setattr(publish, "group_lag", fake)
    with pytest.raises(PortwatchError) as failed:
        distributed_cli._wait_drained("127.0.0.1:9092", topic_names("t-"), timeout=1)
    assert failed.value.code == EXIT_RUNTIME
    message = str(failed.value)
    assert message.startswith("pipeline not drained after 1s: the broker did not answer")
    assert "KafkaTimeoutError" in message and "\n" not in message
