"""pytest fixtures for tests that need the real Kafka broker (``make kafka-up``).

Owns: finding the broker (env ``PORTWATCH_KAFKA``, default 127.0.0.1:9092), skipping
when there is none (failing instead when ``CI=true``: CI starts the broker, so a
missing one is a broken pipeline, not a reason to skip), and giving every test its
own topic and consumer group so tests never see each other's records (the pattern
of Faust's tests/integration/broker/conftest.py).

Must not touch: any broker but a loopback one (tests talk to 127.0.0.0/8 or ::1
only), topics other than the ones it created, the broker's lifecycle.

Register in tests/conftest.py with::

    from kafka_fixtures import kafka_bootstrap, unique_group_id, unique_topic  # noqa: F401
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from producers.kafka_io import (
    KafkaUnavailable,
    TopicSetupError,
    admin_client,
    ensure_topics,
    split_bootstrap,
    wait_for_broker,
)
from schemas.topics import Topic

log = logging.getLogger(__name__)

KAFKA_ENV = "PORTWATCH_KAFKA"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SKIP_REASON = "no Kafka broker: run `make kafka-up`"
DEFAULT_TEST_PARTITIONS = 4
_TOPIC_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _require_loopback(bootstrap: str) -> None:
    host, _port = split_bootstrap(bootstrap)
    try:
        is_loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = host == "localhost"
    if not is_loopback:
        pytest.fail(f"{KAFKA_ENV}={bootstrap}: tests talk to a loopback broker only")


def _slug(text: str, limit: int) -> str:
    return _TOPIC_UNSAFE.sub("-", text).strip("-.")[:limit] or "test"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The address of a broker that answers; skips (or fails under CI=true) otherwise."""
    bootstrap = os.environ.get(KAFKA_ENV, "").strip() or DEFAULT_BOOTSTRAP
    _require_loopback(bootstrap)
    # CI just ran `make kafka-up`, which already waited: allow a slow runner some slack.
    try:
        wait_for_broker(bootstrap, timeout=30.0 if is_ci() else 3.0)
    except KafkaUnavailable as exc:
        if is_ci():
            pytest.fail(f"{exc} (CI=true: the Kafka tests must run, not skip)")
        pytest.skip(SKIP_REASON)
    return bootstrap


@pytest.fixture
def unique_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Topic]:
    """A topic of this test only, created before and deleted after it.

    Four partitions unless parametrised: ``@pytest.mark.parametrize("unique_topic",
    [8], indirect=True)``.
    """
    partitions = int(getattr(request, "param", DEFAULT_TEST_PARTITIONS))
    name = f"test.{_slug(request.node.name, 120)}.{uuid.uuid4().hex[:12]}"
    topic = Topic(name, partitions, f"test topic of {request.node.nodeid}")
    try:
        ensure_topics(kafka_bootstrap, [topic], timeout=30.0)
    except (TopicSetupError, KafkaUnavailable) as exc:
        pytest.fail(f"could not create test topic {name}: {exc}")
    yield topic
    # Best effort: a topic left behind only costs disk until `make kafka-down`.
    try:
        with admin_client(kafka_bootstrap, timeout=10.0) as admin:
            admin.delete_topics([name], timeout_ms=10_000)
    except Exception as exc:  # noqa: BLE001 - teardown must not mask the test's result
        log.warning("could not delete test topic %s: %s", name, exc)


@pytest.fixture
def unique_group_id(request: pytest.FixtureRequest) -> str:
    """A consumer group id no other test (or earlier run) has used."""
    return f"test-{_slug(request.node.name, 80)}-{uuid.uuid4().hex[:12]}"


KAFKACTL = Path(__file__).resolve().parents[1] / "deploy" / "local" / "kafka" / "kafkactl.py"


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while chosen: ports picked
    one after another may come back the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


@dataclass
class PrivateBroker:
    """A single-node KRaft broker of one test's own (``deploy/local/kafka/kafkactl.py`` on
    free loopback ports, data under the test's directory): one a test may stop, freeze
    or start late, which the shared broker must never be. Not started until ``up``."""

    bootstrap: str
    env: dict[str, str]

    @classmethod
    def in_dir(cls, directory: Path) -> PrivateBroker:
        port, controller = free_ports(2)
        env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller),
               "KAFKA_DATA_DIR": str(directory / "data"),
               "KAFKA_RUN_DIR": str(directory / "run")}
        return cls(f"127.0.0.1:{port}", env)

    def ctl(self, *args: str) -> None:
        done = subprocess.run([sys.executable, str(KAFKACTL), *args], env=self.env,
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, f"kafkactl {' '.join(args)}: {done.stderr[-2000:]}"

    def up(self) -> None:
        self.ctl("up")

    def down(self) -> None:
        self.ctl("down")

    def _signal(self, sig: signal.Signals) -> None:
        pid = int((Path(self.env["KAFKA_RUN_DIR"]) / "broker.pid").read_text().strip())
        os.kill(pid, sig)

    def freeze(self) -> None:
        """An outage: the broker process stopped (SIGSTOP), as in a long pause of its
        JVM or its machine. Connections stay up and nothing answers on them: requests
        time out. (Not ``down`` under a live in-process client: kafka-python 3.0 never
        closes the socket of a refused connect, and the collector's warnings about them
        land in later tests.)"""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)


def consume(consumer: Any, count: int, timeout: float = 30.0) -> list[Any]:
    """Poll until ``count`` records arrived or ``timeout`` seconds passed; return them.

    Bounded: returns what it has at the deadline, so a test asserts on the values
    (and sees what is missing) instead of hanging.
    """
    deadline = time.monotonic() + timeout
    records: list[Any] = []
    while len(records) < count and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500, max_records=count - len(records))
        for partition_records in batch.values():
            records.extend(partition_records)
    return records


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "KAFKACTL",
    "KAFKA_ENV",
    "SKIP_REASON",
    "PrivateBroker",
    "consume",
    "free_ports",
    "is_ci",
    "kafka_bootstrap",
    "unique_group_id",
    "unique_topic",
]
