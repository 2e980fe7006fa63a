"""``portwatch watch``, ``alerts`` and ``accept`` through the real command.

Bad files are refused with one line and exit 2 before anything scans (the store is not
even created). ``watch --once`` scans a real loopback listener, records its run and is
not due again. A process that queued alerts is killed with SIGKILL before delivering
them; the next ``watch --once`` delivers each exactly once.

The SIGKILL test queues events it builds itself, through the same Watcher and dispatcher
code, in the process it then kills (the kill must fall between an event and its
delivery); ``scan --alerts`` over two real scans delivers the change events that change
detection computed (opened, then closed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import loopback
from tests.alert_receivers import webhook_receiver
from tests.conftest import REPO, CliResult, query_store, run_cli

SECRET = "e2e-secret-abcdef"
ENV = {"HOOK_SECRET": SECRET}


def assert_refused(result: CliResult, *words: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("portwatch: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def schedules(tmp_path: Path, port: int, cron: str = "0 * * * *") -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(textwrap.dedent(f"""\
        schedules:
          - name: loopback-hourly
            targets: [127.0.0.1]
            ports: "{port}"
            udp: none
            cron: "{cron}"
        """))
    return path


def alerts(tmp_path: Path, url: str, digest: str = "0", retry_base: str = "1s") -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(textwrap.dedent(f"""\
        channels:
          hook: {{webhook: "{url}", secret_env: HOOK_SECRET}}
        rules:
          - name: red-opened
            when: {{kinds: [opened, reopened], colors: [red]}}
            notify: [hook]
            digest: {digest}
        delivery: {{retry_base: {retry_base}, wait: 10s}}
        """))
    return path


def until_first_scan(proc: subprocess.Popen[str]) -> list[str]:
    """The stderr lines of a running watch up to its first completed scan (bounded)."""
    assert proc.stderr is not None
    seen: list[str] = []
    for _ in range(50):  # bounded: the lines of one scan and its status
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "scan " in line and "completed" in line:
            break
    return seen


def signalled_after_its_first_scan(sched: Path, store: str, stop_signal: signal.Signals,
                                   args: list[str]) -> tuple[int, str]:
    """``watch --schedule sched -q *args`` sent ``stop_signal`` as soon as its first scan
    says it completed: (exit code, the rest of its stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwatch", "watch", "--schedule", str(sched), "-q", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ENV, "PORTWATCH_STORE": store})
    try:
        seen = until_first_scan(proc)
        assert any("scan" in line and "completed" in line for line in seen), seen
        proc.send_signal(stop_signal)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, rest


@pytest.mark.parametrize(("alerts_text", "words"), [
    ("channels:\n  a: {apprise: \"nosuch://x\"}\nrules:\n  - name: r\n    notify: [a]\n",
     ["alerts.yaml:2:", "unknown apprise scheme 'nosuch://'"]),
    ("channels:\n  a: {webhook: \"http://127.0.0.1:1/\", secret_env: PW_UNSET_SECRET}\n"
     "rules:\n  - name: r\n    notify: [a]\n", ["alerts.yaml:2:", "PW_UNSET_SECRET is not set"]),
    ("channels:\n  a: {apprise: \"json://127.0.0.1:1/x\"}\nrules:\n  - name: r\n"
     "    when: {kinds: [exploded]}\n    notify: [a]\n", ["alerts.yaml:5:", "'exploded'"]),
])
def test_bad_alert_files_refused_before_anything_scans(tmp_path: Path, alerts_text: str,
                                                       words: list[str]) -> None:
    (tmp_path / "alerts.yaml").write_text(alerts_text)
    store = tmp_path / "store"
    result = run_cli("watch", "--schedule", str(schedules(tmp_path, 9)), "--once",
                     "--alerts", str(tmp_path / "alerts.yaml"), store=f"chdb://{store}")
    assert_refused(result, *words)
    assert not store.exists()


def test_bad_cron_refused_before_anything_scans(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = run_cli("watch", "--schedule", str(schedules(tmp_path, 9, cron="0 25 * * *")),
                     "--once", store=f"chdb://{store}")
    assert_refused(result, "schedules.yaml:6:", "bad cron expression '0 25 * * *'")
    assert not store.exists()


def test_bad_target_in_a_schedule_refused_before_anything_scans(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text("schedules:\n  - name: a\n    targets: [not a host!]\n"
                    "    cron: '@hourly'\n")
    store = tmp_path / "store"
    result = run_cli("watch", "--schedule", str(path), "--once", store=f"chdb://{store}")
    assert_refused(result, f"{path}:2: schedule 'a': ", "not a host!")
    assert not store.exists()


def test_watch_once_scans_records_the_run_and_is_not_due_again(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as listener, \
            webhook_receiver(SECRET.encode()) as receiver:
        # (yearly: an hourly entry became due again when the test crossed a full hour)
        sched = schedules(tmp_path, listener.port, "0 0 1 1 *")
        rules = alerts(tmp_path, receiver.url)
        # When watch --once runs a never-run entry
        first = run_cli("watch", "--schedule", str(sched), "--once", "-q", "--alerts",
                        str(rules), store=store, env=ENV)
        assert first.code == 0, first.stderr
        assert "loopback-hourly: scanning" in first.stderr
        assert "completed" in first.stderr
        # Then the port it found is in the store
        listed = run_cli("report", "list", "--format", "json", store=store)
        assert [row["port"] for row in json.loads(listed.stdout)] == [listener.port]
        # And the run is recorded: --list shows it, and a second --once scans nothing
        plan = run_cli("watch", "--schedule", str(sched), "--list", store=store)
        assert plan.code == 0 and "loopback-hourly" in plan.stdout
        assert "last never" not in plan.stdout and "now (due)" not in plan.stdout
        second = run_cli("watch", "--schedule", str(sched), "--once", "-q", "--alerts",
                         str(rules), store=store, env=ENV)
        assert second.code == 0 and "scanning" not in second.stderr
        # (and says so, with when it runs next: it printed nothing)
        assert "portwatch: watch: nothing due; next run: loopback-hourly " in second.stderr


def test_a_run_whose_engine_cannot_scan_is_recorded_failed_and_the_next_still_runs(
        tmp_path: Path) -> None:
    # Given two entries and an engine that refuses loopback before sending anything
    # (masscan: an EngineUnavailable, not a PortwatchError)
    store = f"chdb://{tmp_path / 'store'}"
    sched = tmp_path / "schedules.yaml"
    sched.write_text("".join(f"{'schedules:' if n == 'a' else ''}\n  - name: {n}\n"
                             "    targets: [127.0.0.1]\n    ports: \"9\"\n    udp: none\n"
                             "    cron: '0 0 1 1 *'" for n in ("a", "b")) + "\n")
    env = {"PORTWATCH_ENGINE": "masscan", "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8,::1/128"}
    # When watch --once runs them
    result = run_cli("watch", "--schedule", str(sched), "--once", "-q", store=store, env=env)
    # Then each run failed in one line, both were tried, and the run exits 1 with one
    # line, as for any failed scheduled scan
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if ": scan failed: " in line]
    assert failed == [f"portwatch: watch: {n}: scan failed: masscan cannot scan loopback "
                      "(127.0.0.1)" for n in ("a", "b")]
    assert result.stderr.splitlines()[-1] == \
        "portwatch: error: watch: a scheduled scan failed (see above)"
    # And both failed runs are in the ledger: not due again, and the plan says they
    # failed (they read as any other run: a review)
    plan = run_cli("watch", "--schedule", str(sched), "--list", store=store, env=env)
    assert plan.code == 0 and "now (due)" not in plan.stdout and "last never" not in plan.stdout
    lines = plan.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith(" UTC (failed)") for line in lines), lines


def test_watch_list_checks_the_targets_and_makes_no_store(tmp_path: Path) -> None:
    # Given a schedule whose target is not an address, and no store yet
    sched = tmp_path / "schedules.yaml"
    sched.write_text('schedules:\n  - name: bad\n    targets: [256.1.1.1]\n'
                     '    cron: "0 * * * *"\n')
    store = tmp_path / "store"
    # When its plan is listed / Then refused at the entry's line, as --once would be
    result = run_cli("watch", "--schedule", str(sched), "--list", store=f"chdb://{store}")
    assert_refused(result, f"{sched}:2: schedule 'bad': not an address, CIDR block")
    # And a good plan with no store lists every entry as due, and makes no store
    good = schedules(tmp_path, 22)
    listed = run_cli("watch", "--schedule", str(good), "--list", store=f"chdb://{store}")
    assert listed.code == 0, listed.stderr
    assert "loopback-hourly" in listed.stdout and "now (due)" in listed.stdout
    assert not store.exists()
    # and says there is no store there yet (a mistyped --store read as "never ran")
    assert listed.stderr.strip() == (
        f"portwatch: no store at {store} yet: nothing has run, every entry is due (the "
        "first run makes it; a typo in --store?)")
    both = run_cli("watch", "--schedule", str(good), "--list", "--once",
                   store=f"chdb://{store}")
    assert_refused(both, "give --once (run what is due) or --list (show the plan), not both")


VICTIM = """
import asyncio, sys, time
from datetime import UTC, datetime
from portwatch.alerts import AlertDispatcher, load_alerts
from portwatch.alerts.scanning import ScanOutcome
from portwatch.alerts.schedule import load_schedules
from portwatch.alerts.watch import Watcher
from schemas.records import ChangeEvent, ChangeKind, Severity, Target
from stream_processors.store import Store

store = Store.from_url(sys.argv[1])
config = load_alerts(sys.argv[2])
entries = load_schedules(sys.argv[3])

class Stats:
    scan_id = "victim-scan"
    interrupted = False

async def scan(entry):
    t = Target(ip="127.0.0.1", target="127.0.0.1", organization="Example Corp")
    events = [ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.HIGH, target=t,
                          scan_id="victim-scan", port=p, risk_color="red", service="redis")
              for p in (6379, 6380)]
    return ScanOutcome(Stats(), events)

dispatcher = AlertDispatcher(store, config)
watcher = Watcher(store, entries, scan, dispatcher, say=lambda line: None)
asyncio.run(watcher.run_once())
print("queued", dispatcher.queued_count(), flush=True)
time.sleep(120)  # the digest window (5 m) is still open: killed before delivering
"""


def test_sigkill_between_event_and_delivery_then_restart_delivers_exactly_once(
        tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with webhook_receiver(SECRET.encode()) as receiver:
        sched = schedules(tmp_path, 9)
        rules = alerts(tmp_path, receiver.url, digest="5m")
        # Given a watcher process that queued two alerts and waits for its digest window
        victim = subprocess.Popen(
            [sys.executable, "-c", VICTIM, store, str(rules), str(sched)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **ENV})
        try:
            assert victim.stdout is not None
            line = victim.stdout.readline()
            assert line.strip() == "queued 2", (line, victim.stderr.read() if
                                                victim.poll() is not None else "")
        finally:
            # When it is killed with SIGKILL before delivering
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
            victim.stdout.close()  # type: ignore[union-attr]
            victim.stderr.close()  # type: ignore[union-attr]
        assert receiver.accepted == []
        log = run_cli("alerts", "log", store=store)
        assert log.stdout.count("queued: not sent yet") == 2, log.stdout
        # And watch restarts (--once: nothing is due, it delivers what is queued)
        restarted = run_cli("watch", "--schedule", str(sched), "--once", "-q", "--alerts",
                            str(rules), store=store, env=ENV)
        assert restarted.code == 0, restarted.stderr
        # Then each alert arrived exactly once, in one message
        assert sorted(e["port"] for e in receiver.events()) == [6379, 6380]
        assert len(receiver.accepted) == 1
        # And another run sends nothing more; the log says sent
        again = run_cli("alerts", "deliver", "--alerts", str(rules), store=store, env=ENV)
        assert again.code == 0 and "nothing queued" in again.stderr
        assert len(receiver.accepted) == 1 and receiver.rejected == []
        log = run_cli("alerts", "log", "--format", "json", store=store)
        assert [(r["state"], r["attempts"]) for r in json.loads(log.stdout)] == [
            ("sent", 1), ("sent", 1)]
        # its times as every --format json writes them (they were "+00:00" here alone)
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", r[key])
                   for r in json.loads(log.stdout)
                   for key in ("created_at", "next_attempt_at", "sent_at"))
        assert log.stderr == ""
        # and a --limit that leaves deliveries out says so (it cut them without a word)
        one = run_cli("alerts", "log", "--limit", "1", store=store)
        assert one.code == 0 and one.stdout.count("sent") == 1, one.stdout
        assert one.stderr.strip() == (
            "portwatch: the newest 1 deliveries shown; more are stored (--limit)")


QUEUER = VICTIM.replace('time.sleep(120)  # the digest window (5 m) is still open: killed '
                        'before delivering', 'store.close()')


def queue_two(tmp_path: Path, store: str, rules: Path) -> None:
    """Two alerts of ``rules`` queued in ``store`` (QUEUER, as a scan queues them)."""
    queued = subprocess.run([sys.executable, "-c", QUEUER, store, str(rules),
                             str(schedules(tmp_path, 9))], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, **ENV}, timeout=120)
    assert queued.stdout.strip() == "queued 2", queued.stderr


def queue_two_and_schedule(tmp_path: Path, store: str, rules: Path, port: int,
                           cron: str) -> Path:
    """Two alerts queued by an earlier run (built here: no change detection yet), and a
    schedule of one entry scanning ``port`` on 127.0.0.1."""
    queue_two(tmp_path, store, rules)
    sched = tmp_path / "scan.yaml"
    sched.write_text(f"schedules:\n  - name: now\n    targets: [127.0.0.1]\n"
                     f"    ports: \"{port}\"\n    udp: none\n    cron: '{cron}'\n")
    return sched


def test_receiver_down_does_not_affect_the_scan_and_delivery_follows(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as listener, \
            webhook_receiver(SECRET.encode()) as receiver:
        receiver.stop()  # the receiver is down
        rules = alerts(tmp_path, receiver.url)
        rules.write_text(rules.read_text().replace("wait: 10s", "wait: 2s"))
        # Given two alerts queued by an earlier run
        sched = queue_two_and_schedule(tmp_path, store, rules, listener.port, "@hourly")
        # When watch --once runs a due scan while the receiver is down
        down = run_cli("watch", "--schedule", str(sched), "--once", "-q", "--alerts",
                       str(rules), store=store, env=ENV)
        # Then the scan completes and stores its finding; the alerts stay queued, said so
        assert down.code == 0, down.stderr
        assert "now: scan" in down.stderr and "completed" in down.stderr
        assert "2 not delivered yet: kept in the store" in down.stderr
        listed = run_cli("report", "list", "--format", "json", store=store)
        assert [row["port"] for row in json.loads(listed.stdout)] == [listener.port]
        log = run_cli("alerts", "log", store=store)
        assert log.stdout.count("failed (cannot reach") == 2, log.stdout
        # When the receiver is back and the next run goes
        receiver.start()
        up = run_cli("watch", "--schedule", str(sched), "--once", "-q", "--alerts", str(rules),
                     store=store, env=ENV)
        # Then both alerts arrive, once
        assert up.code == 0, up.stderr
        assert sorted(e["port"] for e in receiver.events()) == [6379, 6380]
        assert receiver.rejected == []


@pytest.mark.parametrize("once", [True, False], ids=["once", "forever"])
def test_ctrl_c_ends_the_last_delivery_and_keeps_what_is_left(tmp_path: Path,
                                                             once: bool) -> None:
    import time

    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as listener, \
            webhook_receiver(SECRET.encode()) as receiver:
        receiver.stop()  # the receiver is down: the last delivery would wait its 5 minutes
        rules = alerts(tmp_path, receiver.url)
        rules.write_text(rules.read_text().replace("{retry_base: 1s, wait: 10s}",
                                                   "{retry_base: 5s, wait: 5m}"))
        sched = queue_two_and_schedule(tmp_path, store, rules, listener.port, "@yearly")
        proc = subprocess.Popen(
            [sys.executable, "-m", "portwatch", "watch", "--schedule", str(sched), "-q",
             "--alerts", str(rules), *(["--once"] if once else [])], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **ENV, "PORTWATCH_STORE": store})
        assert proc.stderr is not None
        try:
            for _ in range(50):  # bounded: the lines of one scan
                line = proc.stderr.readline()
                if not line or ("scan " in line and "completed" in line):
                    break
            if not once:  # Given a running watch stopped by a first Ctrl-C, delivering
                time.sleep(1)
                proc.send_signal(signal.SIGINT)
            time.sleep(2)  # (the --once run is in its last delivery by now)
            # When Ctrl-C arrives during the last delivery, which waits on a dead receiver
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=60)  # not the 5 minutes of its wait
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # Then it ends with 130, says what stays queued, no traceback
    assert proc.returncode == 130, rest
    assert "not delivered yet: kept in the store" in rest, rest
    assert "Traceback" not in rest and "aborted" not in rest
    log = run_cli("alerts", "log", store=store)
    assert log.stdout.count("pending") + log.stdout.count("failed (cannot reach") >= 2, \
        log.stdout


