"""Alert delivery through the real store (chdb) to real receivers on loopback.

Given change events handed to the dispatcher (change detection is another issue's work),
these tests check what a team relies on: the signed webhook verifies and a replay is
refused, e-mail arrives through apprise's mailto://, each (rule, channel, event) is
delivered once across restarts, replays and several workers, a receiver that is down gets
everything once it is back, digests group a rule's events, accepted risks stay quiet.
Time is an injected clock: nothing sleeps through a backoff.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from portwatch.alerts import AlertDispatcher, load_alerts
from portwatch.alerts import accepted as acc
from portwatch.alerts.channels import delivery_id, verify
from portwatch.alerts.log import delivery_log
from schemas.records import (
    CdnVerdict,
    ChangeEvent,
    ChangeKind,
    Finding,
    OpenPort,
    Proto,
    RiskColor,
    ServiceInfo,
    Severity,
    Target,
    TlsResult,
)
from tests.alert_receivers import WebhookReceiver, smtp_receiver, webhook_receiver
from tests.servers import free_port

SECRET = b"test-secret-0123456789"
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def event(port: int = 6379, kind: ChangeKind = ChangeKind.OPENED, *, ip: str = "127.0.0.1",
          org: str = "Example Corp", color: str = "red", service: str = "redis",
          severity: Severity = Severity.HIGH, scan_id: str = "scan-2") -> ChangeEvent:
    return ChangeEvent(kind=kind, severity=severity,
                       target=Target(ip=ip, target=ip, organization=org, asset="cache"),
                       scan_id=scan_id, previous_scan_id="scan-1", port=port,
                       after=f"{service} open", risk_color=color, service=service,
                       observed_at=datetime.fromtimestamp(T0, UTC))


def write_alerts(tmp_path: Path, channels: str, *, digest: str = "0", when: str = "",
                 delivery: str = "") -> Path:
    when_line = when or "{kinds: [opened, reopened, risk_raised], colors: [red], " \
                        "organizations: [example corp]}"
    text = f"""channels:
{channels}
rules:
  - name: risky-opened
    when: {when_line}
    notify: [{', '.join(line.split(':')[0].strip() for line in channels.splitlines())}]
    digest: {digest}
