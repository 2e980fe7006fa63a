"""alerts.yaml and schedules.yaml: valid files parse as written; every bad file is one
FILE:LINE line naming the fault; hostile text never escapes as anything but that error."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portwatch.alerts.accepted import AcceptError, parse_target_port
from portwatch.alerts.config import (
    AlertConfigError,
    AppriseChannel,
    WebhookChannel,
    load_alerts,
    mask_urls,
    parse_duration,
)
from portwatch.alerts.schedule import ScheduleError, load_schedules
from schemas.bounded import TIME_MAX
from schemas.records import ChangeKind, Severity

ISSUE_EXAMPLE = """\
channels:
  soc-hook: {webhook: "https://soc.example/hooks/portwatch", secret_env: PORTWATCH_HOOK_SECRET}
  soc-mail: {apprise: "mailtos://user:pass@smtp.example?to=soc@example.org"}
rules:
  - name: risky-opened
    when: {kinds: [opened, reopened, risk_raised], colors: [red], organizations: [Example Corp]}
    notify: [soc-hook, soc-mail]
    digest: 5m          # 0 = deliver each event at once
"""

ENV = {"PORTWATCH_HOOK_SECRET": "hunter2-secret"}


def write(tmp_path: Path, text: str, name: str = "alerts.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_issue_example_parses_as_written(tmp_path: Path) -> None:
    config = load_alerts(write(tmp_path, ISSUE_EXAMPLE), env=ENV)
    hook, mail = config.channels["soc-hook"], config.channels["soc-mail"]
    assert isinstance(hook, WebhookChannel) and hook.secret == b"hunter2-secret"
    assert isinstance(mail, AppriseChannel) and mail.url.startswith("mailtos://user:pass@")
    [rule] = config.rules
    assert rule.name == "risky-opened" and rule.notify == ("soc-hook", "soc-mail")
    assert rule.digest_seconds == 300
    assert rule.match.kinds == {ChangeKind.OPENED, ChangeKind.REOPENED, ChangeKind.RISK_RAISED}
    assert rule.match.colors == {"red"} and rule.match.organizations == {"example corp"}
    # secrets and credentials never show in a repr (logs, tracebacks)
    assert "hunter2" not in repr(config) and "pass@" not in repr(config)
    assert "pass" not in mail.display


def test_rule_port_ranges_may_have_spaces_around_the_dash(tmp_path: Path) -> None:
    text = ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
            "    when: {ports: [\"8000 - 8100\", \" 22 \"]}\n    notify: [a]\n")
    rule = load_alerts(write(tmp_path, text), env={}).rules[0]
    assert [(s.first, s.last) for s in rule.match.ports] == [(8000, 8100), (22, 22)]


def test_all_criteria_and_delivery_options(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("from-a-file\n")
    text = """\
channels:
  hook: {webhook: "http://127.0.0.1:9999/h", secret_file: hook.secret, timeout: 3s}
  ntfy: {apprise: "ntfy://127.0.0.1/${TOPIC}"}
rules:
  - name: rare-prod
    when:
      kinds: opened
      severity: ">= medium"
      targets: [10.0.0.0/8, db.example.org, "::1"]
      ports: ["22", "8000-8100, 9200"]
      protos: [TCP]
      prevalence: [rare, less_common]
    notify: hook
  - name: all-critical
    when: {severity: [critical, high]}
    notify: [ntfy, hook]
    digest: 0
