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
