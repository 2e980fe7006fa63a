"""The distributed shape end to end against the real broker: ``portwatch produce`` ->
``portwatch discover`` (connect engine) -> ``portwatch process`` (Faust) -> chdb store,
for real loopback listeners; then the four reports equal those of an embedded scan
of the same host. Also: a retried scan neither duplicates a finding nor moves
first_seen, and a store held by the sink says so to ``portwatch report``.

The helpers here (``Pipeline``) are shared with test_distributed_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from producers.kafka_io import admin_client
from producers.publish import group_lag
from schemas.topics import TopicSet, topic_names
from tests import loopback
from tests.conftest import REPO, CliResult, run_cli
from tests.loopback import Services, mariadb_greeting

pytestmark = pytest.mark.kafka

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "6", "PORTWATCH_BANNER_WAIT": "1"}
START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 120.0


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[str]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Pipeline:
    """Worker processes of one test, on topics of their own (a unique prefix)."""

    bootstrap: str
    root: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}.")
    workers: list[Worker] = field(default_factory=list)

    @property
    def topics(self) -> TopicSet:
        return topic_names(self.prefix)

    @property
    def store(self) -> str:
        return f"chdb://{self.root / 'store'}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**FAST, "PORTWATCH_KAFKA": self.bootstrap, "PORTWATCH_TOPIC_PREFIX": self.prefix,
                "PORTWATCH_STORE": self.store, "PORTWATCH_UDP": "none", **(extra or {})}

    def start(self, command: str, *args: str, ready: str,
              env: dict[str, str] | None = None) -> Worker:
        """Start ``portwatch <command>``; return once its stderr shows ``ready``."""
        name = f"{command}-{len(self.workers)}"
        log = self.root / f"{name}.log"
        with log.open("w") as err:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "portwatch", command, *args], cwd=REPO,
                env={**os.environ, **self.env(env)}, stdout=subprocess.DEVNULL,
                stderr=err, text=True, start_new_session=True)
        worker = Worker(name, proc, log)
        self.workers.append(worker)
        deadline = time.monotonic() + START_TIMEOUT
        while ready not in worker.text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start:\n{worker.text()[-3000:]}")
            time.sleep(0.1)
        return worker

    def process(self, *args: str, env: dict[str, str] | None = None) -> Worker:
        return self.start("process", "--commit-interval", "0.3", "--session-timeout", "6",
                          *args, ready="stream processors running", env=env)

    def discover(self, *args: str) -> Worker:
        return self.start("discover", "--session-timeout", "6", *args,
                          ready="discover worker running")

    def stop(self, worker: Worker, timeout: float = 40.0) -> None:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
            try:
                worker.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill(worker)
                raise AssertionError(
                    f"{worker.name} ignored SIGTERM:\n{worker.text()[-3000:]}") from None

    def kill(self, worker: Worker) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)

    def produce(self, *args: str, wait: float = DRAIN_TIMEOUT) -> dict[str, Any]:
        result = run_cli("produce", *args, "--wait", str(wait), env=self.env(),
                         timeout=wait + 60)
        assert result.code == 0, result.stderr + "\n" + self.logs()
        summary: dict[str, Any] = json.loads(result.stdout.splitlines()[0])
        return summary

    def lag(self, role: str) -> int:
        t = self.topics
        topics = {"discover": [t.shards.name], "stages": [t.open_ports.name],
                  "sink": [t.findings.name, t.host_scans.name]}[role]
        return group_lag(self.bootstrap, f"{self.prefix}portwatch-{role}", topics).lag

    def wait_drained(self, timeout: float = DRAIN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.lag(r) == 0 for r in ("discover", "stages", "sink")):
            if time.monotonic() > deadline:
                raise AssertionError(f"not drained in {timeout}s:\n{self.logs()}")
            time.sleep(0.3)

    def report(self, name: str, *args: str) -> list[dict[str, Any]]:
        return report(self.store, name, *args)

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.text()[-2000:]}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                self.kill(worker)
        with contextlib.suppress(Exception):
            with admin_client(self.bootstrap, timeout=10) as admin:
                admin.delete_topics([t.name for t in self.topics.all], timeout_ms=10_000)


def report(store: str, name: str, *args: str) -> list[dict[str, Any]]:
    result = run_cli("report", name, "--format", "json", *args, store=store)
    assert result.code == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


@contextlib.contextmanager
def pipeline_of(bootstrap: str, root: Path) -> Iterator[Pipeline]:
    pipe = Pipeline(bootstrap, root)
    try:
        yield pipe
    finally:
        pipe.close()  # every worker killed, even on failure


VOLATILE = ("seen", "scanned", "scan_id", "_at", "elapsed")


HTTP_DATE = re.compile(r"Date: [^\\]*\\r\\n")  # in escaped banners: Date: ...\r\n


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without what differs between two scans of the same host: times, scan ids,
    the Date header inside HTTP banners, why an unidentified port stayed so."""
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if not any(word in k for word in VOLATILE)}
        if row.get("method") == "unidentified":
            # which probes ran out of the time budget on a silent port depends on load
            row.pop("extra_info", None)
        if isinstance(row.get("banner"), str):
            row["banner"] = HTTP_DATE.sub(lambda _m: "Date: *", row["banner"])
        out.append(row)
    return out


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    handlers = {
        "ssh": loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"),
        "smtp": loopback.banner(b"220 mail.example.test ESMTP Postfix (Debian/GNU)\r\n"),
        "ftp": loopback.banner(b"220 (vsFTPd 3.0.3)\r\n"),
        "mysql": loopback.banner(mariadb_greeting(b"5.5.5-10.11.6-MariaDB-0+deb12u1")),
        "http": loopback.http_handler("nginx/1.22.1"),
        "junk": loopback.banner(b"\x1b[2J\x1b[31mHACKED\x07\x00\xff\xfe\r\n"),
        "silent": loopback.silent(),
    }
    with contextlib.ExitStack() as stack:
        yield Services({name: stack.enter_context(loopback.listen(h)).port
                        for name, h in handlers.items()})