delivery: {retry_base: 2s, retry_max: 1m, max_attempts: 3, wait: 10s, claim_lease: 1m}
"""
    config = load_alerts(write(tmp_path, text), env={"TOPIC": "soc"})
    hook = config.channels["hook"]
    assert isinstance(hook, WebhookChannel) and hook.secret == b"from-a-file"
    assert hook.timeout == 3
    assert config.channels["ntfy"].url == "ntfy://127.0.0.1/soc"  # type: ignore[union-attr]
    rare, critical = config.rules
    assert rare.match.severity_min is Severity.MEDIUM
    assert rare.match.target_names == {"db.example.org", "::1"}
    assert [str(n) for n in rare.match.target_networks] == ["10.0.0.0/8"]
    assert [(s.first, s.last) for s in rare.match.ports] == [(22, 22), (8000, 8100),
                                                             (9200, 9200)]
    assert rare.match.protos == {"tcp"}
    assert rare.match.prevalence == {"rare", "less common"}
    assert rare.digest_seconds == 300
    assert critical.match.severities == {Severity.CRITICAL, Severity.HIGH}
    assert critical.digest_seconds == 0
    d = config.delivery
    assert (d.retry_base_seconds, d.retry_max_seconds, d.max_attempts, d.wait_seconds,
            d.claim_lease_seconds) == (2, 60, 3, 10, 60)


BAD_FILES = [
    # (file text, line, words the message must contain)
    ("channels: {}\nrules: []\n", 1, "at least one channel"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {kinds: [opend]}\n    notify: [a]\n", 5, "unknown value 'opend'"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [b]\n", 5, "unknown channel 'b'"),
    ("channels:\n  a: {apprise: \"nosuchscheme://x/y\"}\nrules:\n  - name: r\n"
     "    notify: [a]\n", 2, "unknown apprise scheme 'nosuchscheme://'"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1:1/x\", secret_env: NOT_SET_HERE}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "NOT_SET_HERE is not set"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1:1/x\"}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "exactly one of secret_env"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\n    digest: soon\n", 6, "bad duration 'soon'"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\n    colour: [red]\n", 6, "unknown key 'colour'"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {severity: urgent}\n    notify: [a]\n", 5, "unknown severity"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {targets: [10.0.0.0/33]}\n    notify: [a]\n", 5, "bad CIDR"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"\nrules: []\n", 3, "invalid YAML"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/${NOPE_VAR}\"}\nrules:\n  - name: r\n"
     "    notify: [a]\n", 2, "NOPE_VAR is not set"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\n  - name: r\n    notify: [a]\n", 6, "used twice"),
    # found by the alert-delivery audit of 2026-12-04
    ("channels:\n  a: {webhook: \"http://u:pw@127.0.0.1:9/x\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "must not carry user:password@"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1:99999/x\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "port that is not a number"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1/a b\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "a blank or a control character"),
    ("channels:\n  a: {webhook: \"http://[zz]/x\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "is not a valid URL"),
    # found by the review of 2026-12-05: loaded, then every send failed
    ("channels:\n  a: {webhook: \"http://127.0.0.1:9/hooks/caf\u00e9\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "not ASCII: percent-encode it"),
    ("channels:\n  a: {webhook: \"http://b\u00fccher.example/x\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "xn-- form"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1:1/x\", secret_file: \"~nosuchuser9/k\"}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "no such user's home directory"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1:1/x\", secret_file: \"a\\0b\"}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "secret_file has a NUL character"),
    ("channels:\n  a: {webhook: \"http://[::1/hook\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "is not a valid URL"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: []\n", 5, "notify: names no channel"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1/h?t=${NOPE_VAR}\", secret_env: S}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "NOPE_VAR is not set"),
    ("channels:\n  a: {webhook: \"http://127.0.0.1/x\", secret_env: S, timeout: 0}\n"
     "rules:\n  - name: r\n    notify: [a]\n", 2, "timeout: must be above 0"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {kinds: []}\n    notify: [a]\n", 5, "an empty list; leave the key out"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {targets: []}\n    notify: [a]\n", 5, "an empty list; leave the key out"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {ports: []}\n    notify: [a]\n", 5, "an empty list; leave the key out"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\ndelivery: {max_attempts: \u00b2}\n", 6, "a number from 1 to 10000"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\ndelivery: {max_attempts: " + "9" * 5000 + "}\n", 6,
     "a number from 1 to 10000"),
    ("[" * 5000, 1, "nested too deeply"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\ndelivery: {send_timeout: 0}\n", 6, "delivery send_timeout: must be "
     "above 0"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\ndelivery: {claim_lease: 0s}\n", 6, "claim_lease: must be above 0"),
    # a send past its claim lease is taken over and sent again: refused, not cut
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\", timeout: 10m}\nrules:\n"
     "  - name: r\n    notify: [a]\n", 2, "channel 'a' timeout (600 s) must be below "
     "delivery claim_lease (300 s)"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\", timeout: 30s}\nrules:\n"
     "  - name: r\n    notify: [a]\ndelivery: {claim_lease: 20s}\n", 2,
     "channel 'a' timeout (30 s) must be below delivery claim_lease (20 s)"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\ndelivery: {send_timeout: 5m}\n", 6, "delivery send_timeout (300 s) "
     "must be below delivery claim_lease (300 s)"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    notify: [a]\ndelivery:\n  retry_base: 1h\n  retry_max: 1s\n", 8,
     "delivery retry_max (1 s) is below retry_base (3600 s)"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {ports: [\"1_000\"]}\n    notify: [a]\n", 5, "bad port '1_000'"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {ports: [\"\u0663\"]}\n    notify: [a]\n", 5, "bad port"),
    # a backwards range is named as such, not as out of 0-65535
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {ports: [\"5-1\"]}\n    notify: [a]\n", 5,
     "rule 'r': bad port range '5-1': the first port is above the last"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {ports: [\"1-70000\"]}\n    notify: [a]\n", 5, "port '1-70000' out of 0-65535"),
    # an empty entry is refused, not read as a target named 'null' or '~'
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {targets: [10.0.0.1, null]}\n    notify: [a]\n", 5,
     "rule 'r' targets: an empty entry (null); remove it or give a value"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when:\n      targets:\n        - 10.0.0.1\n        - ~\n    notify: [a]\n", 8,
     "rule 'r' targets: an empty entry (~)"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when:\n      targets:\n        -\n    notify: [a]\n", 7,
     "rule 'r' targets: an empty entry (nothing)"),
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {organizations: [null]}\n    notify: [a]\n", 5,
     "rule 'r' organizations: an empty entry (null)"),
    # a target no event can carry matched nothing, without a word (a review, 2026-12-06)
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
     "    when: {targets: [\"10.0.0.5:8080\"]}\n    notify: [a]\n", 5,
     "rule 'r': '10.0.0.5:8080' is not an address, CIDR block, hostname or asset name"),
    # a channel's name is printed by `alerts test`, `alerts log` and the scan's end: its
    # control characters reached the terminal raw (a review)
    ("channels:\n  \"evil\\e]0;PWNED\\a\": {apprise: \"json://127.0.0.1/x\"}\nrules:\n"
     "  - name: r\n    notify: [a]\n", 2,
     "channel name 'evil\\x1b]0;PWNED\\x07': use letters, digits, - _ . : (at most 100)"),
    # an alias of a long list repeated: minutes and gigabytes to read (a review)
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n"
     "  - {name: r0, notify: [a], when: {ports: &p [" + ", ".join(["1"] * 5000) + "]}}\n"
     + "".join(f"  - {{name: r{i}, notify: [a], when: {{ports: *p}}}}\n"
               for i in range(1, 60)), 4,
     "the file holds more than 200,000 values once its YAML aliases are expanded"),
    # and an alias inside itself (a list that holds itself) ends too
    ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules: &r [*r]\n", 3,
     "once its YAML aliases are expanded"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_FILES)
def test_bad_alert_files_are_one_line_naming_file_and_line(tmp_path: Path, text: str,
                                                           line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AlertConfigError) as caught:
        load_alerts(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert "\n" not in message


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(AlertConfigError, match=r"nope\.yaml: cannot read"):
        load_alerts(tmp_path / "nope.yaml")


def test_missing_secret_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "channels:\n  a: {webhook: \"http://127.0.0.1:1/x\", "
                           "secret_file: absent.key}\nrules:\n  - name: r\n    notify: [a]\n")
    with pytest.raises(AlertConfigError, match=r":2: .*cannot read secret file"):
        load_alerts(path, env={})


def _secret_config(tmp_path: Path, secret: str) -> Path:
    return write(tmp_path, f"channels:\n  a: {{webhook: \"http://127.0.0.1:1/x\", "
                           f"secret_file: {secret}}}\nrules:\n  - name: r\n    notify: [a]\n")


def test_an_endless_or_blocking_secret_file_is_refused_without_reading_it(
        tmp_path: Path) -> None:
    import os

    # /dev/zero was read whole before it was cut (a MemoryError traceback); a FIFO with
    # no writer would hang the open
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    for secret in ("/dev/zero", str(fifo)):
        with pytest.raises(AlertConfigError, match=r":2: .*is not a regular file$"):
            load_alerts(_secret_config(tmp_path, secret), env={})
    # a file longer than any secret is refused, not cut
    (tmp_path / "big.key").write_bytes(b"k" * 5000)
    with pytest.raises(AlertConfigError, match=r"longer than 4096 bytes"):
        load_alerts(_secret_config(tmp_path, "big.key"), env={})
    (tmp_path / "ok.key").write_bytes(b"  s3cret\n")
    config = load_alerts(_secret_config(tmp_path, "ok.key"), env={})
    assert [c.secret for c in config.channels.values()] == [b"s3cret"]


def test_rule_targets_written_as_ipv4_mapped_addresses_match_the_ipv4_events(
        tmp_path: Path) -> None:
    from portwatch.alerts.rules import matches
    from schemas.records import ChangeEvent, Proto, Target

    path = write(tmp_path, "channels:\n  a: {webhook: \"http://127.0.0.1:1/x\", "
                           "secret_env: S}\nrules:\n  - name: r\n    notify: [a]\n"
                           "    when: {targets: ['::ffff:10.1.2.3', '::ffff:10.9.0.0/112']}\n")
    (rule,) = load_alerts(path, env={"S": "x"}).rules

    def at(ip: str) -> ChangeEvent:
        return ChangeEvent(kind=ChangeKind.OPENED, severity=Severity.HIGH,
                           target=Target(ip=ip, target=ip), scan_id="s", port=22,
                           proto=Proto.TCP)

    # events carry the canonical address (scan targets fold ::ffff:a.b.c.d to a.b.c.d)
    assert [matches(rule.match, at(ip), "") for ip in ("10.1.2.3", "10.9.7.7", "10.1.2.4")] \
        == [True, True, False]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_a_config_or_one_line_error(tmp_path_factory: pytest.TempPathFactory,
                                                text: str) -> None:
    path = tmp_path_factory.mktemp("hostile") / "alerts.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_alerts(path, env={})
    except AlertConfigError as exc:
        assert "\n" not in str(exc)


@given(st.text(max_size=30))
def test_durations_parse_or_raise_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 <= seconds <= 30 * 86400


def test_duration_units() -> None:
    assert [parse_duration(t) for t in ("0", "30s", "5m", "1h", "250ms", "1.5m", "1d")] == \
        [0, 30, 300, 3600, 0.25, 90, 86400]


# -- accept's TARGET[:PORT/PROTO] ---------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1", ("127.0.0.1", "tcp", 0)),
    ("127.0.0.1:6379", ("127.0.0.1", "tcp", 6379)),
    ("127.0.0.1:161/UDP", ("127.0.0.1", "udp", 161)),
    ("::1", ("::1", "tcp", 0)),
    ("[::1]:443/tcp", ("::1", "tcp", 443)),
    ("DB.Example.org:5432", ("db.example.org", "tcp", 5432)),
    # as the events carry it: an IPv4-mapped address is the IPv4 it reaches
    ("::ffff:127.0.0.1", ("127.0.0.1", "tcp", 0)),
    ("[::ffff:7f00:1]:6379/tcp", ("127.0.0.1", "tcp", 6379)),
])
def test_accept_target_forms(text: str, expected: tuple[str, str, int]) -> None:
    assert parse_target_port(text) == expected


@pytest.mark.parametrize("text", ["", "127.0.0.1:0", "127.0.0.1:70000", "h:80/icmp",
                                  "[nothex]:80", "a b", "::1:80/tcp/x", "256.0.0.1:22/tcp",
                                  "10.0.0:22", "-bad.example", "a..b:80", "x" * 5000,
                                  " " * 100_000 + "h:99999", "fe80::1%eth0",
                                  # digits of other scripts are no port (a review)
                                  "127.0.0.1:\u0662\u0660\u0662\u0668\u0661/tcp",
                                  "127.0.0.1:\uff12\uff12/tcp"])
def test_bad_accept_targets(text: str) -> None:
    with pytest.raises(AcceptError) as caught:
        parse_target_port(text)
    assert len(str(caught.value)) < 200  # never the whole hostile text echoed back


@pytest.mark.parametrize(("text", "expected"), [
    ("2027-01-31", datetime(2027, 2, 1, tzinfo=UTC)),
    # the same day in ISO's basic form: through it too (it ended at its start, a day
    # early, and today's date was "in the past": a review)
    ("20270131", datetime(2027, 2, 1, tzinfo=UTC)),
    ("20261201", datetime(2026, 12, 2, tzinfo=UTC)),
    ("2027-01-31T08:00", datetime(2027, 1, 31, 8, tzinfo=UTC)),
    ("2299-12-30", datetime(2299, 12, 31, tzinfo=UTC)),  # the column's range ends in 2299
    ("2299-12-31T23:59:59", datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)),
])
def test_accept_until_forms(text: str, expected: datetime) -> None:
    from portwatch.alerts.accepted import parse_until

    assert parse_until(text, datetime(2026, 12, 1, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["2027-W05", "2027-W05-7", "2027w05", "2027-W05T00:00",
                                  "2027-W05-1T10:00+02:00"])
def test_an_until_of_a_week_is_refused(text: str) -> None:
    """A week was read as its Monday's midnight: no one day (a review)."""
    from portwatch.alerts.accepted import parse_until

    with pytest.raises(AcceptError) as caught:
        parse_until(text, datetime(2026, 12, 1, tzinfo=UTC))
    assert str(caught.value) == (f"bad --until {text!r}: use a date like 2027-01-31 or an "
                                 "ISO date-time")