"""
    if delivery:
        text += f"delivery: {delivery}\n"
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def receiver_down() -> Iterator[WebhookReceiver]:
    """A webhook receiver that is down (its port refuses connections) until started."""
    with webhook_receiver(SECRET) as receiver:
        receiver.stop()
        yield receiver


def hook_config(tmp_path: Path, url: str, **kw: Any) -> Any:
    path = write_alerts(tmp_path, f'  soc-hook: {{webhook: "{url}", secret_env: HOOK_SECRET}}',
                        **kw)
    return load_alerts(path, env={"HOOK_SECRET": SECRET.decode()})


def outbox_states(store: Any) -> dict[tuple[str, str, str], tuple[str, int]]:
    return {(r.rule, r.channel, r.event_id): (r.state, r.attempts)
            for r in delivery_log(store, limit=1000)}


# -- the signed webhook -------------------------------------------------------------------


def test_webhook_is_signed_and_a_replay_is_refused(store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        # Given two risky ports opened and one green one (which the rule does not select)
        config = hook_config(tmp_path, receiver.url)
        dispatcher = AlertDispatcher(store, config, clock=Clock())
        events = [event(6379), event(5432, service="postgresql"),
                  event(443, color="green", service="https")]
        # When they are submitted and delivered
        assert dispatcher.submit(events) == 2
        report = dispatcher.deliver_due()
        # Then one signed message carries exactly the two red events
        assert (report.sent, report.messages, report.errors) == (2, 1, [])
        assert len(receiver.accepted) == 1 and receiver.rejected == []
        got = receiver.accepted[0]
        assert sorted(e["event_id"] for e in got.payload["events"]) == \
            sorted([events[0].event_id, events[1].event_id])
        assert {e["port"] for e in got.payload["events"]} == {6379, 5432}
        assert got.payload["rule"] == "risky-opened"
        assert verify(SECRET, got.headers["x-portwatch-timestamp"],
                      got.headers["x-portwatch-signature"], got.body)
        assert not verify(b"another secret", got.headers["x-portwatch-timestamp"],
                          got.headers["x-portwatch-signature"], got.body)
        # When the captured request is sent again, byte for byte (a replay)
        replay = urllib.request.Request(receiver.url, data=got.body, method="POST", headers={
            k: v for k, v in got.headers.items() if k.startswith("x-portwatch")})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(replay, timeout=5)
        # Then the receiver refuses it and still holds one delivery
        refused.value.close()
        assert refused.value.code == 409
        assert len(receiver.accepted) == 1
        # And a tampered body fails the signature check
        tampered = urllib.request.Request(receiver.url, data=got.body.replace(b"6379", b"6380"),
                                          method="POST", headers={
                                              k: v for k, v in got.headers.items()
                                              if k.startswith("x-portwatch")})
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(tampered, timeout=5)
        bad.value.close()
        assert bad.value.code == 401


def test_stale_signature_fails_verification() -> None:
    from portwatch.alerts.channels import sign

    body = b'{"events":[]}'
    signature = sign(SECRET, 1_000_000, body)
    assert verify(SECRET, "1000000", signature, body, now=1_000_100)
    assert not verify(SECRET, "1000000", signature, body, now=1_000_000 + 301)
    assert not verify(SECRET, "10x", signature, body, now=1_000_000)


# -- once per (rule, channel, event) ------------------------------------------------------


def test_submission_is_idempotent_across_restarts_and_replays(store: Any, tmp_path: Path,
                                                              ) -> None:
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url)
        clock = Clock()
        events = [event(6379), event(27017, service="mongodb")]
        # Given the events submitted twice (a Kafka replay) by one dispatcher ...
        first = AlertDispatcher(store, config, clock=clock)
        assert first.submit(events) == 2
        assert first.submit(events) == 0
        # ... and again by a restarted one, then delivered
        restarted = AlertDispatcher(store, config, clock=clock)
        assert restarted.submit(events) == 0
        assert restarted.deliver_due().sent == 2
        # When the same events are replayed after delivery and another pass runs
        clock.advance(3600)
        assert AlertDispatcher(store, config, clock=clock).submit(events) == 0
        again = AlertDispatcher(store, config, clock=clock).deliver_due()
        # Then nothing is sent twice
        assert (again.sent, again.messages) == (0, 0)
        assert len(receiver.events()) == 2
        assert set(outbox_states(store).values()) == {("sent", 1)}


def test_several_workers_deliver_each_event_once(store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url)
        clock = Clock()
        events = [event(port) for port in range(7000, 7030)]
        # Given 30 events queued and four workers with their own dispatcher (own claims)
        workers = [AlertDispatcher(store, config, clock=clock) for _ in range(4)]
        workers[0].submit(events)
        for w in workers[1:]:
            w.submit(events)  # every worker saw the events (replays across the group)
        barrier = threading.Barrier(len(workers))
        reports: list[Any] = []

        def run(dispatcher: AlertDispatcher) -> None:
            barrier.wait()
            reports.append(dispatcher.deliver_due())

        # When all of them run a delivery pass at the same moment
        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Then every event reached the receiver exactly once, in total
        delivered = [e["event_id"] for e in receiver.events()]
        assert sorted(delivered) == sorted(e.event_id for e in events)
        assert receiver.rejected == []
        assert sum(r.sent for r in reports) == 30
        assert set(outbox_states(store).values()) == {("sent", 1)}


# -- failures, backoff, digests ----------------------------------------------------------


def test_receiver_down_then_back_gets_everything_once(store: Any, tmp_path: Path) -> None:
    with receiver_down() as receiver:
        config = hook_config(tmp_path, receiver.url,
                             delivery="{retry_base: 10s, retry_max: 40s, max_attempts: 20}")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        dispatcher.submit([event(6379), event(3389, service="ms-wbt-server")])
        # Given the receiver is down for a while (three failed attempts, backoff 10, 20, 40)
        for wait in (0, 10, 20, 40):
            clock.advance(wait)
            report = dispatcher.deliver_due()
            if wait:
                assert report.retrying == 2, report
        states = outbox_states(store)
        assert set(states.values()) == {("pending", 4)}
        log_lines = [r.line() for r in delivery_log(store)]
        assert len(log_lines) == 2, log_lines
        assert all("retrying: attempt 4 failed (cannot reach" in line
                   for line in log_lines), log_lines
        # which `alerts log --state retrying` lists, as retrying (they said 'pending',
        # the state the filter does not name), and --state failed (given up) not yet
        retrying = delivery_log(store, state="retrying")
        assert [r.as_dict()["state"] for r in retrying] == ["retrying", "retrying"]
        assert delivery_log(store, state="failed") == []
        # ... a pass before the backoff is over sends nothing
        clock.advance(5)
        assert dispatcher.deliver_due().messages == 0
        # When it comes back on the same port and the backoff (capped at 40 s) is over
        receiver.start()
        clock.advance(40)
        report = dispatcher.deliver_due()
        # Then both events are delivered once, and the log says sent after 5 attempts
        assert (report.sent, report.messages) == (2, 1)
        assert len(receiver.events()) == 2
        assert set(outbox_states(store).values()) == {("sent", 5)}
        clock.advance(3600)
        assert dispatcher.deliver_due().messages == 0


def test_a_retry_is_the_same_message_and_newer_events_wait_their_window(
        store: Any, tmp_path: Path) -> None:
    with receiver_down() as receiver:
        config = hook_config(tmp_path, receiver.url, digest="5m",
                             delivery="{retry_base: 10s, retry_max: 40s}")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        first = [event(6379), event(3389, service="ms-wbt-server")]
        # Given a digest of two events whose send failed (the receiver was down)
        dispatcher.submit(first)
        clock.advance(300)
        assert dispatcher.deliver_due().retrying == 2
        sent_as = delivery_id("risky-opened", "soc-hook", [e.event_id for e in first])
        assert {r[0] for r in store.query(
            "SELECT delivery_id FROM alert_outbox FINAL")} == {sent_as}
        # and a newer event queued while it waits for its retry
        clock.advance(5)
        newer = event(5432, service="postgresql")
        dispatcher.submit([newer])
        # When the receiver is back and the retry is due
        receiver.start()
        clock.advance(10)
        report = dispatcher.deliver_due()
        # Then the retry is the first message again: its two events, under its id
        assert (report.messages, report.sent) == (1, 2)
        [retry] = receiver.accepted
        assert retry.headers["x-portwatch-delivery"] == sent_as == retry.payload["delivery_id"]
        assert sorted(e["port"] for e in retry.payload["events"]) == [3389, 6379]
        # And the newer event waits for its own window, then goes out under its own id
        clock.advance(280)
        assert dispatcher.deliver_due().messages == 0
        clock.advance(20)
        assert (dispatcher.deliver_due().sent, len(receiver.accepted)) == (1, 2)
        later = receiver.accepted[1]
        assert [e["port"] for e in later.payload["events"]] == [5432]
        assert later.headers["x-portwatch-delivery"] == delivery_id(
            "risky-opened", "soc-hook", [newer.event_id]) != sent_as


def test_gives_up_after_max_attempts_and_keeps_the_error(store: Any, tmp_path: Path) -> None:
    with receiver_down() as receiver:
        config = hook_config(tmp_path, receiver.url,
                             delivery="{retry_base: 1s, max_attempts: 2}")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        dispatcher.submit([event(6379)])
        dispatcher.deliver_due()
        clock.advance(1)
        report = dispatcher.deliver_due()
        # (a failed send is a message sent, none delivered: the run's summary counts
        # delivered ones, "0 delivered in 1 message(s)" before)
        assert (report.failed, report.messages, report.delivered) == (1, 1, 0)
        [row] = delivery_log(store, state="failed")
        assert row.attempts == 2
        assert "cannot reach" in row.last_error
        assert "FAILED after 2 attempt(s)" in row.line()
        clock.advance(3600)
        assert dispatcher.deliver_due().messages == 0


def test_digest_groups_a_rules_events_in_its_window(store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url, digest="5m")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        # Given one event, then two more a minute later
        dispatcher.submit([event(6379)])
        clock.advance(60)
        dispatcher.submit([event(5432, service="postgresql"), event(9200, service="http")])
        # When passes run before the first event waited five minutes
        clock.advance(200)
        assert dispatcher.deliver_due().messages == 0
        # Then nothing went out; at five minutes, one message carries all three
        clock.advance(41)
        report = dispatcher.deliver_due()
        assert (report.messages, report.sent) == (1, 3)
        assert len(receiver.accepted) == 1
        assert {e["port"] for e in receiver.events()} == {6379, 5432, 9200}


def test_one_shot_drain_flushes_the_window_and_leaves_the_rest_queued(
        store: Any, tmp_path: Path) -> None:
    with receiver_down() as receiver:
        config = hook_config(tmp_path, receiver.url, digest="5m",
                             delivery="{retry_base: 2s, wait: 5s}")
        clock = Clock()
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            clock.advance(seconds)

        dispatcher = AlertDispatcher(store, config, clock=clock, sleep=sleep)
        dispatcher.submit([event(6379)])
        # When a one-shot scan drains with the receiver down
        report = dispatcher.drain()
        # Then it tried within its 5 s budget, and the event stays queued for the next run
        assert report.sent == 0 and report.retrying == 1
        assert sum(slept) <= 5
        assert outbox_states(store)[("risky-opened", "soc-hook", event(6379).event_id)][0] \
            == "pending"
        # And the next run, with the receiver back, delivers it without waiting for the digest
        receiver.start()
        clock.advance(60)
        assert dispatcher.drain().sent == 1
        assert len(receiver.events()) == 1


def test_a_bounded_drain_starts_no_message_past_its_wait_even_in_its_first_pass(
        store: Any, tmp_path: Path) -> None:
    # Given two messages queued (one event each) and a clock that moves 3 s per send
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url,
                             delivery="{wait: 2s, max_events_per_message: 1}")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        dispatcher.submit([event(6379), event(6380)])
        real_send = dispatcher._send_batch

        def slow_send(*args: Any, **kwargs: Any) -> float | None:
            clock.advance(3)
            return real_send(*args, **kwargs)

        dispatcher._send_batch = slow_send  # type: ignore[method-assign]
        # When a watcher stopped by a signal drains (bound_first): the first message
        # starts within the wait, the second would start past it
        report = dispatcher.drain(bound_first=True)
        # Then one went out and the other stays queued (before: the first pass sent
        # everything whatever the wait, and a stopping watcher waited for all of it)
        assert (report.sent, report.retrying) == (1, 1)
        # And a one-shot scan's drain still sends everything in its first pass
        clock.advance(60)
        assert dispatcher.drain(0).sent == 1
    assert sorted(e["port"] for e in receiver.events()) == [6379, 6380]


# -- e-mail through apprise ----------------------------------------------------------------


def test_email_through_apprise_mailto_names_the_events(store: Any, tmp_path: Path) -> None:
    with smtp_receiver() as (port, mails):
        path = write_alerts(
            tmp_path, f'  soc-mail: {{apprise: "mailto://127.0.0.1:{port}?'
                      'to=soc@example.org&from=portwatch@example.org"}')
        config = load_alerts(path, env={})
        dispatcher = AlertDispatcher(store, config, clock=Clock())
        dispatcher.submit([event(6379), event(5432, service="postgresql")])
        report = dispatcher.deliver_due()
        assert report.errors == [] and report.sent == 2
        [mail] = mails
        assert mail.rcpt_tos == ["soc@example.org"]
        assert "risky-opened" in mail.subject and "opened" in mail.subject
        assert "127.0.0.1 6379/tcp" in mail.body and "127.0.0.1 5432/tcp" in mail.body
        assert "redis" in mail.body and "postgresql" in mail.body


# A banner, a title or an inventory's organization is the scanned side's text: in a
# message it is text, never markup or a mention (a review, 2026-12-06: a banner's
# <!channel> pinged a Slack channel, its <a href> was a link in the e-mail's HTML part).
HOSTILE = ("ssh <!channel> @everyone [Reset your SSO](https://evil.example/r) "
           "<a href=https://evil.example/r>Reset</a><img src=https://evil.example/px>")


def test_email_carries_a_hostile_banner_as_plain_text(store: Any, tmp_path: Path) -> None:
    with smtp_receiver() as (port, mails):
        path = write_alerts(
            tmp_path, f'  soc-mail: {{apprise: "mailto://127.0.0.1:{port}?'
                      'to=soc@example.org&from=portwatch@example.org"}')
        dispatcher = AlertDispatcher(store, load_alerts(path, env={}), clock=Clock())
        dispatcher.submit([replace(event(22, service="ssh"), after=HOSTILE)])
        assert dispatcher.deliver_due().sent == 1
        [mail] = mails
        # One text/plain part: no HTML part for a mail reader to render the link in
        assert [t for t in mail.content_types if t.startswith("text/")] == ["text/plain"]
        assert "<a href=https://evil.example/r>Reset</a>" in mail.body
        assert "@\u200beveryone" in mail.body and "@everyone" not in mail.body


def test_a_markdown_chat_gets_a_hostile_banner_escaped_and_its_mentions_defused(
        store: Any, tmp_path: Path) -> None:
    # Rocket.Chat (apprise's rocket://, a Markdown chat that reads @all/@here mentions):
    # its incoming webhook is a real HTTP receiver on 127.0.0.1
    with webhook_receiver(SECRET, signed=False) as receiver:
        path = write_alerts(tmp_path, f'  soc-chat: {{apprise: "rocket://abc%2Fdef@127.0.0.1:'
                                      f'{receiver.port}/%23soc"}}')
        dispatcher = AlertDispatcher(store, load_alerts(path, env={}), clock=Clock())
        dispatcher.submit([replace(event(22, service="ssh"), after=HOSTILE)])
        assert dispatcher.deliver_due().sent == 1
        [delivery] = receiver.accepted
        text = delivery.payload["text"]
        assert delivery.payload["channel"] == "#soc"
        # The link is text (its Markdown escaped), the mention pings nobody
        assert r"\[Reset your SSO\]" in text and "](https://" not in text
        assert "@\u200beveryone" in text and "@everyone" not in text
        assert r"<\!channel\>" in text


def test_chats_that_take_the_text_as_it_is_get_no_live_link_or_mention() -> None:
    # Discord and Mattermost get apprise's plain text as it is (a review of the first
    # fix: "[Reset your SSO](https://...)" and "![p](...)" stayed live there)
    from portwatch.alerts.channels import render

    _title, body = render("r", [replace(event(22, service="ssh"),
                                        after=HOSTILE + " ![p](https://evil.example/p.png)")])
    assert "](" not in body
    assert "@everyone" not in body and "@\u200beveryone" in body
    # the text still reads the same once the zero-width spaces are taken out
    assert HOSTILE in body.replace("\u200b", "")


# -- accepted risks -------------------------------------------------------------------------


def finding(port: int, product: str, version: str, scan_id: str) -> Finding:
    t = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp")
    return Finding(
        port=OpenPort(scan_id=scan_id, target=t, port=port, proto=Proto.TCP,
                      observed_at=datetime.fromtimestamp(T0, UTC)),
        service=ServiceInfo(service="redis", product=product, version=version),
        tls=TlsResult(), cdn=CdnVerdict(), risk_color=RiskColor.RED, risk_reason="test")


def test_accepted_risk_is_quiet_until_it_expires_or_the_service_changes(
        store: Any, tmp_path: Path) -> None:
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url)
        clock = Clock()
        now = datetime.fromtimestamp(T0, UTC)
        store.insert_findings([finding(6379, "Redis key-value store", "7.0.15", "scan-1")])
        # Given 6379 accepted for a week and the whole of another host accepted
        acc.accept(store, "127.0.0.1", "tcp", 6379, note="cache behind the firewall",
                   by="alice", until=now + timedelta(days=7), now=now)
        acc.accept(store, "127.0.0.9", "tcp", 0, note="honeypot", by="bob", until=None,
                   now=now)
        dispatcher = AlertDispatcher(store, config, clock=clock)
        # When its port reopens, and the honeypot opens a port
        assert dispatcher.submit([event(6379, ChangeKind.REOPENED),
                                  event(23, ip="127.0.0.9", service="telnet")]) == 0
        # ... while another port of the same host still alerts
        assert dispatcher.submit([event(5432, service="postgresql")]) == 1
        active = acc.list_active(store, now)
        assert {(r.target, r.port, r.note, r.accepted_by) for r in active} == {
            ("127.0.0.1", 6379, "cache behind the firewall", "alice"),
            ("127.0.0.9", 0, "honeypot", "bob")}
        # When the product version on 6379 changes, the acceptance no longer covers it
        store.insert_findings([replace(finding(6379, "Redis key-value store", "7.2.4",
                                               "scan-2"))])
        clock.advance(60)
        assert dispatcher.submit([event(6379, ChangeKind.RISK_RAISED, scan_id="scan-3")]) == 1
        # (that the change ends it for good, so a rollback to the version accepted alerts
        # too, is the change recorder's, after a completed scan: test_accepted_changes.py)
        # And after the expiry, an event on it alerts again
        store.insert_findings([finding(6379, "Redis key-value store", "7.0.15", "scan-4")])
        clock.advance(8 * 86400)
        assert dispatcher.submit([event(6379, ChangeKind.REOPENED, scan_id="scan-5")]) == 1
        # And a withdrawn whole-host acceptance stops covering at once
        assert acc.remove(store, "127.0.0.9", "tcp", 0, now)
        assert dispatcher.submit([event(23, ip="127.0.0.9", service="telnet",
                                        scan_id="scan-6")]) == 1


def test_an_acceptance_survives_a_scan_that_could_not_name_its_port(
        store: Any, tmp_path: Path) -> None:
    def at(f: Finding, seconds: float) -> Finding:
        return replace(f, port=replace(f.port, observed_at=datetime.fromtimestamp(
            T0 + seconds, UTC)))

    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url),
                                     clock=Clock(T0 + 300))
        now = datetime.fromtimestamp(T0, UTC)
        store.insert_findings([finding(6380, "Redis key-value store", "7.0.15", "s1")])
        acc.accept(store, "127.0.0.1", "tcp", 6380, note="known", by="alice", until=None,
                   now=now)
        # Given a scan that could not name the port (a busy server said nothing)
        unnamed = finding(6380, "", "", "s2")
        store.insert_findings([at(replace(unnamed, service=ServiceInfo()), 60)])
        # When an event of it is submitted / Then the acceptance still covers it, and
        # still does once the port is named again (one such scan ended it for good: a
        # review, 2026-12-06)
        assert dispatcher.submit([event(6380, ChangeKind.REOPENED, scan_id="s2")]) == 0
        store.insert_findings([at(finding(6380, "Redis key-value store", "7.0.15", "s3"),
                                  120)])
        assert {r.port for r in acc.list_active(store, now)} == {6380}


def test_an_acceptance_is_judged_on_its_own_spelling(store: Any, tmp_path: Path) -> None:
    def seen(target: str, version: str, seconds: float) -> Finding:
        t = Target(ip="127.0.0.1", target=target, organization="Example Corp")
        return Finding(port=OpenPort(scan_id=f"s-{target}", target=t, port=6381,
                                     observed_at=datetime.fromtimestamp(T0 + seconds, UTC)),
                       service=ServiceInfo(service="redis", product="Redis key-value store",
                                           version=version),
                       risk_color=RiskColor.RED, risk_reason="test")

    with webhook_receiver(SECRET) as receiver:
        dispatcher = AlertDispatcher(store, hook_config(tmp_path, receiver.url),
                                     clock=Clock(T0 + 300))
        # Given the address scanned as 127.0.0.1 (7.2.4) and, later, under the name
        # localhost while that name's server still ran 7.0.15 (another spelling's row)
        store.insert_findings([seen("127.0.0.1", "7.2.4", 0), seen("localhost", "7.0.15", 60)])
        # When 127.0.0.1's port is accepted / Then it is judged on 127.0.0.1's own row:
        # the other spelling's made it read "changed" and, alerting, ended it (a review)
        acc.accept(store, "127.0.0.1", "tcp", 6381, note="known", by="alice", until=None,
                   now=datetime.fromtimestamp(T0 + 120, UTC))
        assert dispatcher.submit([event(6381, ChangeKind.REOPENED, scan_id="s4")]) == 0
        assert [r.version for r in acc.list_active(store, datetime.fromtimestamp(
            T0 + 200, UTC)) if r.port == 6381] == ["7.2.4"]


def test_a_claim_of_a_vanished_worker_is_taken_over(store: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    from portwatch.alerts.dispatcher import CLAIM_COLUMNS
    from portwatch.alerts.owners import this_host

    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url, delivery="{claim_lease: 2m}")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        dead_ev, remote_ev = event(6379), event(5432, service="postgresql")
        dispatcher.submit([dead_ev, remote_ev])
        # Given attempt 1 of one delivery claimed by a process of this host that is gone
        # (killed between claim and send), and of another by a worker on another host
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        claimed = datetime.fromtimestamp(clock(), UTC)
        store.insert_rows("alert_claims", CLAIM_COLUMNS, [
            ["risky-opened", "soc-hook", dead_ev.event_id, 1,
             f"{this_host()}:{gone.pid}:deadbeef", claimed]])
        store.insert_rows("alert_claims", CLAIM_COLUMNS, [
            ["risky-opened", "soc-hook", remote_ev.event_id, 1, "other-host:1:cafe", claimed]])
        # When a delivery pass runs at once
        first = dispatcher.deliver_due()
        # Then the dead process's delivery goes out now (as attempt 2), the other waits
        assert [e["port"] for e in receiver.events()] == [6379]
        assert first.sent == 1
        # And after the lease of the other host's claim, it goes out too
        clock.advance(121)
        assert dispatcher.deliver_due().sent == 1
        assert sorted(e["port"] for e in receiver.events()) == [5432, 6379]
        assert outbox_states(store)[("risky-opened", "soc-hook", remote_ev.event_id)] == \
            ("sent", 2)


def test_part_of_a_retried_message_goes_out_under_its_own_id(store: Any,
                                                            tmp_path: Path) -> None:
    from portwatch.alerts.dispatcher import CLAIM_COLUMNS

    with receiver_down() as receiver:
        config = hook_config(tmp_path, receiver.url, delivery="{retry_base: 10s}")
        clock = Clock()
        dispatcher = AlertDispatcher(store, config, clock=clock)
        mine, theirs = event(6379), event(3389, service="ms-wbt-server")
        # Given a message of two events whose send failed
        dispatcher.submit([mine, theirs])
        assert dispatcher.deliver_due().retrying == 2
        # and a worker on another host holding the retry of one of them
        store.insert_rows("alert_claims", CLAIM_COLUMNS, [
            ["risky-opened", "soc-hook", theirs.event_id, 2, "other-host:1:cafe",
             datetime.fromtimestamp(clock() + 10, UTC)]])
        # When this worker's retry is due
        receiver.start()
        clock.advance(10)
        assert dispatcher.deliver_due().sent == 1
    # Then it sent its part under that part's id, not the whole message's: a receiver
    # that took the whole message's id would drop the other part as a duplicate
    [sent] = receiver.accepted
    assert [e["port"] for e in sent.payload["events"]] == [6379]
    assert sent.headers["x-portwatch-delivery"] == delivery_id(
        "risky-opened", "soc-hook", [mine.event_id]) != delivery_id(
        "risky-opened", "soc-hook", [mine.event_id, theirs.event_id])


DELIVER = """
import sys
from pathlib import Path
from portwatch.alerts import AlertDispatcher, load_alerts
from schemas.records import ChangeEvent
from stream_processors.store import Store
store = Store.from_url(sys.argv[1])
dispatcher = AlertDispatcher(store, load_alerts(Path(sys.argv[2]),
                                                env={"HOOK_SECRET": sys.argv[3]}))