def test_a_quiet_watcher_says_what_a_ctrl_c_during_a_scan_does(tmp_path: Path) -> None:
    import time

    # Given a quiet watcher scanning a port that never speaks (identification takes its
    # banner wait and probes: seconds)
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.silent()) as listener:
        proc = subprocess.Popen(
            [sys.executable, "-m", "portwatch", "watch", "--schedule",
             str(schedules(tmp_path, listener.port)), "-q", "--once"], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **ENV, "PORTWATCH_STORE": store})
        assert proc.stderr is not None
        try:
            for _ in range(20):  # bounded: the lines before its scan starts
                line = proc.stderr.readline()
                if not line or "scanning" in line:
                    break
            time.sleep(1.5)  # (in the scan by now)
            # When a Ctrl-C comes during the scan
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    # Then it says what the Ctrl-C does, as a scan would, though quiet (before: nothing
    # until the scan's identification ended, and a second Ctrl-C pressed meanwhile stored
    # the ports unidentified: a third review)
    assert "stopping: no new ports are scanned" in rest, rest
    assert proc.returncode == 130, rest


def test_alerts_deliver_exits_1_when_a_receiver_is_down(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with webhook_receiver(SECRET.encode()) as receiver:
        receiver.stop()  # the receiver is down
        rules = alerts(tmp_path, receiver.url)
        # Given two alerts queued for it
        queue_two(tmp_path, store, rules)
        # When a delivery run retries them for 3 s
        down = run_cli("alerts", "deliver", "--alerts", str(rules), "--wait", "3s",
                       store=store, env=ENV)
    # Then it says what is left and why, and exits 1 (a cron job sees it)
    assert down.code == 1, down.stderr
    assert "2 not delivered yet: kept in the store" in down.stderr
    reached = [line for line in down.stderr.splitlines()
               if f"cannot reach http://127.0.0.1:{receiver.port}/…" in line]
    assert len(reached) == 1, down.stderr  # each retry's same failure said once, counted
    assert reached[0].endswith(")") and " (x" in reached[0]
    assert "WARNING" not in down.stderr
    assert down.stderr.rstrip().endswith("some alerts were not delivered (above)")


def test_alerts_deliver_before_a_failed_deliverys_retry_exits_1(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with webhook_receiver(SECRET.encode()) as receiver:
        receiver.stop()  # the receiver is down
        # (retries a minute apart: the second run below comes before the next one)
        rules = alerts(tmp_path, receiver.url, retry_base="60s")
        # Given two alerts queued for it, and a delivery run whose sends failed
        queue_two(tmp_path, store, rules)
        first = run_cli("alerts", "deliver", "--alerts", str(rules), "--wait", "0",
                        store=store, env=ENV)
        assert first.code == 1, first.stderr
        # When another run comes before their retry is due (nothing is tried)
        early = run_cli("alerts", "deliver", "--alerts", str(rules), "--wait", "0",
                        store=store, env=ENV)
    # Then it exits 1 too, saying what is left (it exited 0, as if delivered: a review)
    assert early.code == 1, early.stderr
    assert "2 not delivered yet: kept in the store" in early.stderr
    assert "cannot reach" not in early.stderr  # (nothing was sent this time)


DAMAGE_OUTBOX = """
import sys
from stream_processors.store import Store
store = Store.from_url(sys.argv[1])
store.command("RENAME TABLE alert_outbox TO alert_outbox_real")
store.command("CREATE VIEW alert_outbox AS SELECT * FROM alert_outbox_real "
              "WHERE throwIf(1, 'outbox damaged') = 0")
store.close()
"""


def test_alerts_deliver_exits_1_when_the_outbox_cannot_be_read(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    rules = alerts(tmp_path, "http://127.0.0.1:9/hook")
    # Given two alerts queued, then an outbox every read of which fails in the engine
    # (a real DB::Exception; a damaged part or a server going away read alike)
    for script, args in ((QUEUER, (store, str(rules), str(schedules(tmp_path, 9)))),
                         (DAMAGE_OUTBOX, (store,))):
        done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, **ENV},
                              timeout=120)
        assert done.returncode == 0, done.stderr
    # When a delivery run starts
    result = run_cli("alerts", "deliver", "--alerts", str(rules), "--wait", "0",
                     store=store, env=ENV)
    # Then it says why in one line each, once, and exits 1 (it exited 0: nothing was
    # failed or retrying, only errors)
    assert result.code == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if "delivery pass failed" in line]
    assert len(failed) == 1 and "outbox damaged" in failed[0]
    assert "Traceback" not in result.stderr and "nothing queued" not in result.stderr
    assert result.stderr.rstrip().endswith("some alerts were not delivered (above)")