@dataclass
class Scanned:
    embedded: str
    pipe: Pipeline
    first_list: list[dict[str, Any]]
    busy: CliResult
    scan_id: str
    web_list: dict[str, Any]  # /api/v1/list from the sink's own web server, while it ran
    sink_log: str


@pytest.fixture(scope="module")
def scanned(services: Services, kafka_bootstrap: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scanned]:
    """Given the listeners, when 127.0.0.1 is scanned embedded into one store and
    through Kafka into another (the report tried while the sink holds its store)."""
    root = tmp_path_factory.mktemp("distributed")
    embedded = f"chdb://{root / 'embedded'}"
    result = run_cli("scan", "127.0.0.1", "--org", "Example Corp", "--asset", "web-1",
                     "--ports", services.spec, "--quiet", store=embedded, env=FAST)
    assert result.code == 0, result.stderr
    with pipeline_of(kafka_bootstrap, root) as pipe:
        web_port = loopback.free_port()
        sink = pipe.process("--serve", f"127.0.0.1:{web_port}")
        discover = pipe.discover()
        produced = pipe.produce("127.0.0.1", "--org", "Example Corp", "--asset", "web-1",
                                "--ports", services.spec)
        busy = run_cli("report", "list", store=pipe.store)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{web_port}/api/v1/list?per_page=500", timeout=30
        ) as answer:
            web_list = json.loads(answer.read())
        # The sink releases a host's change events once its findings are in and it has
        # been quiet a few seconds (change_hold.py): wait for them on its web page.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/changes?since=1d",
                                        timeout=30) as page:
                if f"{len(services.ports)} event(s)" in page.read().decode():
                    break
            time.sleep(1)
        pipe.stop(discover)
        pipe.stop(sink)
        yield Scanned(embedded, pipe, pipe.report("list"), busy, produced["scan_id"],
                      web_list, sink.text())


# -- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["summary", "list", "products", "ciphers"])
def test_reports_equal_those_of_an_embedded_scan(scanned: Scanned, name: str) -> None:
    distributed = stable(scanned.pipe.report(name))
    embedded = stable(report(scanned.embedded, name))
    differences = [(i, k, d.get(k), e.get(k))
                   for i, (d, e) in enumerate(zip(distributed, embedded, strict=False))
                   for k in sorted(set(d) | set(e)) if d.get(k) != e.get(k)]
    assert differences == []
    assert len(distributed) == len(embedded)
    if name in ("summary", "list"):
        assert distributed, "the scan found nothing"


