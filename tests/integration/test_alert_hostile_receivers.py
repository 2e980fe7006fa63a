"""Alert delivery against hostile and broken receivers on loopback (the alert-delivery
audit of 2026-12-04), through the real store (chdb) and real sockets.

A receiver that dribbles its answer a byte at a time cannot hold a send past its
timeout, nor the other channels behind it; a redirect is a failure, never a "sent" whose
body went nowhere; a URL's token never reaches an error or the delivery log; a broken
channel with a deep backlog never starves another; rows of a route the file no longer has
never hold a one-shot run for its whole wait. The bounds on elapsed time below are hang
checks (each hostile receiver would hold a send for hours), not speed targets.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts import AlertDispatcher, load_alerts
from portwatch.alerts import dispatcher as dispatcher_module
from portwatch.alerts.channels import send
from portwatch.alerts.log import delivery_log
from tests import loopback
from tests.alert_receivers import webhook_receiver
from tests.integration.test_alert_delivery import SECRET, event, outbox_states
from tests.loopback import free_port, request_head

HANG_BOUND = 8.0  # seconds; each hostile receiver below would hold a send 30 s or more


def _read_request(conn: socket.socket) -> None:
    """The request's head and (bounded) body, so the client is never reset mid-write."""
    data = request_head(conn, 65536)
    if data is None:
        return
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = min(int(value.strip()), 1_000_000)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def dribble(prefix: bytes) -> Callable[[socket.socket], None]:
    """Answers ``prefix``, then one byte every 0.2 s for 30 s (a client that waits for a
    whole answer would wait hours: the answer announces more), until the client goes."""

    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(prefix)
        for _ in range(150):
            conn.sendall(b"x")
            time.sleep(0.2)

    return handle


DRIBBLED_STATUS = b"HTTP/1.1 2"  # the status line never ends: no answer at all
DRIBBLED_HEAD = b"HTTP/1.1 200 OK\r\nX-Slow: "  # a 200, then headers that never end
DRIBBLED_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"


def redirect_to(location: str) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())

    return handle


def config_of(tmp_path: Path, channels: dict[str, str], rules: str, *,
              delivery: str = "") -> Any:
    lines = "\n".join(f'  {name}: {{webhook: "{url}", secret_env: HOOK_SECRET, timeout: 1s}}'
                      for name, url in channels.items())
    text = f"channels:\n{lines}\nrules:\n{rules}"
    if delivery:
        text += f"delivery: {delivery}\n"
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    return load_alerts(path, env={"HOOK_SECRET": SECRET.decode()})


ALL_TO = "  - name: risky\n    when: {{colors: [red]}}\n    notify: [{}]\n    digest: 0\n"


@contextmanager
def hostile(handler: Callable[[socket.socket], None]) -> Iterator[str]:
    """The URL of a hostile receiver on 127.0.0.1, with a token in its path and query."""
    with loopback.listen(handler) as listener:
        yield f"http://127.0.0.1:{listener.port}/hooks/PATHTOKEN?token=QUERYTOKEN"


@pytest.mark.parametrize(("prefix", "scheme", "answered"), [
    (DRIBBLED_STATUS, "http", False), (DRIBBLED_HEAD, "http", True),
    (DRIBBLED_BODY, "http", True),
    (b"\x16\x03\x03", "https", False)],  # a ServerHello record, a byte every 0.2 s
    ids=["status-line", "headers", "body", "tls-handshake"])
def test_a_dribbling_receiver_cannot_hold_a_send(tmp_path: Path, prefix: bytes,
                                                 scheme: str, answered: bool) -> None:
    with hostile(dribble(prefix)) as url:
        url = url.replace("http://", f"{scheme}://", 1)
        config = config_of(tmp_path, {"slow": url}, ALL_TO.format("slow"))
        # When a message goes to a receiver that answers a byte every 0.2 s, for hours
        begin = time.monotonic()
        result = send(config.channels["slow"], "risky", [event()], timeout=10)
        elapsed = time.monotonic() - begin
    # Then the send ends at the channel's 1 s: as sent when the receiver's 200 had come
    # (the rest of an answer is ignored), else failed, without the URL's tokens
    assert elapsed < HANG_BOUND
    port = url.split(":")[2].split("/")[0]
    assert (result.is_ok, result.error) == ((True, "") if answered else (
        False, f"no whole answer from {scheme}://127.0.0.1:{port}/… within 1s"))