def test_alerts_test_reports_each_channel(tmp_path: Path) -> None:
    with webhook_receiver(SECRET.encode()) as receiver:
        rules = alerts(tmp_path, receiver.url)
        ok = run_cli("alerts", "test", "--alerts", str(rules), env=ENV)
        assert ok.code == 0, ok.stderr
        assert ok.stdout.startswith("hook: ok")
        assert [d.payload["test"] for d in receiver.accepted] == [True]
        assert SECRET not in ok.stdout + ok.stderr
        # And a second test is a new message, not a replay the receiver drops (every test
        # carried the same delivery id: a receiver that refuses replays refused them all)
        again = run_cli("alerts", "test", "--alerts", str(rules), env=ENV)
        assert again.code == 0 and again.stdout.startswith("hook: ok"), again.stdout
        ids = [d.headers["x-portwatch-delivery"] for d in receiver.accepted]
        assert len(ids) == 2 and ids[0] != ids[1]
    down = run_cli("alerts", "test", "--alerts", str(rules), env=ENV)
    assert down.code == 1
    assert "hook: FAILED: cannot reach" in down.stdout


def test_alerts_test_needs_channels_only(tmp_path: Path) -> None:
    # Given a file of channels alone (a team checks its webhook before writing rules)
    with webhook_receiver(SECRET.encode()) as receiver:
        only = tmp_path / "channels.yaml"
        only.write_text(textwrap.dedent(f"""\
            channels:
              hook: {{webhook: "{receiver.url}", secret_env: HOOK_SECRET}}
            """))
        # When it is tested, then the channel is (it said "no rules: section")
        ok = run_cli("alerts", "test", "--alerts", str(only), env=ENV)
        assert ok.code == 0, ok.stderr
        assert ok.stdout.startswith("hook: ok")
        assert [d.payload["test"] for d in receiver.accepted] == [True]
    # but a file the watcher reads still needs its rules
    watch = run_cli("alerts", "deliver", "--alerts", str(only), "--wait", "0",
                    store=f"chdb://{tmp_path / 'store'}", env=ENV)
    assert watch.code == 2 and "no rules: section" in watch.stderr, watch.stderr


