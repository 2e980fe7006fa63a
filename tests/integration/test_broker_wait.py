"""Workers started before their broker (``--broker-wait``, ``PORTWATCH_BROKER_WAIT``).

The pods of one release start in any order: a discovery worker whose broker is not up
yet waits for it (saying so once) and then works as usual; one whose broker never
comes gives up after the wait with one line and exit 1, and ``--broker-wait 0`` fails at
once, as before. The broker here is a private one (``tests.kafka_fixtures.PrivateBroker``)
started only after the worker: the shared one must never go down under other tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from schemas.records import PortRange, Shard, Target
from schemas.topics import topic_names
from tests import loopback
from tests.conftest import REPO, run_cli
from tests.integration.test_discover_worker import publish_shard
from tests.kafka_fixtures import PrivateBroker, free_ports

pytestmark = pytest.mark.kafka


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in _text(path):
        assert proc.poll() is None, f"the worker exited ({proc.returncode}):\n{_text(path)}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{_text(path)}"
        time.sleep(0.1)


def test_a_worker_started_before_its_broker_waits_for_it_then_works(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    # (kafka_bootstrap first: the shared broker being up means the jars are here)
    broker = PrivateBroker.in_dir(tmp_path / "broker")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    log = tmp_path / "discover.log"
    with loopback.listen(loopback.banner(b"hello\r\n")) as listener, \
            log.open("w") as err, contextlib.ExitStack() as cleanup:
        # Given a discovery worker started while nothing answers at its broker's address
        proc = subprocess.Popen(
            [sys.executable, "-m", "portwatch", "discover", "--kafka", broker.bootstrap,
             "--broker-wait", "120", "--topic-prefix", prefix, "--engine", "connect",
             "--session-timeout", "6", "--idle-exit", "5"],
            cwd=REPO, env={**os.environ, "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"},
            stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
        cleanup.callback(lambda: proc.poll() is None and proc.kill())
        # Then it says once that it waits, and is still waiting a few seconds later
        _wait_for(log, f"no Kafka broker answers at {broker.bootstrap} yet: waiting up to "
                       "120 s (--broker-wait)", proc, 60)
        time.sleep(3)
        assert proc.poll() is None, _text(log)
        assert "discover worker running" not in _text(log)
        # When the broker comes up, with a shard for it
        broker.up()
        cleanup.callback(broker.down)
        publish_shard(broker.bootstrap, topic_names(prefix), Shard(
            "scan-late", "scan-late:tcp:0", (Target("127.0.0.1", "127.0.0.1"),),
            (PortRange(listener.port, listener.port),)))
        # Then the worker goes on, takes the shard, and exits once it has committed it
        assert proc.wait(timeout=150) == 0, _text(log)
    text = _text(log)
    assert text.count("waiting up to") == 1
    assert f"Kafka broker at {broker.bootstrap} answers" in text
    assert "shard scan-late:tcp:0 done (1 hosts, 1 ports)" in text
    assert "discover worker done: 1 shards, 1 open ports, 0 retries, 0 failed" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("command", ["discover", "process", "produce"])
def test_a_broker_that_never_comes_is_one_line_after_the_wait(command: str,
                                                               tmp_path: Path) -> None:
    # Given a loopback port nobody listens on, and a two-second wait
    (port,) = free_ports(1)
    args = {"discover": [], "process": ["--store", f"chdb://{tmp_path / 'store'}"],
            "produce": ["--ports", "22", "127.0.0.1"]}[command]
    started = time.monotonic()
    result = run_cli(command, *args, "--kafka", f"127.0.0.1:{port}", timeout=120,
                     env={"PORTWATCH_BROKER_WAIT": "2", "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"})
    waited = time.monotonic() - started
    # Then it said it waits, waited, and gave up in one line with exit 1
    assert result.code == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"portwatch: no Kafka broker answers at 127.0.0.1:{port} yet: waiting up to 2 s "
        "(--broker-wait)",
        f"portwatch: error: no Kafka broker answered at 127.0.0.1:{port} within 2 s "
        "(--broker-wait): check --kafka / PORTWATCH_KAFKA (`make kafka-up` starts one on "
        "this machine)"]
    assert waited >= 2
    # And --broker-wait 0 fails at once, with the error it always had
    result = run_cli(command, *args, "--kafka", f"127.0.0.1:{port}", "--broker-wait", "0",
                     timeout=120, env={"PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"})
    assert result.code == 1
    assert result.stderr.splitlines() == [
        f"portwatch: error: no Kafka broker answers at 127.0.0.1:{port}: check --kafka / "
        "PORTWATCH_KAFKA (`make kafka-up` starts one on this machine)"]