def test_every_listener_is_identified_through_kafka(services: Services,
                                                    scanned: Scanned) -> None:
    rows = {r["port"]: r for r in scanned.first_list if r["ip"] == "127.0.0.1"}
    assert set(rows) == set(services.ports.values())
    got = {name: (rows[p]["service"], rows[p]["product"], rows[p]["risk_color"])
           for name, p in services.ports.items()}
    assert got["ssh"] == ("ssh", "OpenSSH", "green")
    assert got["mysql"] == ("mysql", "MariaDB", "red")
    assert got["http"] == ("http", "nginx", "green")
    assert got["silent"] == ("", "", "yellow")


def test_a_report_on_a_store_held_by_the_serving_sink_answers_through_it(
        scanned: Scanned) -> None:
    # Given the sink holding the store with --serve / When a report ran meanwhile
    # Then it answered through the sink's JSON API and said so
    assert scanned.busy.code == 0, scanned.busy.stderr
    (line,) = scanned.busy.stderr.splitlines()
    assert re.fullmatch(r"portwatch: the store at .+ is held by `portwatch process --serve` "
                        r"\(pid \d+\); answered through its JSON API at "
                        r"http://127\.0\.0\.1:\d+", line), line


def test_the_sink_serves_its_store_on_the_web_while_it_runs(scanned: Scanned) -> None:
    # Given the sink started with --serve, Then while it held the store its own web
    # server answered with the same rows the report gives after it stopped
    rows = scanned.web_list["rows"]
    key = ("ip", "port", "proto", "service", "product", "risk_color")
    assert sorted(tuple(r[k] for k in key) for r in rows) == sorted(
        tuple(r[k] for k in key) for r in scanned.first_list)
    assert scanned.web_list["total"] == len(scanned.first_list) > 0
    assert "serving the reports on http://127.0.0.1:" in scanned.sink_log
    # And the report run meanwhile was answered there
    assert "held by `portwatch process --serve`" in scanned.busy.stderr


def test_change_events_equal_those_of_an_embedded_scan(scanned: Scanned,
                                                       services: Services) -> None:
    # Both transports ran the same rule on the same first scan: every port opened
    def events(store: str) -> list[tuple[Any, ...]]:
        rows = report(store, "changes")
        return sorted((r["kind"], r["severity"], r["port"], r["before"], r["after"],
                       r["organization"], r["asset"]) for r in rows)

    embedded, distributed = events(scanned.embedded), events(scanned.pipe.store)
    assert distributed == embedded
    assert sorted(e[2] for e in distributed) == sorted(services.ports.values())
    assert {e[0] for e in distributed} == {"opened"}


def test_host_scans_reach_the_store(scanned: Scanned, services: Services) -> None:
    (row,) = [r for r in scanned.pipe.report("summary") if r["ip"] == "127.0.0.1"]
    assert row["scan_status"] == "completed"
    assert row["open_ports"] == len(services.ports)
    assert (row["organization"], row["asset"]) == ("Example Corp", "web-1")


def test_a_retried_scan_neither_duplicates_nor_moves_first_seen(
        scanned: Scanned, services: Services) -> None:
    # Given the scan stored once; when the very same scan (same id and seed) is
    # produced again, so every shard is discovered again with new timestamps
    pipe = scanned.pipe
    time.sleep(1.1)  # timestamps are in milliseconds: make the retry visibly later
    sink = pipe.process()
    discover = pipe.discover()
    pipe.produce("127.0.0.1", "--org", "Example Corp", "--asset", "web-1",
                 "--ports", services.spec, "--scan-id", scanned.scan_id)
    pipe.stop(discover)
    pipe.stop(sink)
    # Then one row per port still, first seen unchanged, last seen later
    before = {r["port"]: r for r in scanned.first_list}
    after = {r["port"]: r for r in pipe.report("list")}
    assert set(after) == set(before) == set(services.ports.values())
    for p in before:
        assert after[p]["first_seen"] == before[p]["first_seen"]
        assert after[p]["last_seen"] > before[p]["last_seen"]
    (row,) = pipe.report("summary")
    assert row["open_ports"] == len(services.ports)