def test_alerts_test_never_prints_an_apprise_urls_path(tmp_path: Path) -> None:
    # Given an apprise json:// channel whose path holds its token
    rules = tmp_path / "alerts.yaml"
    with webhook_receiver(b"unused", signed=False) as receiver:
        rules.write_text(f'channels:\n  chat: {{apprise: "json://127.0.0.1:{receiver.port}'
                         '/hooks/T00/B00/${CHAT_TOKEN}"}\nrules:\n  - name: r\n'
                         '    notify: [chat]\n')
        env = {"CHAT_TOKEN": "SUPERSECRET123"}
        ok = run_cli("alerts", "test", "--alerts", str(rules), env=env)
        assert len(receiver.accepted) == 1
    down = run_cli("alerts", "test", "--alerts", str(rules), env=env)
    # Then `alerts test` shows scheme://host:port/… whether it worked or not
    assert (ok.code, ok.stdout) == (0, f"chat: ok (json://127.0.0.1:{receiver.port}/…)\n")
    assert down.code == 1
    assert down.stdout.startswith(f"chat: FAILED: json://127.0.0.1:{receiver.port}/…: ")
    for result in (ok, down):
        assert "SUPERSECRET123" not in result.stdout + result.stderr
        assert "/hooks" not in result.stdout + result.stderr