@pytest.mark.parametrize("text", ["2299-12-31", "9999-12-31", "9999-12-31T00:00+00:00",
                                  "2300-01-01T00:00:00"])
def test_an_until_past_the_stores_range_is_refused_not_clamped(text: str) -> None:
    """It was stored as 2299-12-31 without a word (a review)."""
    from portwatch.alerts.accepted import parse_until

    with pytest.raises(AcceptError) as caught:
        parse_until(text, datetime(2026, 12, 1, tzinfo=UTC))
    assert str(caught.value) == (
        f"--until {text!r} is later than the store keeps (up to 2299-12-31 23:59:59 UTC); "
        "leave --until out to accept for good")


@given(st.text(max_size=40))
def test_accept_until_only_raises_accept_error(text: str) -> None:
    from portwatch.alerts.accepted import parse_until

    try:
        moment = parse_until(text, datetime(2026, 12, 1, tzinfo=UTC))
    except AcceptError as exc:
        assert "\n" not in str(exc)
    else:
        assert datetime(2026, 12, 1, tzinfo=UTC) < moment <= TIME_MAX


@given(st.text(max_size=60))
def test_accept_target_parser_only_raises_accept_error(text: str) -> None:
    try:
        target, proto, port = parse_target_port(text)
    except AcceptError:
        return
    assert proto in ("tcp", "udp") and 0 <= port <= 65535 and target


