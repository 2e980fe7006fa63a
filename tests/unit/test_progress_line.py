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