if len(sys.argv) > 4:
    dispatcher.submit([ChangeEvent.from_json(line)
                       for line in Path(sys.argv[4]).read_text().splitlines()])
report = dispatcher.deliver_due()
print(report.sent, report.messages)
store.close()
"""


def test_a_worker_killed_after_its_send_has_it_resent_under_the_same_id(
        tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    with webhook_receiver(SECRET) as receiver:
        receiver.take_duplicates = True
        receiver.hold = threading.Event()
        config = write_alerts(
            tmp_path, f'  soc-hook: {{webhook: "{receiver.url}", secret_env: HOOK_SECRET}}')
        events = tmp_path / "events.jsonl"
        events.write_text("\n".join(e.to_json().decode() for e in (
            event(6379), event(3389, service="ms-wbt-server"))))
        args = [f"chdb://{tmp_path / 'store'}", str(config), SECRET.decode()]
        # Given a worker (its own process) whose message reached the receiver, killed
        # before it heard the answer, so before the store recorded the send
        worker = subprocess.Popen([sys.executable, "-c", DELIVER, *args, str(events)],
                                  cwd=repo, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not receiver.accepted:
                assert worker.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            worker.kill()
            worker.wait()
        receiver.hold.set()
        receiver.hold = None
        # When the next delivery pass runs (another process: the dead owner's claim is
        # void), with a newer event due as well
        newer = tmp_path / "newer.jsonl"
        newer.write_text(event(5432, service="postgresql").to_json().decode())
        again = subprocess.run([sys.executable, "-c", DELIVER, *args, str(newer)], cwd=repo,
                               capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr[-2000:]
        assert again.stdout.split() == ["3", "2"]
    # Then it sent the same events under the same id, which the receiver dropped, and
    # the newer event in a message of its own
    [taken, later], [resent] = receiver.accepted, receiver.duplicates
    assert resent.headers["x-portwatch-delivery"] == taken.headers["x-portwatch-delivery"]
    assert resent.payload["events"] == taken.payload["events"]
    assert sorted(e["port"] for e in taken.payload["events"]) == [3389, 6379]
    assert [e["port"] for e in later.payload["events"]] == [5432]


def test_two_passes_of_one_dispatcher_racing_send_once(store: Any, tmp_path: Path) -> None:
    # The Faust agent and its delivery timer run passes of one dispatcher in two threads.
    # The dispatcher serializes its passes; here that lock is bypassed on purpose, so that
    # the claims alone (one owner id per pass) must keep each delivery single.
    from portwatch.alerts.dispatcher import DeliveryReport

    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url)
        dispatcher = AlertDispatcher(store, config, clock=Clock())
        events = [event(port) for port in range(7100, 7120)]
        dispatcher.submit(events)
        barrier = threading.Barrier(3)

        def raw_pass() -> None:
            barrier.wait()
            dispatcher._deliver_due(False, DeliveryReport())

        threads = [threading.Thread(target=raw_pass) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(e["event_id"] for e in receiver.events()) == \
            sorted(e.event_id for e in events)
        assert receiver.rejected == []


def test_a_retry_after_a_thousand_attempts_still_backs_off(store: Any, tmp_path: Path) -> None:
    from portwatch.alerts.dispatcher import OUTBOX_COLUMNS

    with receiver_down() as receiver:
        # Given a delivery that failed 1,024 times (max_attempts may be 10,000)
        options = "{max_attempts: 5000, retry_max: 1m}"
        opened = event(6379)
        created = datetime.fromtimestamp(T0, UTC)  # the row below replaces a submitted one
        store.insert_rows("alert_outbox", OUTBOX_COLUMNS, [[
            "risky-opened", "soc-hook", opened.event_id, opened.to_json().decode(), "pending",
            1024, "earlier", created, created, datetime.fromtimestamp(0, UTC), 1024 * 4 + 1,
            ""]])
        # When attempt 1,025 fails too
        report = AlertDispatcher(store, hook_config(tmp_path, receiver.url, delivery=options),
                                 clock=Clock()).deliver_due()
    # Then the pass records it (no overflow aborting the pass) and backs off retry_max
    assert report.retrying == 1
    assert [e.split(":")[0] for e in report.errors] == ["alerts"]
    assert "delivery pass failed" not in report.errors[0]
    [row] = delivery_log(store)
    assert (row.state, row.attempts) == ("pending", 1025)
    assert row.next_attempt_at == datetime.fromtimestamp(T0 + 60, UTC)


def test_an_apprise_url_token_is_in_no_error_log_or_stored_error(
        store: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given an apprise json:// channel whose path is its token, and its receiver down
    port = free_port()
    url = f"json://127.0.0.1:{port}/hooks/T00/B00/SUPERSECRET123?token=SECRET2"
    config = load_alerts(write_alerts(tmp_path, f'  chat: {{apprise: "{url}"}}'))
    dispatcher = AlertDispatcher(store, config, clock=Clock())
    dispatcher.submit([event(6379)])
    # When a delivery pass fails
    with caplog.at_level("WARNING"):
        report = dispatcher.deliver_due()
    # Then the warning, the stored error and `alerts log` show scheme://host:port/… only
    assert report.retrying == 1
    assert f"alerts: rule risky-opened -> chat: json://127.0.0.1:{port}/…: " in caplog.text
    [(stored,)] = store.query("SELECT last_error FROM alert_outbox FINAL")
    [row] = delivery_log(store)
    for shown in (caplog.text, str(stored), row.line(), str(row.as_dict())):
        assert "SUPERSECRET123" not in shown and "SECRET2" not in shown and "/hooks" not in shown


def test_a_channels_longer_timeout_wins_over_send_timeout(store: Any, tmp_path: Path) -> None:
    # Given a receiver that answers after 2 s, a channel with timeout: 20s and a
    # delivery send_timeout of 1 s
    with webhook_receiver(SECRET) as receiver:
        receiver.hold = threading.Event()
        path = write_alerts(tmp_path, f'  slow-hook: {{webhook: "{receiver.url}", '
                                      'secret_env: HOOK_SECRET, timeout: 20s}',
                            delivery="{send_timeout: 1s}")
        config = load_alerts(path, env={"HOOK_SECRET": SECRET.decode()})
        dispatcher = AlertDispatcher(store, config)
        dispatcher.submit([event(6379)])
        timer = threading.Timer(2.0, receiver.hold.set)
        timer.start()
        try:
            # When the delivery pass sends
            report = dispatcher.deliver_due()
        finally:
            timer.cancel()
            receiver.hold.set()
    # Then the channel's own timeout held: sent once, not failed (and retried: a copy)
    assert (report.sent, report.retrying, report.errors) == (1, 0, [])
    assert [e["port"] for e in receiver.events()] == [6379]


# -- a one-shot drain waits for what can change, never polls ------------------------------


def counted_drain(store: Any, config: Any, clock: Clock
                  ) -> tuple[AlertDispatcher, list[float], list[float]]:
    """A dispatcher whose sleeps advance ``clock`` (and are kept), and the clock times at
    which its delivery passes read their due rows."""
    slept: list[float] = []
    passes: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    dispatcher = AlertDispatcher(store, config, clock=clock, sleep=sleep)
    pending = dispatcher.pending

    def counting_pending(*, due_by: float | None = None) -> Any:
        passes.append(clock() - T0)
        return pending(due_by=due_by)

    dispatcher.pending = counting_pending  # type: ignore[method-assign]
    return dispatcher, slept, passes


def test_a_drain_sends_a_failing_channel_only_at_its_retry_times(
        store: Any, tmp_path: Path) -> None:
    # Given a receiver that refuses every message (it holds another secret) and three
    # events queued for it, one a message
    with webhook_receiver(b"another secret") as receiver:
        config = hook_config(tmp_path, receiver.url, delivery="{retry_base: 10s, "
                             "retry_max: 40s, max_events_per_message: 1}")
        clock = Clock()
        dispatcher, slept, passes = counted_drain(store, config, clock)
        events = [event(6379), event(5432, service="postgresql"), event(9200, service="http")]
        assert dispatcher.submit(events) == 3
        # When a one-shot run drains with a 60 s wait
        report = dispatcher.drain(60)
        # Then the channel got one message at 0 s and its retries at 10 s and 30 s (the
        # next, at 70 s, is past the wait), not one more every 50 ms; its other messages
        # were not sent while it was failing
        assert receiver.accepted == []
        assert len(receiver.rejected) == 3
        # (three sends, none delivered)
        assert (report.messages, report.delivered, report.sent, report.retrying) == (
            3, 0, 0, 3)
        assert slept == [10, 20]
        assert passes == [0, 0, 10, 10, 30, 30]
        assert clock() - T0 == 30
    first = min(e.event_id for e in events)
    assert outbox_states(store) == {
        ("risky-opened", "soc-hook", e.event_id): ("pending", 3 if e.event_id == first else 0)
        for e in events}


@pytest.mark.parametrize(("claimed_ago", "lease_ends"), [(100, 20), (0, 120)],
                         ids=["lease-ends-within-the-wait", "lease-ends-after-the-wait"])
def test_a_drain_waits_for_another_workers_claim_without_polling(
        store: Any, tmp_path: Path, claimed_ago: int, lease_ends: int) -> None:
    from portwatch.alerts.dispatcher import CLAIM_COLUMNS

    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url, delivery="{claim_lease: 2m}")
        clock = Clock()
        dispatcher, slept, passes = counted_drain(store, config, clock)
        events = [event(6379), event(5432, service="postgresql")]
        dispatcher.submit(events)
        # Given attempt 1 of both deliveries claimed by a live worker on another host
        claimed = datetime.fromtimestamp(clock() - claimed_ago, UTC)
        store.insert_rows("alert_claims", CLAIM_COLUMNS, [
            ["risky-opened", "soc-hook", e.event_id, 1, "other-host:1:cafe", claimed]
            for e in events])
        # When a one-shot run drains with a 60 s wait
        report = dispatcher.drain(60)
    if lease_ends < 60:
        # Then it slept once, until the lease ended, and then took the deliveries over
        assert slept == [lease_ends]
        assert passes == [0, lease_ends]
        assert (report.sent, report.messages, report.retrying) == (2, 1, 0)
        assert sorted(e["port"] for e in receiver.events()) == [5432, 6379]
        assert set(outbox_states(store).values()) == {("sent", 2)}
    else:
        # Then it returned at once: nothing it may send changes within its wait
        assert (slept, passes) == ([], [0])
        assert (report.sent, report.messages, report.retrying) == (0, 0, 2)
        assert receiver.accepted == []
        assert set(outbox_states(store).values()) == {("pending", 0)}
        assert clock() == T0


def test_prune_takes_ended_deliveries_old_claims_and_runs_never_pending_ones(
        store: Any, tmp_path: Path) -> None:
    from portwatch.alerts.log import prune_alert_history
    from portwatch.alerts.schedule import CLAIM_COLUMNS, last_slots, record_run

    # Given, 40 days ago, one delivery sent and one that failed for good, and a third
    # still pending (its receiver down), each with its claims
    old = Clock(T0 - 40 * 86400)
    with receiver_down() as down:
        config = hook_config(tmp_path, down.url, delivery="{retry_base: 1s, max_attempts: 1}")
        dispatcher = AlertDispatcher(store, config, clock=old)
        dispatcher.submit([event(6379), event(6380)])
        assert dispatcher.deliver_due().failed == 2  # both failed for good (1 attempt)
    with webhook_receiver(SECRET) as receiver:
        config = hook_config(tmp_path, receiver.url)
        dispatcher = AlertDispatcher(store, config, clock=old)
        dispatcher.submit([event(6381)])
        assert dispatcher.deliver_due().sent == 1
    with receiver_down() as down:
        config = hook_config(tmp_path, down.url)
        dispatcher = AlertDispatcher(store, config, clock=old)
        dispatcher.submit([event(6382)])
        assert dispatcher.deliver_due().retrying == 1
    # And a schedule entry's runs: one 40 days ago, its latest 39 days ago, and another
    # entry's run yesterday
    day = timedelta(days=1)
    start = datetime.fromtimestamp(T0, UTC)
    for entry, when in (("nightly", start - 40 * day), ("nightly", start - 39 * day),
                        ("hourly", start - day)):
        record_run(store, entry, when, when, when, "s", "completed")
    # and the slots' claims (each claimed and renewed when it ran)
    store.insert_rows("watch_claims", CLAIM_COLUMNS, [
        [entry, when, 1, "elsewhere:1:a", when + timedelta(minutes=m)]
        for entry, when in (("nightly", start - 40 * day), ("nightly", start - 39 * day),
                            ("hourly", start - day)) for m in (0, 1)])
    # When what ended more than 30 days ago is pruned
    pruned = prune_alert_history(store, start - 30 * day)
    # Then only the pending delivery and its claim are left of the alerting: three
    # deliveries and one run went, and it says so
    assert pruned == (3, 1)
    assert {(k[2][-4:], v[0]) for k, v in outbox_states(store).items()} == {
        (event(6382).event_id[-4:], "pending")}
    assert store.query("SELECT DISTINCT event_id FROM alert_claims") == [
        (event(6382).event_id,)]
    # And each entry keeps its latest run (which schedules it), nothing older than 30 days
    assert last_slots(store) == {"nightly": start - 39 * day, "hourly": start - day}
    assert store.query("SELECT count() FROM watch_runs") == [(2,)]
    # And the slots' claims and renewals older than 30 days go too
    assert store.query("SELECT DISTINCT entry, slot FROM watch_claims") == [
        ("hourly", (start - day).replace(tzinfo=None))]