def test_produce_resumes_from_its_checkpoint(kafka_bootstrap: str, tmp_path: Path) -> None:
    from kafka.structs import TopicPartition

    from portwatch.assembly import Assembly
    from portwatch.settings import Settings
    from producers.kafka_io import make_consumer
    from schemas.records import Proto, Shard
    from tests.kafka_fixtures import consume

    with pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        # Given a scan of 5 shards whose first 3 were acknowledged before a crash (the
        # checkpoint of that very work, as `produce` or `scan` writes it)
        checkpoint = tmp_path / "ck.json"
        assembly = Assembly(Settings(ports="22", udp="none", shard_hosts=1))
        plan, start = assembly.scan_plan(assembly.scan_input(["127.0.0.1-5"]),
                                         scan_id="resume-1", seed=7)
        start.advanced(Proto.TCP, 3).save(checkpoint)
        # When produce runs again with that checkpoint
        result = run_cli("produce", "127.0.0.1-5", "--ports", "22", "--hosts-per-shard", "1",
                         "--checkpoint", str(checkpoint), env=pipe.env())
        assert result.code == 0, result.stderr
        summary = json.loads(result.stdout)
        # Then it resumes that scan and publishes only the last 2 shards
        assert (summary["scan_id"], summary["seed"], summary["shards"],
                summary["published"], summary["resumed_at"]) == ("resume-1", 7, 5, 2, 3)
        # and, every shard published, removes the checkpoint, as `scan` does (kept, every
        # later run with it published nothing, exit 0: a review)
        assert not checkpoint.exists()
        consumer = make_consumer(kafka_bootstrap, pipe.topics.shards.name, "test-resume")
        try:
            shards = [Shard.from_json(r.value) for r in consume(consumer, 2, timeout=20)]
            assert sorted(s.index for s in shards) == [3, 4]
            assert consumer.assignment() <= {TopicPartition(pipe.topics.shards.name, p)
                                             for p in range(8)}
        finally:
            consumer.close()
        # And a checkpoint of another scan, or of other targets, is refused with one line
        start.advanced(Proto.TCP, 3).save(checkpoint)
        refused = run_cli("produce", "127.0.0.1-5", "--ports", "22", "--hosts-per-shard", "1",
                          "--scan-id", "other", "--checkpoint", str(checkpoint), env=pipe.env())
        assert refused.code == 2
        assert refused.stderr.strip() == (f"portwatch: error: checkpoint {checkpoint} is of "
                                          "scan resume-1, not --scan-id other")
        refused = run_cli("produce", "127.0.0.1-4", "--ports", "22", "--hosts-per-shard", "1",
                          "--checkpoint", str(checkpoint), env=pipe.env())
        assert refused.code == 2
        assert "was written for other work (scan resume-1" in refused.stderr


def test_udp_ports_travel_the_pipeline_as_udp_shards(kafka_bootstrap: str,
                                                     tmp_path: Path) -> None:
    # Given a UDP service on loopback that answers any datagram
    with loopback.udp_responder() as udp_port, pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        sink = pipe.process()
        faust_dirs = [Path(tempfile.gettempdir()) / "portwatch-faust" / f"{pipe.prefix}{app}"
                      for app in ("portwatch-stages", "portwatch-sink")]
        discover = pipe.discover()
        # When produce publishes one TCP port and that UDP port
        summary = pipe.produce("127.0.0.1", "--ports", "1", "--udp", str(udp_port))
        assert all(d.is_dir() for d in faust_dirs)  # Faust's skeleton, while it runs
        pipe.stop(discover)
        pipe.stop(sink)
        # (and the stopped worker left no empty data directories behind)
        assert [d for d in faust_dirs if d.exists()] == []
        rows = json.loads(run_cli("report", "list", "--format", "json",
                                  store=pipe.store).stdout)
    # Then one TCP shard and one UDP shard went through, and the UDP port is stored open
    assert summary["shards"] == 2
    udp = [r for r in rows if r["proto"] == "udp"]
    assert [(r["port"], r["state"]) for r in udp] == [(udp_port, "open")]
    assert str(udp[0]["banner"]).startswith("pong:")


