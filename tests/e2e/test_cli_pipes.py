"""A reader that leaves early (``portwatch settings | head -1``) through the real
``portwatch`` command: exit 0 and nothing on stderr, whichever command was writing, so
scripts under ``set -o pipefail`` see no failure.

Nothing here is scanned: the commands only list settings, help or a scratch store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

# One page: the reader leaves while the command still has output to write (each of the
# first-line tests writes more than a page after its first line), so a write meets a
# closed pipe every time, not only when the reader happens to be quick.
PIPE_BYTES = 4096

_SEED_ACCEPTANCES = """
import sys
from datetime import UTC, datetime
from portwatch.alerts.accepted import accept
from stream_processors.store import Store
db = Store.from_url(sys.argv[1])
for port in range(1, 31):
    accept(db, "127.0.0.1", "tcp", port, note="reviewed " + "x" * 400, by="tester",
           until=None, now=datetime.now(UTC))
db.close()
"""


def first_line_then_close(*args: str) -> tuple[bytes, int, str]:
    """Run ``portwatch ARGS`` into a pipe of one page, read its first line, close the
    pipe; (that line, the exit code, stderr)."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(AttributeError, OSError):  # Linux: F_SETPIPE_SZ
        fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    env = {**os.environ, "COLUMNS": "250"}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "portwatch", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb", buffering=0) as reader:
        line = reader.readline()  # unbuffered: this line only, the rest stays unread
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return line, proc.returncode, stderr


def test_settings_into_a_pipe_closed_early_exits_0_quietly() -> None:
    line, code, stderr = first_line_then_close("settings")
    assert line == b"[store]\n"
    assert code == 0, stderr
    assert stderr == ""


def test_accept_list_into_a_pipe_closed_early_exits_0_quietly(tmp_path: Path) -> None:
    # Given a store with 30 acceptances (about 13 kB of listing)
    store = f"chdb://{tmp_path / 'store'}"
    seeded = subprocess.run([sys.executable, "-c", _SEED_ACCEPTANCES, store],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert seeded.returncode == 0, seeded.stderr
    # When its listing goes to a reader that leaves after one line
    line, code, stderr = first_line_then_close("accept", "--list", "--store", store)
    # Then the command stops there, exit 0, nothing on stderr
    assert line.startswith(b"127.0.0.1:"), line
    assert b" reviewed xxx" in line
    assert code == 0, stderr
    assert stderr == ""


@pytest.mark.parametrize("args", [["settings"], ["accept", "--help"], []],
                         ids=["settings", "command-help", "help-printed-by-main"])
def test_a_pipe_closed_before_the_first_write_exits_0_quietly(args: list[str]) -> None:
    # (`portwatch` alone: main() prints the help itself, outside click's error handling)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run([sys.executable, "-m", "portwatch", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@contextlib.contextmanager
def unwritable_stderr(kind: str) -> Iterator[int]:
    """A file descriptor for stderr that takes no line: a pipe whose reader has gone
    (``2>&1 | true``), or a full disk (``2>/dev/full``, ENOSPC on every write)."""
    if kind == "gone-reader":
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            yield write_end
        finally:
            os.close(write_end)
    else:
        with open("/dev/full", "wb") as full:
            yield full.fileno()


@pytest.mark.parametrize("stderr", ["gone-reader", "full-disk"])
@pytest.mark.parametrize("args", [
    ["report", "list", "--port", "99999"],
    ["report", "summary", "--store", "chdb:///nonexistent/portwatch-store"],
], ids=["usage-error", "no-such-store"])
def test_an_error_whose_stderr_takes_no_line_keeps_its_exit_code(
        args: list[str], stderr: str) -> None:
    # Given a command that fails, its stderr unwritable
    with unwritable_stderr(stderr) as fd:
        proc = subprocess.run([sys.executable, "-m", "portwatch", *args],
                              stdout=subprocess.PIPE, stderr=fd, timeout=120, cwd=REPO)
    # Then it still fails with its code (2): the line is lost, not the failure (it exited
    # 0, taken for a reader of stdout that had seen enough; or 1, the write error's, with
    # a traceback nobody could read: reviews)
    assert proc.returncode == 2
    assert proc.stdout == b""


def test_a_scan_whose_reader_of_stderr_is_gone_still_scans_and_stores(
        tmp_path: Path) -> None:
    from tests import loopback
    from tests.conftest import query_store

    store = f"chdb://{tmp_path / 'store'}"
    # Given a listener, and a scan whose stderr's reader has gone (its notes and progress
    # have nowhere to go), its stdout a file
    with loopback.listen(loopback.banner(b"hello\r\n")) as server, \
            open(tmp_path / "out.txt", "wb") as out, unwritable_stderr("gone-reader") as fd:
        proc = subprocess.run(
            [sys.executable, "-m", "portwatch", "scan", "-p", str(server.port), "-u",
             "none", "--store", store, "127.0.0.1"], stdout=out, stderr=fd,
            timeout=300, cwd=REPO,
            env={**os.environ, "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8,::1/128"})
    # Then the scan ran and stored its port, and said so by its exit code (it stopped at
    # its first note, stored nothing and exited 0: a review)
    assert proc.returncode == 0
    assert query_store(store, "SELECT port FROM port_observations") == [(server.port,)]
    assert (tmp_path / "out.txt").read_bytes() != b""
