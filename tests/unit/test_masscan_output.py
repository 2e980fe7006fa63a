"""What a masscan process prints, read by ``MasscanRun``: garbled output is dropped line
by line, never fatal. The process here is a *fake* masscan (a shell script): a broken
masscan's output is a fault the real one cannot be made to produce on demand."""

from __future__ import annotations

import asyncio
from pathlib import Path

from probers.discovery.masscan_run import Discovery, MasscanRun
from schemas.records import Proto

BROKEN = r"""#!/bin/sh
printf 'Discovered open port 70000/tcp on 127.0.0.1\n'
head -c 100000 /dev/zero | tr '\0' 'x'; printf '\n'
printf 'Discovered open port 22/tcp on 127.0.0.1\n'
printf 'rate: 0.00-kpps, 400%% done, waiting 0-secs\r' >&2
printf 'Discovered open port 0/tcp on 127.0.0.1\n'
printf 'Discovered open port 443/tcp on 127.0.0.1\n'
"""


def test_a_broken_masscans_output_keeps_the_good_lines(tmp_path: Path) -> None:
    # Given a masscan printing a port above 65535, a 100 KB line, port 0 and a status of
    # 400 % (before: an IndexError failed the shard, the long line cancelled the run)
    script = tmp_path / "masscan"
    script.write_text(BROKEN)
    script.chmod(0o755)
    run = MasscanRun([str(script)], deadline=30, wait=1)

    async def read() -> list[Discovery]:
        return [d async for d in run.stream()]

    found = asyncio.run(read())
    # Then the two real lines are read, the rest dropped, and the run ended normally
    assert found == [Discovery("127.0.0.1", 22, Proto.TCP), Discovery("127.0.0.1", 443, Proto.TCP)]
    assert run.outcome.percent_done == 100.0
    assert run.outcome.returncode == 0 and run.outcome.is_complete


CHILD = r"""
import asyncio, sys
from probers.discovery.masscan_run import MasscanRun

async def main():
    run = MasscanRun(["sleep", "120"], deadline=120, wait=1)
    stream = run.stream().__aiter__()
    reading = asyncio.ensure_future(stream.__anext__())
    while run.pid is None:
        await asyncio.sleep(0.01)
    print(run.pid, flush=True)
    await reading

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped: only its exit status is left


def test_the_engine_dies_with_a_parent_killed_without_reaping_it() -> None:
    # Given a process running an engine that would go on for two minutes (a real
    # ``sleep`` in masscan's place: the guard is the same for any program)
    import os
    import signal
    import subprocess
    import sys
    import time

    with subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                          cwd=Path(__file__).resolve().parents[2]) as parent:
        try:
            assert parent.stdout is not None
            engine = int(parent.stdout.readline())
            assert _alive(engine)
            assert Path(f"/proc/{engine}/comm").read_text().strip() == "sleep"
            # When the parent is killed with no chance to clean up (before: the engine
            # went on, an orphan, until it ended by itself)
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(10)
            # Then the kernel kills the engine too
            for _ in range(100):
                if not _alive(engine):
                    break
                time.sleep(0.05)
            assert not _alive(engine)
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait(10)


def test_the_guard_leaves_a_missing_program_to_fail_as_before() -> None:
    from probers.discovery.masscan_run import SETPRIV, dies_with_us

    assert dies_with_us(["/nonexistent/masscan", "-p1"]) == ["/nonexistent/masscan", "-p1"]
    assert dies_with_us(["sleep", "1"]) == [SETPRIV, "--pdeathsig", "KILL", "--", "sleep", "1"]


STATUS_THEN_IDLE = r"""#!/bin/sh
printf 'Starting masscan 1.3.2\n' >&2
printf 'rate:  1.00-kpps, 10.00%% done,   0:00:09 remaining, found=0\r' >&2
sleep 0.2
printf 'rate:  1.00-kpps, 50.00%% done,   0:00:05 remaining, found=0\r' >&2
sleep 0.2
printf '[-] CONF: bad MAC address: router-mac = zz:zz\n' >&2
sleep 30
"""


def test_each_percent_done_is_told_and_a_deadline_says_what_masscan_said(
        tmp_path: Path) -> None:
    # Given a (fake) masscan that reports 10 %, then 50 %, then an error, then idles
    script = tmp_path / "masscan"
    script.write_text(STATUS_THEN_IDLE)
    script.chmod(0o755)
    told: list[float] = []
    run = MasscanRun([str(script)], deadline=1.5, wait=1, on_percent=told.append)

    async def read() -> list[Discovery]:
        return [d async for d in run.stream()]

    assert asyncio.run(read()) == []
    # Then each new percentage was told as it came (the scan's progress read 0 % for a
    # whole pass: a review), and the deadline's message carries masscan's own error
    # (only "did not finish within its deadline" was said, twice: a review)
    assert told == [10.0, 50.0]
    assert run.outcome.killed == "deadline"
    failure = run.outcome.failure()
    assert failure.startswith("masscan did not finish within its deadline (50.0% done")
    assert failure.endswith(": [-] CONF: bad MAC address: router-mac = zz:zz")
