"""The plain progress line of `portwatch scan` (what CI logs and pipes see)."""

from __future__ import annotations

import time

import pytest

from portwatch.scan_cli import ProgressView
from stream_processors.transports.embedded import ScanStats


def test_the_first_line_says_the_eta_is_unknown_then_a_real_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    stats = ScanStats("s", hosts=1, planned_probes=1000)
    view = ProgressView(enabled=True)
    view.is_live = False  # the plain line, as on a pipe
    # Given a scan that has probed nothing yet, then the first line does not promise 0 s
    view.update(stats)
    assert "ETA unknown" in capsys.readouterr().err
    # And once ports are probed at some rate, it says how long is left
    progress = stats.shard_started(1000)
    progress.probes_done = 500
    stats.started = time.monotonic() - 10  # 500 ports in 10 s: 50/s, 500 left
    view._last_line = 0.0
    view.update(stats)
    line = capsys.readouterr().err
    assert "500/1,000 ports (50%)" in line and "ETA 10s" in line


def test_the_live_bar_says_when_discovery_is_over_and_identification_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import re

    from rich.console import Console

    from portwatch import scan_cli

    screen = io.StringIO()
    monkeypatch.setattr(scan_cli, "err_console",
                        Console(file=screen, force_terminal=True, width=200))
    stats = ScanStats("s", hosts=1, planned_probes=1000)
    progress = stats.shard_started(1000)
    # Given every port probed, 10 found open, 3 of them identified so far
    progress.probes_done, progress.open_found = 1000, 10
    stats.examined = 3
    # When the live bar (a terminal) shows it
    with ProgressView(enabled=True) as view:
        assert view.is_live
        view.update(stats)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # colours off
    # Then it says identification is under way and how far (before: "scanning 100% ...
    # ETA 0:00:00" for as long as identification took)
    assert "identifying" in shown and "10 open, 3 examined" in shown
    assert "scanning" not in shown.split("identifying")[-1]


def test_a_stopped_scan_shows_no_rate_or_eta(capsys: pytest.CaptureFixture[str]) -> None:
    stats = ScanStats("s", hosts=1, planned_probes=65535)
    view = ProgressView(enabled=True)
    view.is_live = False
    progress = stats.shard_started(65535)
    progress.probes_done, progress.open_found = 8192, 1
    stats.started = time.monotonic() - 5
    # Given a scan asked to stop (Ctrl-C, SIGTERM) after 8,192 of its ports
    stats.stopping = True
    # When its progress is shown while it stops, then when it has finished
    view.update(stats)
    stats.finished = time.monotonic()
    view._last_line = 0.0
    view.update(stats)
    lines = capsys.readouterr().err.splitlines()
    # Then neither line shows a rate nor an ETA (they fell and grew while nothing was
    # being scanned any more: "559 ports/s, ETA 103s" ended a stopped scan; a review)
    assert lines == [
        "progress: stopping: 8,192/65,535 ports scanned (13%), 1 open, 0 examined",
        "progress: stopped: 8,192/65,535 ports scanned (13%), 1 open, 0 examined"]


@pytest.mark.parametrize(("width", "total", "done", "parts"), [
    (50, 65535, 65535, ("identifying", "100%", "65,535/65,535", "1234 open")),
    (80, 65535, 65535, ("identifying", "100%", "65,535/65,535 ports",
                        "1234 open, 1,000 examined")),
    # a /24's every port: ten-digit counts take the room of "examined" (they were cut
    # with an ellipsis at 80 columns: a review)
    (60, 16_776_960, 16_776_960, ("identifying", "100%", "16,776,960/16,776,960",
                                  "1234 open")),
    (80, 16_776_960, 8_000_000, ("scanning", "48%", "8,000,000/16,776,960 ports",
                                 "1234 open, 1,000 examined", "ETA")),
    (70, 16_776_960, 8_000_000, ("scanning", "48%", "8,000,000/16,776,960", "1234 open")),
    (200, 65535, 30000, ("scanning", "━", "46%", "30,000/65,535 ports",
                         "1234 open, 1,000 examined", "ports/s", "ETA")),
    # identifying: no rate falling, no "ETA 0:00:00" while it goes on (a review)
    (200, 65535, 65535, ("identifying", "100%", "65,535/65,535 ports",
                         "1234 open, 1,000 examined"))])
def test_the_live_bar_shows_whole_parts_at_any_width(
        monkeypatch: pytest.MonkeyPatch, width: int, total: int, done: int,
        parts: tuple[str, ...]) -> None:
    import io
    import re

    from rich.console import Console

    from portwatch import scan_cli

    screen = io.StringIO()
    monkeypatch.setattr(scan_cli, "err_console",
                        Console(file=screen, force_terminal=True, width=width))
    stats = ScanStats("s", hosts=1, planned_probes=total)
    progress = stats.shard_started(total)
    progress.probes_done, progress.open_found = done, 1234
    stats.examined = 1000
    stats.started = time.monotonic() - 10
    with ProgressView(enabled=True) as view:
        view.update(stats)
    line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).strip().splitlines()[-1]
    # Then what the width allows is there whole, in order, and nothing is cut (at 80
    # columns every part ended in an ellipsis: "identifyi… 10… 101/101 por…")
    assert "…" not in line and len(line) <= width
    assert re.search(".*".join(map(re.escape, parts)), line), line
    assert ("ports/s" in line) == ("ports/s" in parts)
    assert ("ETA" in line) == ("ETA" in parts)
    assert ("examined" in line) == any("examined" in p for p in parts)


@pytest.mark.parametrize("width", [46, 50, 64, 74, 120])
def test_a_stopped_scans_live_bar_has_no_eta_and_cuts_nothing(
        monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    import io
    import re

    from rich.console import Console

    from portwatch import scan_cli

    screen = io.StringIO()
    monkeypatch.setattr(scan_cli, "err_console",
                        Console(file=screen, force_terminal=True, width=width))
    stats = ScanStats("s", hosts=256, planned_probes=256_000)
    progress = stats.shard_started(256_000)
    progress.probes_done = 200_000
    stats.stopping = True  # Ctrl-C: discovery stops here
    with ProgressView(enabled=True) as view:
        view.update(stats)
    line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).strip().splitlines()[-1]
    # Then it says it is stopping and how far it got, with no time left and no rate
    # (an update without a total kept rich's, which printed an ETA cut to "0:00…": a
    # review), and nothing is cut
    assert line.startswith("stopping") and "78%" in line, line
    assert "ETA" not in line and "ports/s" not in line and "…" not in line
    assert "200,000/256,000" in line
    assert ("examined" in line) == (width >= 64)
