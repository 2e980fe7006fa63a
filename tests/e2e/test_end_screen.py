"""End to end: the Summary printed at the end of a scan shows that scan's hosts only,
riskiest first and in address order, at most 20 of them, through the real CLI on a real
chdb store after real scans of loopback listeners."""

from __future__ import annotations

from pathlib import Path

from tests import loopback
from tests.conftest import run_cli

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "4", "PORTWATCH_BANNER_WAIT": "1"}
MANY = [f"127.0.0.{n}" for n in range(2, 24)]  # 22 targets: past the end screen's 20


def _table_addresses(stdout: str) -> list[str]:
    """The address column of the printed Summary, top to bottom."""
    return [cells[2].strip() for line in stdout.splitlines()
            if (cells := line.split("│")) and len(cells) > 3 and cells[2].strip()
            .startswith("127.")]


def test_the_end_screen_is_this_scans_hosts(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    everywhere = loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1\r\n"),
                                 addresses=("127.0.0.1", *MANY))
    risky = loopback.listen(loopback.banner(b"-ERR unknown command 'x'\r\n"))
    with everywhere as ssh, risky as redis:
        # Given a store holding an earlier scan of 127.0.0.1 with two open ports
        first = run_cli("scan", "127.0.0.1", "--ports", f"{ssh.port},{redis.port}",
                        "--udp", "none", store=store, env=FAST)
        assert first.code == 0, first.stderr
        assert _table_addresses(first.stdout) == ["127.0.0.1"]
        # When 22 other hosts, each with one open port, are scanned into it
        many = run_cli("scan", *MANY, "--ports", str(ssh.port), "--udp", "none",
                       store=store, env=FAST)
    assert many.code == 0, many.stderr
    # Then its end screen is 20 of this scan's hosts (equal risk: in address order), and
    # never 127.0.0.1, riskier but of another scan
    assert "Summary (the 20 riskiest of this scan's 22 hosts" in many.stdout
    assert _table_addresses(many.stdout) == MANY[:20]
    # And a scan of a few hosts lists them all, under the plain title
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1\r\n"),
                         addresses=("127.0.0.2", "127.0.0.3")) as ssh:
        few = run_cli("scan", "127.0.0.3", "127.0.0.2", "--ports", str(ssh.port),
                      "--udp", "none", store=store, env=FAST)
    assert few.code == 0, few.stderr
    assert _table_addresses(few.stdout) == ["127.0.0.2", "127.0.0.3"]
    assert "riskiest" not in few.stdout


def _table_hosts(stdout: str) -> list[tuple[str, str]]:
    """The (target, address) columns of the printed Summary, top to bottom."""
    return [(cells[1].strip(), cells[2].strip()) for line in stdout.splitlines()
            if (cells := line.split("│")) and len(cells) > 3 and cells[2].strip()
            .startswith("127.")]


def test_the_end_screen_leaves_out_an_address_stored_under_another_target(
        tmp_path: Path) -> None:
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1\r\n"),
                         addresses=("127.0.0.91", "127.0.0.92")) as ssh:
        # Given a store holding 127.0.0.92 scanned under its own target and an asset name
        first = run_cli("scan", "-q", "--udp", "none", "--ports", str(ssh.port),
                        "--asset", "old-name", "127.0.0.92", store=store, env=FAST)
        assert first.code == 0, first.stderr
        # When a range holding that address is scanned into it
        second = run_cli("scan", "--udp", "none", "--ports", str(ssh.port),
                         "127.0.0.91-92", store=store, env=FAST)
    assert second.code == 0, second.stderr
    # Then its end screen is this scan's 2 hosts, both under the range's target, and not
    # the row of the earlier scan (same address, another target)
    assert "2 host(s)" in second.stdout
    assert _table_hosts(second.stdout) == [("127.0.0.91-92", "127.0.0.91"),
                                           ("127.0.0.91-92", "127.0.0.92")]
    assert "old-name" not in second.stdout
    # And the store still holds the earlier row: it was left out, not lost
    summary = run_cli("report", "summary", "--target", "127.0.0.92", "--format", "json",
                      store=store)
    assert summary.code == 0, summary.stderr
    assert '"old-name"' in summary.stdout


def test_a_note_holding_control_characters_reaches_the_terminal_escaped(
        tmp_path: Path) -> None:
    # Given an nmap data directory (holding none of nmap's files) whose name holds a
    # terminal title and clear-screen sequence: the scan's note names it (it reached the
    # terminal raw: a review)
    data = tmp_path / "nowhere\x1b]0;TITLE\x07\x1b[2J"
    data.mkdir()
    with loopback.udp_responder() as udp_port:
        result = run_cli("scan", "127.0.0.1", "--ports", "1", "--udp", str(udp_port),
                         store=f"chdb://{tmp_path / 'store'}",
                         env={"PORTWATCH_NMAP_DATA": str(data)})
    assert result.code == 0, result.stderr
    assert "note: " in result.stdout and "\\x1b]0;TITLE\\x07" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr


def test_a_host_answering_on_nearly_every_port_says_what_was_tried(tmp_path: Path) -> None:
    import contextlib
    import socket

    # Given 137 silent listeners filling a 140-port range of one address (no well-known
    # port among them; 3 refusals, under the 5 % that unflags a host): the tarpit rule
    # flags it
    host = "127.0.0.78"
    with contextlib.ExitStack() as stack:
        base = next(b for b in range(41000, 60000, 150)
                    if all(_bindable(host, b + i) for i in range(140)))
        for i in range(137):
            sock = stack.enter_context(socket.socket())
            sock.bind((host, base + i))
            sock.listen(8)
        result = run_cli("scan", host, "--ports", f"{base}-{base + 139}", "--udp", "none",
                         "--engine", "connect", "--no-tls", store=f"chdb://{tmp_path / 's'}",
                         env={"PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"}, timeout=300)
    # Then the end screen says only the well-known ports were tried (it said "only
    # identified services kept", as if these had been identified: a review)
    assert result.code == 0, result.stderr
    assert (f"note: {host} answers on (nearly) every port scanned; only its well-known "
            "ports were identified, and the services named there kept") in result.stdout


def _bindable(host: str, port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