# -- schedules.yaml -------------------------------------------------------------------------


def test_schedules_parse(tmp_path: Path) -> None:
    (tmp_path / "assets.yaml").write_text("Example Corp: [127.0.0.1]\n")
    path = write(tmp_path, """\
schedules:
  - name: hourly-top
    targets: [127.0.0.1, 127.0.0.2]
    ports: top1000
    udp: none
    cron: "0 * * * *"
  - name: nightly-full
    inventory: assets.yaml
    organization: Example Corp
    ports: 1-65535
    udp: top1000
    cron: "30 2 * * *"
""", "schedules.yaml")
    hourly, nightly = load_schedules(path)
    assert (hourly.name, hourly.targets, hourly.ports, hourly.udp, hourly.cron) == (
        "hourly-top", ("127.0.0.1", "127.0.0.2"), "top1000", "none", "0 * * * *")
    assert nightly.inventory == str(tmp_path / "assets.yaml")
    assert nightly.organization == "Example Corp" and nightly.line == 7
    assert (hourly.allow_large, nightly.allow_large) == (False, False)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"61 * * * *\"\n", 4,
     "bad cron expression '61 * * * *'"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: every hour\n", 4,
     "bad cron expression"),
    ("schedules:\n  - name: a\n    cron: \"0 * * * *\"\n", 2, "give targets: or inventory:"),
    ("schedules:\n  - name: Bad_Name\n    targets: [x]\n    cron: \"0 * * * *\"\n", 2,
     "schedule name 'Bad_Name'"),
    ("schedules:\n  - name: a\n    targets: [x]\n    ports: 1-99999\n    cron: \"@daily\"\n", 4,
     "bad ports"),
    # topN counts nmap's most often open ports: 1 to 65,535, as --udp topN takes it
    ("schedules:\n  - name: a\n    targets: [x]\n    ports: top99999\n    cron: \"@daily\"\n",
     4, "bad ports 'top99999' (topN needs 1 <= N <= 65,535)"),
    ("schedules:\n  - name: a\n    targets: [x]\n    ports: top0\n    cron: \"@daily\"\n",
     4, "bad ports 'top0' (topN needs 1 <= N <= 65,535)"),
    ("schedules:\n  - name: a\n    targets: [x]\n    udp: top70000\n    cron: \"@daily\"\n",
     4, "bad udp 'top70000' (topN needs 1 <= N <= 65,535)"),
    ("schedules:\n  - name: a\n    targets: [x]\n    cron: \"@daily\"\n    every: 1h\n", 5,
     "unknown key 'every'"),
    ("schedules:\n  - name: a\n    inventory: missing.csv\n    cron: \"@daily\"\n", 3,
     "inventory 'missing.csv' not found"),
    # an asset labels the entry's targets: with an inventory alone it did nothing
    ("schedules:\n  - name: a\n    inventory: schedules.yaml\n    asset: web\n"
     "    cron: \"@daily\"\n", 4, "schedule 'a': asset labels the entry's targets"),
    ("schedules: [\n", 2, "invalid YAML"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 0 31 2 *\"\n", 4,
     "bad cron expression '0 0 31 2 *' (five fields: minute hour day month weekday, or "
     "@daily..., one that comes at least once in 5 years)"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 0 * * * *\"\n", 4,
     "bad cron expression '0 0 * * * *'"),
    # croniter's extensions: R is drawn again at every check; Kubernetes refuses them all
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"R * * * *\"\n", 4,
     "schedule 'a': cron 'R * * * *': 'R' is not standard cron (R, L, W, # and ? are "
     "refused"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 0 L * *\"\n", 4,
     "'L' is not standard cron"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 0 * * 5#3\"\n", 4,
     "'5#3' is not standard cron"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 0 ? * 1\"\n", 4,
     "'?' is not standard cron"),
    # a backwards range: croniter wraps it around, Kubernetes refuses it (review 12-05)
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"50-10 * * * *\"\n", 4,
     "range 50-10 runs backwards (Kubernetes cron refuses it"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 22-2/2 * * *\"\n",
     4, "range 22-2 runs backwards"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"0 0 * * sat-mon\"\n",
     4, "range sat-mon runs backwards"),
    # a key given twice is refused, not silently replaced by the last one
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"@daily\"\n"
     "schedules:\n  - name: b\n    targets: [127.0.0.1]\n    cron: \"@daily\"\n", 5,
     "the file: 'schedules' given twice"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"@daily\"\n"
     "    cron: \"0 0 1 1 *\"\n", 5, "schedule entry: 'cron' given twice"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"@daily\"\n"
     "    targets: [127.0.0.2]\n", 5, "schedule entry: 'targets' given twice"),
    # an empty list is a list: it has no entries
    ("schedules: []\n", 1, "schedules: no entries (a list of entries with name, cron and "
     "targets or inventory)"),
    ("schedules: {name: a}\n", 1, "schedules must be a list of entries"),
    # the same bound on aliases as the alerts file's
    ("schedules:\n  - {name: a, cron: \"@daily\", targets: &t ["
     + ", ".join(["127.0.0.1"] * 5000) + "]}\n"
     + "".join(f"  - {{name: a{i}, cron: \"@daily\", targets: *t}}\n" for i in range(60)), 2,
     "the file holds more than 200,000 values once its YAML aliases are expanded"),
    ("schedules:\n  - name: a\n    targets: [127.0.0.1]\n    cron: \"@daily\"\n"
     "    allow_large: maybe\n", 5, "schedule 'a': allow_large is true or false, not 'maybe'"),
])
def test_bad_schedule_files(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text, "schedules.yaml")
    with pytest.raises(ScheduleError) as caught:
        load_schedules(path)
    assert str(caught.value).startswith(f"{path}:{line}: "), str(caught.value)
    assert words in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_schedule_text_is_entries_or_one_line_error(
        tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("hostile") / "schedules.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        entries = load_schedules(path)
    except ScheduleError as exc:
        assert "\n" not in str(exc)
        return
    assert entries and all(e.name and e.cron for e in entries)


@given(st.text(max_size=20), st.text(max_size=80), st.binary(max_size=200))
@example("\u00b2", "", b"")  # '²'.isdigit() is True, int('²') raises: found by this test
@example("\u0661\u0662", "", b"")  # Arabic-Indic digits
def test_signature_check_never_raises_on_hostile_headers(timestamp: str, signature: str,
                                                         body: bytes) -> None:
    from portwatch.alerts.channels import sign, verify

    assert verify(b"k", timestamp, signature, body, now=1_000_000) in (True, False)
    assert verify(b"k", "1000000", sign(b"k", 1_000_000, body), body, now=1_000_000)


def test_webhook_urls_take_env_references_and_display_no_token(tmp_path: Path) -> None:
    path = write(tmp_path, "channels:\n  a: {webhook: \"https://127.0.0.1:8443/h/${TOKEN}"
                           "?t=${TOKEN}\", secret_env: S}\n  b: {webhook: "
                           "\"http://127.0.0.1\", secret_env: S}\n"
                           "rules:\n  - name: r\n    notify: [a, b]\n")
    config = load_alerts(path, env={"S": "signing", "TOKEN": "SECRETTOKEN"})
    hook, bare = config.channels["a"], config.channels["b"]
    assert hook.url == "https://127.0.0.1:8443/h/SECRETTOKEN?t=SECRETTOKEN"
    assert hook.display == "https://127.0.0.1:8443/…"
    assert "SECRETTOKEN" not in repr(hook)
    assert bare.display == "http://127.0.0.1"


def test_apprise_urls_display_no_path_or_query(tmp_path: Path) -> None:
    # apprise's own privacy form keeps the path of json://, xml://, form:// and ntfy://
    # URLs: their token; shown as a webhook is
    path = write(tmp_path, "channels:\n"
                           "  j: {apprise: \"json://127.0.0.1:9/hooks/T00/B00/${TOKEN}\"}\n"
                           "  x: {apprise: \"xml://127.0.0.1/a/${TOKEN}?k=${TOKEN}\"}\n"
                           "  f: {apprise: \"form://[::1]:8080/${TOKEN}\"}\n"
                           "  n: {apprise: \"ntfy://127.0.0.1:9/${TOKEN}\"}\n"
                           "rules:\n  - name: r\n    notify: [j, x, f, n]\n")
    config = load_alerts(path, env={"TOKEN": "SUPERSECRET123"})
    assert {name: c.display for name, c in config.channels.items()} == {
        "j": "json://127.0.0.1:9/…", "x": "xml://127.0.0.1/…", "f": "form://[::1]:8080/…",
        "n": "ntfy://127.0.0.1:9/…"}


def test_any_url_in_an_error_is_cut_to_its_host() -> None:
    text = ("json://127.0.0.1:9/hooks/SECRET1?x=1: failed; see xml://u:p@127.0.0.1/SECRET2 "
            "(and 'ntfy://127.0.0.1/SECRET3')")
    assert mask_urls(text) == ("json://127.0.0.1:9/…: failed; see xml://127.0.0.1/… "
                               "(and 'ntfy://127.0.0.1/…')")


@given(st.text(max_size=80))
@example("9" * 5000).via("more digits than a header should hold")
@example("Wed, 21 Oct 2015 07:28:00 GMT").via("an HTTP date in the past")
@example("Fri, 31 Dec 9999 23:59:59 GMT").via("the far future")
def test_retry_after_of_any_text_is_a_bounded_wait(text: str) -> None:
    from portwatch.alerts.channels import RETRY_AFTER_CAP, retry_after_seconds

    assert 0 <= retry_after_seconds(text, 1_796_000_000.0) <= RETRY_AFTER_CAP


def test_retry_after_values() -> None:
    from email.utils import format_datetime

    from portwatch.alerts.channels import retry_after_seconds

    now = 1_796_000_000.0
    later = format_datetime(datetime.fromtimestamp(now + 90, UTC), usegmt=True)
    assert [retry_after_seconds(v, now) for v in ("120", " 7 ", "", None, "-5", "1.5",
                                                   "999999999", later)] == \
        [120, 7, 0, 0, 0, 0, 86_400, 90]


def test_old_log_rows_never_show_a_urls_path_or_query() -> None:
    from portwatch.alerts.log import EPOCH, LogRow

    row = LogRow("r", "hook", "e1", "opened", "pending", 1,
                 "HTTP 500 from https://127.0.0.1:8443/hooks/T0/SECRET?token=SECRET2 (x); "
                 "cannot reach http://[::1]:9/a?b=SECRET3", EPOCH, EPOCH, None)
    assert row.shown_error == ("HTTP 500 from https://127.0.0.1:8443/… (x); "
                               "cannot reach http://[::1]:9/…")
    assert "SECRET" not in row.line() and "SECRET" not in str(row.as_dict())


def test_a_duration_may_have_a_space_before_its_unit() -> None:
    assert [parse_duration(t) for t in ("5 m", "1 h", " 30 s ")] == [300, 3600, 30]


def test_accept_until_with_an_offset_is_kept_in_utc() -> None:
    from portwatch.alerts.accepted import parse_until

    # `accept` printed the offset's wall time labelled UTC ("2027-01-01 00:00 UTC")
    moment = parse_until("2027-01-01T00:00:00+05:00", datetime(2026, 12, 1, tzinfo=UTC))
    assert moment.isoformat() == "2026-12-31T19:00:00+00:00"


@pytest.mark.timeout(30)  # the old open() of a FIFO with no writer never returned
@pytest.mark.parametrize("load", [lambda p: load_alerts(p, env={}), load_schedules])
def test_a_fifo_with_no_writer_is_refused_not_waited_on(tmp_path: Path, load: object,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    import os

    from producers import textfiles

    monkeypatch.setattr(textfiles, "PIPE_WAIT_SECONDS", 0.5)
    fifo = tmp_path / "alerts.yaml"
    os.mkfifo(fifo)
    with pytest.raises((AlertConfigError, ScheduleError),
                       match="a pipe that did not end within 0.5 s"):
        load(fifo)  # type: ignore[operator]


def test_a_pipe_with_a_writer_is_read(tmp_path: Path) -> None:
    import os
    import threading

    # `watch --schedule <(envsubst < schedules.yaml)`: the pipe is read to its end
    read_end, write_end = os.pipe()
    text = (b"schedules:\n  - name: lo\n    targets: [127.0.0.1]\n    ports: '22'\n"
            b"    udp: none\n    cron: '0 * * * *'\n")

    def write() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(text)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        (entry,) = load_schedules(f"/proc/self/fd/{read_end}")
    finally:
        writer.join()
        os.close(read_end)
    assert entry.name == "lo"


def test_a_bracketed_ipv6_rule_target_matches_its_address(tmp_path: Path) -> None:
    # "[::1]", as accept and scan take it, matched no event on ::1 (a review, 2026-12-06)
    text = ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
            "    when: {targets: [\"[::1]\"]}\n    notify: [a]\n")
    rule = load_alerts(write(tmp_path, text), env={}).rules[0]
    assert rule.match.target_names == frozenset({"::1"})


def test_an_asset_name_is_a_rule_target(tmp_path: Path) -> None:
    # rules match a target's asset too: "Payroll DB" was refused by the check above
    text = ("channels:\n  a: {apprise: \"json://127.0.0.1/x\"}\nrules:\n  - name: r\n"
            "    when: {targets: [\"Payroll DB\", \"web-01 (prod)\"]}\n    notify: [a]\n")
    rule = load_alerts(write(tmp_path, text), env={}).rules[0]
    assert rule.match.target_names == frozenset({"payroll db", "web-01 (prod)"})