def _scanned_store(tmp_path: Path) -> str:
    """A store with one bounded scan of 127.0.0.1 in it: accept takes an existing store."""
    store = f"chdb://{tmp_path / 'store'}"
    scanned = run_cli("scan", "127.0.0.1", "--ports", "1", "--udp", "none", "-q", store=store)
    assert scanned.code == 0, scanned.stderr
    return store


def test_accept_list_and_remove(tmp_path: Path) -> None:
    store = _scanned_store(tmp_path)
    env = {"USER": "carol"}
    added = run_cli("accept", "127.0.0.1:6379/tcp", "--note", "cache, firewalled",
                    "--until", "2099-01-31", store=store, env=env)
    assert added.code == 0, added.stderr
    assert "accepted 127.0.0.1:6379/tcp by carol until 2099-02-01 00:00 UTC" in added.stdout
    listed = run_cli("accept", "--list", store=store)
    assert "127.0.0.1:6379/tcp: cache, firewalled — by carol" in listed.stdout
    assert "until 2099-02-01" in listed.stdout
    removed = run_cli("accept", "--remove", "127.0.0.1:6379/tcp", store=store)
    assert removed.code == 0 and "withdrawn" in removed.stdout
    assert "no accepted risks" in run_cli("accept", "--list", store=store).stdout