def test_a_redirect_is_a_failure_and_is_not_followed(tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver, hostile(redirect_to(receiver.url)) as url:
        config = config_of(tmp_path, {"moved": url}, ALL_TO.format("moved"))
        # When the receiver answers 302 to the POST
        result = send(config.channels["moved"], "risky", [event()], timeout=5)
        # Then the message is not sent (urllib would GET the new place without the body
        # and call it delivered), and nothing reached the place it pointed to
        port = url.split(":")[2].split("/")[0]
        assert (result.is_ok, result.error) == (
            False, f"HTTP 302 (a redirect: not followed) from http://127.0.0.1:{port}/…")
        assert (receiver.accepted, receiver.rejected) == ([], [])


def test_a_stuck_channel_does_not_hold_the_others(store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver, hostile(dribble(DRIBBLED_STATUS)) as url:
        # Given a rule sending to a dribbling channel and to a working one
        config = config_of(tmp_path, {"slow": url, "soc": receiver.url},
                           ALL_TO.format("slow, soc"))
        dispatcher = AlertDispatcher(store, config)
        assert dispatcher.submit([event(6379), event(5432, service="postgresql")]) == 4
        # When a one-shot run delivers with no wait
        begin = time.monotonic()
        report = dispatcher.drain(0)
        elapsed = time.monotonic() - begin
        # Then the working channel got both events, the stuck one failed once, in bounds
        assert elapsed < HANG_BOUND
        assert len(receiver.accepted) == 1
        assert len(receiver.accepted[0].payload["events"]) == 2
        assert (report.sent, report.retrying, report.messages) == (2, 2, 2)
        states = outbox_states(store)
        assert sorted(states.values()) == [("pending", 1), ("pending", 1),
                                           ("sent", 1), ("sent", 1)]


def test_a_urls_token_never_reaches_an_error_or_the_log(store: Any, tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: connection refused
    url = f"http://127.0.0.1:{dead}/hooks/PATHTOKEN?token=QUERYTOKEN"
    config = config_of(tmp_path, {"dead": url}, ALL_TO.format("dead"))
    dispatcher = AlertDispatcher(store, config)
    dispatcher.submit([event()])
    report = dispatcher.drain(0)
    logged = [row.last_error for row in delivery_log(store, limit=10)]
    assert report.retrying == 1 and len(logged) == 1
    for text in [*report.errors, *logged]:
        assert f"http://127.0.0.1:{dead}/…" in text
        assert "TOKEN" not in text


@pytest.mark.parametrize("dead_routes", [1, 6])
def test_a_broken_channel_with_a_backlog_does_not_starve_another(
        store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dead_routes: int) -> None:
    # Given a pass that reads at most 50 rows, 20 of any one route
    monkeypatch.setattr(dispatcher_module, "MAX_ROWS_PER_PASS", 50)
    monkeypatch.setattr(dispatcher_module, "MAX_ROWS_PER_PAIR", 20)
    dead = f"http://127.0.0.1:{free_port()}/hook"
    with webhook_receiver(SECRET) as receiver:
        # (one dead channel behind one rule, or behind six: six routes of old rows)
        rules = "".join(f"  - name: bulk{n}\n    when: {{colors: [green]}}\n"
                        "    notify: [dead]\n    digest: 0\n" for n in range(dead_routes))
        rules += "  - name: urgent\n    when: {colors: [red]}\n    notify: [soc]\n" \
                 "    digest: 0\n"
        config = config_of(tmp_path, {"dead": dead, "soc": receiver.url}, rules)
        clock = [time.time()]
        dispatcher = AlertDispatcher(store, config, clock=lambda: clock[0])
        # And 100 green events queued for a dead channel before one red event
        assert dispatcher.submit([event(10_000 + n, color="green", service="http")
                                  for n in range(100)]) == 100 * dead_routes
        clock[0] += 1
        assert dispatcher.submit([event(6379)]) == 1
        # When one delivery pass runs
        report = dispatcher.deliver_due()
        # Then the red event reached its channel, and the dead one was tried once, with
        # its route's share of the pass (20 rows; 50 over 7 routes: 7)
        assert [e["port"] for d in receiver.accepted for e in d.payload["events"]] == [6379]
        share = 20 if dead_routes == 1 else 50 // (dead_routes + 1)
        assert (report.sent, report.retrying, report.messages) == (1, share, 2)


def test_rows_of_a_route_no_longer_in_the_file_never_hold_a_run(
        store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        # Given deliveries queued for a channel the alerts file has since dropped
        old = config_of(tmp_path, {"gone": f"http://127.0.0.1:{free_port()}/hook"},
                        ALL_TO.format("gone"))
        AlertDispatcher(store, old).submit([event(6379), event(5432)])
        new = config_of(tmp_path, {"soc": receiver.url}, ALL_TO.format("soc"))
        # When a one-shot run with a 30 s wait delivers under the new file
        begin = time.monotonic()
        report = AlertDispatcher(store, new).drain(30)
        elapsed = time.monotonic() - begin
    # Then it returns at once, counting them as kept but never sent (not "next run")
    assert elapsed < HANG_BOUND
    assert (report.sent, report.retrying, report.orphaned) == (0, 0, 2)
    assert receiver.accepted == []


def answer(status: str, *headers: str) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        extra = "".join(f"{h}\r\n" for h in headers)
        conn.sendall(f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())

    return handle


@pytest.mark.parametrize(("status", "header", "wait"), [
    ("429 Too Many Requests", "Retry-After: 120", 120),  # the receiver's own wait
    ("503 Service Unavailable", "Retry-After: 999999999", 3600),  # kept to retry_max
    ("429 Too Many Requests", "Retry-After: soon", 1),  # unreadable: the backoff
    ("500 Internal Server Error", "Retry-After: 120", 1),  # only for 429 and 503
])
def test_retry_after_sets_the_next_attempt_within_retry_max(
        store: Any, tmp_path: Path, status: str, header: str, wait: int) -> None:
    with hostile(answer(status, header)) as url:
        config = config_of(tmp_path, {"busy": url}, ALL_TO.format("busy"),
                           delivery="{retry_base: 1s, retry_max: 1h}")
        clock = [time.time()]
        dispatcher = AlertDispatcher(store, config, clock=lambda: clock[0])
        dispatcher.submit([event()])
        report = dispatcher.deliver_due()
    assert report.retrying == 1
    [row] = delivery_log(store, limit=10)
    assert row.next_attempt_at.timestamp() == pytest.approx(clock[0] + wait, abs=0.01)
    code = status.split()[0]
    assert row.last_error.startswith(f"HTTP {code} from http://127.0.0.1:")


def counted(handler: Callable[[socket.socket], None],
            hits: list[int]) -> Callable[[socket.socket], None]:
    """``handler``, counting the connections it answers in ``hits``."""
    def handle(conn: socket.socket) -> None:
        hits.append(1)
        handler(conn)

    return handle


def busy_channel(store: Any, tmp_path: Path, url: str, delivery: str
                 ) -> tuple[AlertDispatcher, list[float]]:
    """A dispatcher sending every event to one channel "busy" at ``url``, on a clock the
    test moves (``clock[0]``)."""
    config = config_of(tmp_path, {"busy": url}, ALL_TO.format("busy"), delivery=delivery)
    clock = [time.time()]
    return AlertDispatcher(store, config, clock=lambda: clock[0]), clock


def test_a_channel_that_asked_for_an_hour_gets_nothing_for_an_hour_across_passes(
        store: Any, tmp_path: Path) -> None:
    hits: list[int] = []
    with hostile(counted(answer("429 Too Many Requests", "Retry-After: 3600"), hits)) as url:
        dispatcher, clock = busy_channel(store, tmp_path, url, "{retry_base: 1s, retry_max: 2h}")
        # Given a receiver that answered the first message "429, Retry-After: 3600"
        dispatcher.submit([event(6379)])
        dispatcher.deliver_due()
        assert len(hits) == 1
        # When new events come and the watcher's passes tick every 5 s for a minute
        for tick in range(12):
            dispatcher.submit([event(7000 + tick)])
            clock[0] += 5
            dispatcher.deliver_due()
        # Then the receiver heard nothing more before its hour
        assert len(hits) == 1
        # And after it, what waited goes out
        clock[0] += 3600
        report = dispatcher.deliver_due()
    assert len(hits) == 2 and report.messages == 1


def test_a_channel_that_failed_without_retry_after_gets_fresh_alerts_within_minutes(
        store: Any, tmp_path: Path) -> None:
    from portwatch.alerts.dispatcher import CHANNEL_HOLD_SECONDS

    hits: list[int] = []
    with hostile(counted(answer("500 Internal Server Error"), hits)) as url:
        dispatcher, clock = busy_channel(store, tmp_path, url, "{retry_base: 1h, retry_max: 2h}")
        # Given a channel whose receiver failed (its row backs off an hour)
        dispatcher.submit([event(6379)])
        dispatcher.deliver_due()
        # When a fresh event comes a tick later: held (no message per tick to it)
        dispatcher.submit([event(7001)])
        clock[0] += 5
        dispatcher.deliver_due()
        assert len(hits) == 1
        # And after the channel hold (not the hour of the row's backoff), it goes
        clock[0] += CHANNEL_HOLD_SECONDS
        report = dispatcher.deliver_due()
    assert len(hits) == 2 and report.messages == 1


def test_a_slow_apprise_receiver_gets_no_pile_of_copies(tmp_path: Path) -> None:
    from portwatch.alerts.channels import send

    with hostile(dribble(DRIBBLED_BODY)) as url:
        port = url.split(":")[2].split("/")[0]
        path = tmp_path / "alerts.yaml"
        path.write_text(f"channels:\n  slow: {{apprise: \"json://127.0.0.1:{port}/hook\", "
                        "timeout: 1s}\nrules:\n  - name: r\n    notify: [slow]\n")
        channel = load_alerts(path, env={}).channels["slow"]
        # When a send outlives its timeout (apprise's own socket timeouts are longer)
        begin = time.monotonic()
        first = send(channel, "r", [event()], timeout=10)
        again = send(channel, "r", [event()], timeout=10)
        elapsed = time.monotonic() - begin
    # Then it is a failure within the channel's timeout, and while it still runs no
    # other send to that channel starts (a late acceptance would make one copy each)
    assert elapsed < HANG_BOUND
    assert (first.is_ok, first.error) == (
        False, f"{channel.display}: no whole answer within 1s")
    assert (again.is_ok, again.error) == (
        False, f"{channel.display}: an earlier send to it is still running (a slow "
               "receiver): not sent again meanwhile")


EXIT_AFTER_ABANDONED_SEND = """
import sys
from portwatch.alerts.channels import send
from portwatch.alerts.config import AppriseChannel
from tests.integration.test_alert_delivery import event
channel = AppriseChannel("slow", sys.argv[1], "json://127.0.0.1/…", 1.0)
print(send(channel, "r", [event()], timeout=10).is_ok, flush=True)
"""


def test_an_abandoned_apprise_send_does_not_hold_the_exit() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    with hostile(dribble(DRIBBLED_BODY)) as url:
        port = url.split(":")[2].split("/")[0]
        # When a process gives up on a dribbling apprise receiver and ends
        begin = time.monotonic()
        done = subprocess.run([sys.executable, "-c", EXIT_AFTER_ABANDONED_SEND,
                               f"json://127.0.0.1:{port}/hook"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - begin
    # Then it exits at once (apprise's pool threads are joined at exit: not used)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
    assert elapsed < HANG_BOUND


def test_an_apprise_failure_reason_is_apprises_message_alone() -> None:
    from portwatch.alerts.config import AppriseChannel

    # Given an apprise channel whose receiver answers 500
    with hostile(answer("500 Internal Server Error")) as url:
        port = url.split(":")[2].split("/")[0]
        channel = AppriseChannel("broken", f"json://127.0.0.1:{port}/x",
                                 f"json://127.0.0.1:{port}/…", 5.0)
        result = send(channel, "risky", [event()], timeout=5)
    # Then the reason is apprise's words after the channel, without its log's own time
    # and level (its default capture format put "2026-12-05 21:35:22,931 - WARNING - ")
    assert not result.is_ok
    reason = result.error.split(": ", 1)[1]
    assert not reason[:4].isdigit() and "WARNING" not in reason, result.error
    assert "500" in reason, result.error


def late(seconds: float) -> Callable[[socket.socket], None]:
    """Answers 200 ``seconds`` after the request: a slow receiver, not a hostile one."""
    def handle(conn: socket.socket) -> None:
        _read_request(conn)
        time.sleep(seconds)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    return handle


def apprise_channel(tmp_path: Path, url: str, timeout: str) -> Any:
    """An apprise channel as the alerts file loads it (its URL's pieces kept secret)."""
    path = tmp_path / "alerts.yaml"
    path.write_text(f"channels:\n  ch: {{apprise: \"{url}\", timeout: {timeout}}}\n"
                    "rules:\n  - name: r\n    notify: [ch]\n")
    return load_alerts(path, env={}).channels["ch"]


def test_an_apprise_channels_timeout_is_its_sockets_too(tmp_path: Path) -> None:
    # Given a receiver that answers after 5 s, and an apprise channel that waits 8 s
    with hostile(late(5.0)) as url:
        port = url.split(":")[2].split("/")[0]
        channel = apprise_channel(tmp_path, f"json://127.0.0.1:{port}/hook", "8s")
        result = send(channel, "r", [event()], timeout=10)
    # Then the message is sent: apprise's own 4 s read timeout gave up on it, and each
    # retry sent the receiver another copy (a review)
    assert (result.is_ok, result.error) == (True, "")


@pytest.mark.parametrize("query", ["RTO=2", "format=text;rto=2"], ids=["upper", "semicolon"])
def test_an_apprise_urls_own_read_timeout_is_kept(tmp_path: Path, query: str) -> None:
    # Given the same slow receiver, and a URL that asks apprise for 2 s itself, spelled
    # as apprise reads it (keys in any case, ';' between them; both were overridden by the
    # channel's 8 s: reviews)
    with hostile(late(5.0)) as url:
        port = url.split(":")[2].split("/")[0]
        channel = apprise_channel(tmp_path, f"json://127.0.0.1:{port}/hook?{query}", "8s")
        result = send(channel, "r", [event()], timeout=10)
    # Then apprise gives up at its own 2 s: a failure, before the receiver answers
    assert not result.is_ok and "within" not in result.error, result.error


def test_an_ntfy_topic_never_reaches_an_error(tmp_path: Path) -> None:
    # Given an ntfy channel (its topic is its password) whose server answers 500
    with hostile(answer("500 Internal Server Error")) as url:
        port = url.split(":")[2].split("/")[0]
        channel = apprise_channel(tmp_path, f"ntfy://127.0.0.1:{port}/failsecrettopic", "5s")
        result = send(channel, "r", [event()], timeout=5)
    # Then apprise's reason is kept, without the topic it quotes (it read "Failed to
    # send ntfy notification to topic 'topicSECRET7'": a review)
    assert not result.is_ok
    assert "failsecrettopic" not in result.error and "ntfy" in result.error, result.error
    assert result.error.startswith(f"ntfy://127.0.0.1:{port}/…: "), result.error
    # and apprise's ntfy.sh form, whose host is the topic (any spelling), shows none of
    # it; a receiver's own host name stays in view
    cloud = tmp_path / "cloud.yaml"
    cloud.write_text('channels:\n  phone: {apprise: "ntfy://cloudsecrettopic"}\n'
                     '  relay: {apprise: "json://alert-relay:8080/hooks"}\n')
    channels = load_alerts(cloud, env={}, need_rules=False).channels
    assert (channels["phone"].display, channels["relay"].display) == (
        "ntfys://…/…", "json://alert-relay:8080/…")