def test_a_sink_whose_web_port_is_taken_says_so_in_one_line(kafka_bootstrap: str,
                                                            tmp_path: Path) -> None:
    # Given the port --serve asks for is already taken
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # When the stream processors start with it
        result = run_cli("process", "--serve", f"127.0.0.1:{port}",
                         store=f"chdb://{tmp_path / 'store'}",
                         env={"PORTWATCH_KAFKA": kafka_bootstrap,
                              "PORTWATCH_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}."})
    # Then it stops at once with one line that says why, exit 1, no traceback
    assert result.code == 1
    assert result.stderr.splitlines() == [
        f"portwatch: error: --serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_produce_waits_on_the_discover_workers_own_group(kafka_bootstrap: str,
                                                        tmp_path: Path) -> None:
    # Given discovery workers in a consumer group of their own (discover --group)
    with loopback.udp_responder() as udp_port, pipeline_of(kafka_bootstrap, tmp_path) as pipe:
        sink = pipe.process()
        discover = pipe.discover("--group", f"{pipe.prefix}night-shift")
        # When produce waits for the pipeline, told that group / Then it sees the work
        # drain and exits 0 (it watched <prefix>portwatch-discover, which nothing reads,
        # and failed "not drained": a review, 2026-12-06)
        summary = pipe.produce("127.0.0.1", "--ports", "1", "--udp", str(udp_port),
                               "--discover-group", f"{pipe.prefix}night-shift")
        pipe.stop(discover)
        pipe.stop(sink)
        rows = json.loads(run_cli("report", "list", "--format", "json",
                                  store=pipe.store).stdout)
    assert summary["shards"] == 2
    assert [(r["port"], r["proto"]) for r in rows] == [(udp_port, "udp")]


def test_alerts_turned_on_begin_with_the_workers_first_start(kafka_bootstrap: str,
                                                             tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from producers.kafka_io import ensure_topics, make_producer, publish
    from schemas.records import ChangeEvent, ChangeKind, Severity, Target
    from tests.alert_receivers import webhook_receiver

    secret = "pipeline-secret-0123"

    def opened(port: int) -> ChangeEvent:
        return ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.HIGH,
                           target=Target(ip="127.0.0.1", target="127.0.0.1"),
                           scan_id=f"scan-{port}", port=port, risk_color="red",
                           service="redis", observed_at=datetime.now(UTC))

    def send(events: list[ChangeEvent]) -> None:
        producer = make_producer(kafka_bootstrap)
        try:
            publish(producer, pipe.topics.changes.name, events)
        finally:
            producer.close()

    with pipeline_of(kafka_bootstrap, tmp_path) as pipe, \
            webhook_receiver(secret.encode()) as receiver:
        ensure_topics(kafka_bootstrap, pipe.topics.all, timeout=30.0)
        rules = tmp_path / "alerts.yaml"
        rules.write_text(f'channels:\n  hook: {{webhook: "{receiver.url}", secret_env: S}}\n'
                         "rules:\n  - name: red\n    when: {colors: [red]}\n"
                         "    notify: [hook]\n    digest: 0\n")
        # Given a pipeline whose changes topic holds two changes made without alerts
        send([opened(6301), opened(6302)])
        # When its sink starts with alerts, and a change comes after
        worker = pipe.process("--role", "sink", "--alerts", str(rules), env={"S": secret})
        now = opened(6401)
        send([now])
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not receiver.events() and time.monotonic() < deadline:
            time.sleep(0.3)
        time.sleep(3)  # a few delivery ticks more: the older two must not follow
        pipe.stop(worker)
        # Then the worker said where its alerts start, and only the later change went out
        assert (f"alerts: {pipe.prefix}portwatch-alerts starts at the end of "
                f"{pipe.topics.changes.name}: the 2 change record(s) already there are not "
                "alerted (`portwatch report changes` lists them); from now on every change "
                "is") in worker.text(), worker.text()[-2000:]
        assert [e["event_id"] for e in receiver.events()] == [now.event_id]
        # And a restart goes on from where the group stood: nothing is said or skipped
        again = pipe.process("--role", "sink", "--alerts", str(rules), env={"S": secret})
        later = opened(6402)
        send([later])
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while len(receiver.events()) < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        pipe.stop(again)
        assert "starts at the end of" not in again.text()
        assert [e["event_id"] for e in receiver.events()] == [now.event_id, later.event_id]