def test_accept_warns_when_no_stored_port_matches(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1\r\n")) as ssh:
        scanned = run_cli("scan", "127.0.0.1", "--ports", str(ssh.port), "--udp", "none", "-q",
                          store=store)
        assert scanned.code == 0, scanned.stderr
    # When the port found, the whole host, a typo'd host and a port never seen are accepted
    found = run_cli("accept", f"127.0.0.1:{ssh.port}/tcp", "--note", "n", store=store)
    host = run_cli("accept", "127.0.0.1", "--note", "n", store=store)
    typo = run_cli("accept", "127.0.0.11", "--note", "n", store=store)
    unseen = run_cli("accept", "127.0.0.1:1/udp", "--note", "n", store=store)
    # Then each is recorded, and those that match nothing stored say so (before: a typo
    # was accepted in silence, and the real finding went on alerting)
    assert [r.code for r in (found, host, typo, unseen)] == [0, 0, 0, 0]
    assert "warning" not in found.stderr + host.stderr
    assert ("warning: no port stored matches 127.0.0.11 yet (a typo?); the acceptance "
            "applies once a scan finds one") in typo.stderr
    assert "no port stored matches 127.0.0.1:1/udp yet" in unseen.stderr


@pytest.mark.parametrize("args", [["alerts", "log"], ["accept", "--list"],
                                  ["accept", "--remove", "127.0.0.1:6379/tcp"],
                                  ["accept", "127.0.0.1:6379/tcp", "--note", "cache"]])
def test_reading_commands_refuse_a_store_that_does_not_exist(tmp_path: Path,
                                                             args: list[str]) -> None:
    # Given a mistyped store path inside an existing directory of the user's
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli(*args, store=f"chdb://{tmp_path}")
    # Then refused in one line, and no store files are written beside the user's
    assert_refused(result, f"no store at {tmp_path}: scan something first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_alerts_deliver_refuses_a_store_that_does_not_exist(tmp_path: Path) -> None:
    # Given a mistyped store path (the queue it means is elsewhere)
    rules = alerts(tmp_path, "http://127.0.0.1:9/hook")
    result = run_cli("alerts", "deliver", "--alerts", str(rules), env=ENV,
                     store=f"chdb://{tmp_path / 'typo'}")
    # Then refused in one line (it said "nothing queued" over a new empty store)
    assert_refused(result, f"no store at {tmp_path / 'typo'}: scan something first")
    assert not (tmp_path / "typo").exists()


def test_accept_list_prints_a_hostile_note_on_one_line(tmp_path: Path) -> None:
    store = _scanned_store(tmp_path)
    added = run_cli("accept", "127.0.0.1:6379/tcp", "--note", "line one\nline two \x1b[31mred",
                    "--by", "eve\r\x1b]0;pwned\x07", store=store)
    assert added.code == 0, added.stderr
    # (the confirmation line too: a raw OSC would retitle the terminal)
    assert added.stdout == "accepted 127.0.0.1:6379/tcp by eve\\x0d\\x1b]0;pwned\\x07\n"
    listed = run_cli("accept", "--list", store=store)
    assert listed.code == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"127\.0\.0\.1:6379/tcp: line one\\x0aline two \\x1b\[31mred — by "
                        r"eve\\x0d\\x1b\]0;pwned\\x07 on \d{4}-\d\d-\d\d, until no expiry",
                        lines[0]), lines[0]
    assert "\x1b" not in listed.stdout


def test_accept_list_with_remove_is_refused(tmp_path: Path) -> None:
    result = run_cli("accept", "--list", "--remove", "127.0.0.1:6379/tcp",
                     store=f"chdb://{tmp_path / 'store'}")
    assert_refused(result, "accept --list takes no TARGET and no --remove")


@pytest.mark.parametrize(("args", "words"), [
    (["127.0.0.1:6379/tcp", "--note", "x", "--until", "2001-01-01"], "is in the past"),
    (["127.0.0.1:99999", "--note", "x"], "port out of range"),
    (["127.0.0.1:6379"], "accept needs --note"),
    (["127.0.0.1", "--note", "x", "--until", "someday"], "bad --until 'someday'"),
    (["256.0.0.1:22/tcp", "--note", "x"], "not an address or a hostname"),
])
def test_bad_accept_input(tmp_path: Path, args: list[str], words: str) -> None:
    store = tmp_path / "store"
    result = run_cli("accept", *args, store=f"chdb://{store}")
    assert_refused(result, words)
    assert not store.exists()



def test_entries_labelling_one_address_differently_are_said(tmp_path: Path) -> None:
    # Given two entries scanning 127.0.0.1 as the same target, under two organizations
    sched = tmp_path / "schedules.yaml"
    sched.write_text(
        "schedules:\n"
        "  - {name: web, targets: [127.0.0.1], organization: Org A, cron: \"@yearly\"}\n"
        "  - {name: db, targets: [127.0.0.1], organization: Org B, asset: lo, "
        "cron: \"@yearly\"}\n"
        "  - {name: other, targets: [127.0.0.2], organization: Org A, cron: \"@yearly\"}\n")
    # When the plan is read
    result = run_cli("watch", "--schedule", str(sched), "--list",
                     store=f"chdb://{tmp_path / 'store'}", env=ENV)
    # Then one warning names the address and both labellings (each run relabels it)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning: " in line]
    assert warnings == [
        "portwatch: warning: schedule entries label 127.0.0.1 differently (web: organization "
        "'Org A', asset '(none)'; db: organization 'Org B', asset 'lo'): each run relabels "
        "it, so the reports and organization rules follow the entry that ran last"]


def test_an_entry_of_more_than_a_16_says_its_own_key_and_runs_with_it(tmp_path: Path) -> None:
    # Given an entry of a /15 (loopback; only planned here, never scanned)
    sched = tmp_path / "schedules.yaml"
    entry = "schedules:\n  - name: wide\n    targets: [127.0.0.0/15]\n    cron: \"@yearly\"\n"
    sched.write_text(entry)
    store = f"chdb://{tmp_path / 'store'}"
    # When its plan is asked for, it is refused naming the entry's key (it named
    # --allow-large, a flag watch does not have)
    refused = run_cli("watch", "--schedule", str(sched), "--list", store=store, env=ENV)
    assert refused.code == 2
    assert "set allow_large: true on the entry" in refused.stderr, refused.stderr
    assert "--allow-large" not in refused.stderr
    # And with the key, the entry is planned
    sched.write_text(entry + "    allow_large: true\n")
    planned = run_cli("watch", "--schedule", str(sched), "--list", store=store, env=ENV)
    assert planned.code == 0, planned.stderr
    assert "wide" in planned.stdout


@pytest.mark.parametrize(("stop_signal", "with_alerts"), [
    (signal.SIGINT, False), (signal.SIGTERM, True)], ids=["ctrl-c", "sigterm-delivering"])
def test_ctrl_c_stops_a_running_watch_and_keeps_its_runs(
        tmp_path: Path, stop_signal: signal.Signals, with_alerts: bool) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as listener, \
            webhook_receiver(SECRET.encode()) as receiver:
        # Yearly: with an hourly entry, a run at 08:59:5x was due again at 09:00 when the
        # plan below was read (a CI failure), though the run was kept
        sched = schedules(tmp_path, listener.port, cron="0 0 1 1 *")
        # With --alerts, its background delivery runs too: it stops with the watcher
        extra = ["--alerts", str(alerts(tmp_path, receiver.url))] if with_alerts else []
        # Given watch running: it scanned its due entry and now waits for the next slot;
        # when Ctrl-C (or SIGTERM) arrives while it waits
        code, rest = signalled_after_its_first_scan(sched, store, stop_signal, extra)
        # Then Ctrl-C stops it with 130 and one line; SIGTERM (a service manager's stop,
        # nothing cut short) with 0 (130 before: systemd read a failed unit); no
        # traceback, and its run is kept
        if stop_signal is signal.SIGINT:
            assert code == 130, rest
            assert "watch interrupted" in rest
        else:
            assert code == 0, rest
            assert "watch: stopped (SIGTERM)" in rest and "interrupted" not in rest
        assert "Traceback" not in rest
        plan = run_cli("watch", "--schedule", str(sched), "--list", store=store)
        assert "last never" not in plan.stdout and "now (due)" not in plan.stdout


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_right_after_a_once_runs_scan_keeps_that_run(
        tmp_path: Path, stop_signal: signal.Signals) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as listener:
        # Given an entry due now, run by `watch --once` (a CronJob)
        sched = schedules(tmp_path, listener.port, cron="0 0 1 1 *")
        # When the signal comes as soon as its scan says it completed (no scan runs then:
        # the runner's own handlers are gone)
        code, rest = signalled_after_its_first_scan(sched, store, stop_signal, ["--once"])
    # Then it stops in words, as the long-running watch does between scans: Ctrl-C 130,
    # SIGTERM 0 (SIGTERM killed it silently, -15, and Ctrl-C printed "aborted", both
    # before the run was recorded: a review)
    if stop_signal is signal.SIGINT:
        assert code == 130, (code, rest)
        assert "watch interrupted" in rest
    else:
        assert code == 0, (code, rest)
        assert "watch: stopped (SIGTERM)" in rest
    assert "Traceback" not in rest and "aborted" not in rest
    # And its run is kept: the next start does not run it again
    plan = run_cli("watch", "--schedule", str(sched), "--list", store=store)
    assert "last never" not in plan.stdout and "now (due)" not in plan.stdout, plan.stdout


def test_scan_alerts_deliver_what_a_real_rescan_changed(tmp_path: Path) -> None:
    # Given a rule for ports opened or closed, a real signed-webhook receiver, and a host
    # with one listener (its own loopback address: other tests may sweep 127.0.0.1)
    store = f"chdb://{tmp_path / 'store'}"
    rules = tmp_path / "alerts.yaml"
    with webhook_receiver(SECRET.encode()) as receiver:
        rules.write_text(textwrap.dedent(f"""\
            channels:
              hook: {{webhook: "{receiver.url}", secret_env: HOOK_SECRET}}
            rules:
              - name: opened-or-closed
                when: {{kinds: [opened, closed]}}
                notify: [hook]
                digest: 0
            delivery: {{retry_base: 1s, wait: 10s}}
            """))
        host = "127.0.0.66"
        with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
                             (host,)) as listener:
            port = listener.port
            # When the host is scanned with --alerts
            first = run_cli("scan", host, "--ports", str(port), "--udp", "none", "-q",
                            "--alerts", str(rules), store=store, env=ENV)
            assert first.code == 0, first.stderr
        # And scanned again once the listener is gone (the re-probe is refused: closed)
        second = run_cli("scan", host, "--ports", str(port), "--udp", "none", "-q",
                         "--alerts", str(rules), store=store, env=ENV)
        assert second.code == 0, second.stderr
    # Then the receiver got, signed and once each, the port opened and then closed
    events = [(e["kind"], e["port"], e["target"]["ip"])
              for d in receiver.accepted for e in d.payload["events"]]
    assert events == [("opened", port, host), ("closed", port, host)]
    assert receiver.rejected == []


def test_a_running_watch_reads_its_inventory_again_at_each_run(tmp_path: Path) -> None:
    # Given a watch whose every-minute entry scans the targets of an inventory file
    store = f"chdb://{tmp_path / 'store'}"
    inventory = tmp_path / "assets.yaml"
    inventory.write_text("Example Corp:\n  - 127.0.0.1\n")
    sched = tmp_path / "schedules.yaml"
    sched.write_text(textwrap.dedent(f"""\
        schedules:
          - name: every-minute
            inventory: {inventory}
            ports: "22"
            udp: none
            cron: "* * * * *"
        """))
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwatch", "watch", "--schedule", str(sched), "-q"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PORTWATCH_STORE": store, "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"})
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        runs = 0
        for _ in range(200):  # bounded: two runs' lines and a status line or two
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "scan " in line and "completed" in line:
                runs += 1
                if runs == 1:
                    # When the inventory is edited while the watcher waits
                    inventory.write_text("Example Corp:\n  - 127.0.0.2\n")
                else:
                    break
        assert runs == 2, seen
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Then the next run scanned what the file says now, without a restart
    rows = query_store(store, "SELECT scan_id, ip FROM host_scans FINAL GROUP BY scan_id, ip "
                              "ORDER BY min(finished_at)")
    assert [ip for _, ip in rows] == ["127.0.0.1", "127.0.0.2"], rows


def test_a_running_watch_with_serve_answers_reports_and_the_web(tmp_path: Path) -> None:
    import json
    import urllib.request

    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as listener:
        sched = schedules(tmp_path, listener.port, cron="0 0 1 1 *")
        port = loopback.free_port()
        # Given a running watch serving its reports (it holds the embedded store for as
        # long as it runs: every report was refused "in use": a review, 2026-12-06)
        # (behind a reverse proxy named reports.example.test, as `serve --allowed-host`)
        proc = subprocess.Popen(
            [sys.executable, "-m", "portwatch", "watch", "--schedule", str(sched), "-q",
             "--serve", str(port), "--allowed-host", "reports.example.test"], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PORTWATCH_STORE": store})
        try:
            seen = until_first_scan(proc)
            assert any(f"serving the reports on http://127.0.0.1:{port}/" in line
                       for line in seen), seen
            # When `portwatch report` reads that store, and the web page is asked, through
            # the proxy's name (before: 421, watch had no --allowed-host: a review)
            listed = run_cli("report", "list", "--format", "json", store=store)
            asked = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/list",
                                           headers={"Host": "reports.example.test"})
            with urllib.request.urlopen(asked, timeout=30) as answer:
                api = json.loads(answer.read())
        finally:
            proc.send_signal(signal.SIGTERM)
            _, rest = proc.communicate(timeout=60)
    # Then both answer with the port the watcher found, through the watcher
    assert listed.code == 0, listed.stderr
    assert "held by `portwatch watch --serve`" in listed.stderr
    assert [r["port"] for r in json.loads(listed.stdout)] == [listener.port]
    assert [r["port"] for r in api["rows"]] == [listener.port]
    # and the watcher stops as usual (SIGTERM while it waits: a clean stop), its advert
    # gone with it
    assert proc.returncode == 0, rest
    assert not (tmp_path / "store" / ".portwatch-serve.json").exists()


def test_watch_serve_is_refused_with_once(tmp_path: Path) -> None:
    sched = schedules(tmp_path, 22)
    result = run_cli("watch", "--schedule", str(sched), "--once", "--serve", "8765",
                     store=f"chdb://{tmp_path / 'store'}")
    assert_refused(result, "--serve is for a running watch")


def test_watch_serve_refuses_a_trusted_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    sched = schedules(tmp_path, 22)
    result = run_cli("watch", "--schedule", str(sched), "--serve", "8765",
                     "--trusted-proxy", "proxy.example.test",
                     store=f"chdb://{tmp_path / 'store'}")
    assert_refused(result, "--trusted-proxy 'proxy.example.test' is not an IP address")
    # And without --serve they are not read: a bad environment value does not stop
    # --list (a review: it exited 2)
    listed = run_cli("watch", "--schedule", str(sched), "--list",
                     store=f"chdb://{tmp_path / 'store'}",
                     env={"PORTWATCH_WEB_TRUSTED_PROXIES": "proxy.example.test"})
    assert listed.code == 0, listed.stderr


def test_a_rule_naming_an_organization_no_target_has_is_warned_about(tmp_path: Path) -> None:
    # Given a schedule for Example Corp and rules naming it, once misspelt
    sched = tmp_path / "schedules.yaml"
    sched.write_text("schedules:\n  - name: a\n    targets: [127.0.0.1]\n"
                     "    organization: Example Corp\n    ports: \"9\"\n    udp: none\n"
                     "    cron: '0 0 1 1 *'\n")
    rules = tmp_path / "alerts.yaml"
    rules.write_text(textwrap.dedent("""\
        channels:
          hook: {webhook: "http://127.0.0.1:9/", secret_env: HOOK_SECRET}
        rules:
          - name: right
            when: {organizations: [example corp]}
            notify: [hook]
          - name: typo
            when: {organizations: [Exmaple Corp, EXAMPLE CORP]}
            notify: [hook]
        """))
    # When watch --once runs (before: nothing said the second rule could never match)
    result = run_cli("watch", "--schedule", str(sched), "--once", "-q", "--alerts",
                     str(rules), store=f"chdb://{tmp_path / 'store'}", env=ENV)
    # Then the misspelt organization alone is warned about, once, and the run goes on
    assert result.code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning: alert rule" in line]
    assert warned == ["portwatch: warning: alert rule 'typo' names organization "
                      "'exmaple corp', which no target of this run and no host in the "
                      "store has: it matches nothing until one does (organizations "
                      "known: 'Example Corp')"]


def test_an_organization_only_the_store_knows_is_not_warned_about(tmp_path: Path) -> None:
    # Given a store whose host was scanned for Acme, and rules naming acme and acme2
    store = f"chdb://{tmp_path / 'store'}"
    first = run_cli("scan", "127.0.0.1", "--ports", "9", "-q", "--org", "Acme",
                    store=store)
    assert first.code == 0, first.stderr
    rules = tmp_path / "alerts.yaml"
    rules.write_text("channels:\n  hook: {webhook: \"http://127.0.0.1:9/\", "
                     "secret_env: HOOK_SECRET}\nrules:\n  - name: r\n"
                     "    when: {organizations: [acme, acme2]}\n    notify: [hook]\n")
    # When a scan of no organization runs with those rules
    second = run_cli("scan", "127.0.0.1", "--ports", "9", "-q", "--alerts", str(rules),
                     store=store, env=ENV)
    # Then only the organization neither the run nor the store has is warned about
    assert second.code == 0, second.stderr
    warned = [line for line in second.stderr.splitlines() if "warning: alert rule" in line]
    assert len(warned) == 1 and "'acme2'" in warned[0] and "known: 'Acme')" in warned[0]
