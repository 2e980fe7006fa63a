"""A store in trouble. A damaged one (its findings table lost) is refused, not made again
empty; the engine's errno reasons are said. A store whose disk is full, for real: a
small tmpfs (root mounts it; the tests run as root, as the netns and iptables ones do),
filled with a file once a scan has made the store. ``prune`` is refused before it
writes anything (before: its delete waited for ever, deaf to Ctrl-C, holding the store,
and the engine left the delete's file empty, after which the store no longer opened),
and ``scan`` fails in one line (before: a 74-line traceback). Nothing stored before is
lost: once space is freed both work. A store an earlier full disk left with an empty
mutation file opens again. A store on a read-only file system (a bind mount in a mount
namespace of the test's own) is one line saying why it cannot be read."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_processors.store import SCHEMA_VERSION
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_disk(where: Path, size: str = "96m") -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte with one file (deleted to free it)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 1):  # big blocks, then the last bytes one at a time
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free < 4096
    return filler


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_prune_and_scan_on_a_full_disk_fail_in_one_line_and_lose_nothing(
        tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        store = f"chdb://{disk / 'store'}"
        # Given a store with a scan in it, on a disk then filled
        first = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                        store=store)
        assert first.code == 0, first.stderr
        time.sleep(1.1)
        mutations = sorted((disk / "store").glob("store/*/*/mutation_*.txt"))
        filler = fill(disk)
        # When prune runs (the scan ended over a second ago)
        pruned = run_cli("prune", "--older-than", "1s", store=store, timeout=120)
        # Then it is refused in one line, saying why, before it writes anything
        assert pruned.code == 1, pruned.stderr
        line = one_error_line(pruned.stderr)
        assert line.startswith(f"portwatch: error: the store at {disk / 'store'} has ")
        assert line.endswith("free some space and run it again (nothing was changed)")
        assert sorted((disk / "store").glob("store/*/*/mutation_*.txt")) == mutations
        # And a scan fails in one line too, naming the full disk and how much to free
        # for prune to help (it said "or portwatch prune", refused just above: a review)
        scanned = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                          store=store)
        assert scanned.code == 1, scanned.stderr
        assert one_error_line(scanned.stderr) == (
            "portwatch: error: no space left on the store's disk: free some (64 MiB free lets "
            "`portwatch prune` remove old scans) and run it again; what was stored before "
            "is kept")
        # And once space is freed, both work on what was stored before
        filler.unlink()
        done = run_cli("prune", "--older-than", "1s", store=store)
        assert done.code == 0, done.stderr
        # (it says how many scans it pruned: none, the one scan above is the host's
        # latest, which the reports read; it said 1: a review)
        assert done.stdout.startswith("no scan to prune before "), done.stdout
        again = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                        store=store)
        assert again.code == 0, again.stderr
        summary = run_cli("report", "summary", "--format", "json", store=store)
        assert summary.code == 0 and '"127.0.0.1"' in summary.stdout


def test_a_store_left_with_an_empty_mutation_file_opens_again(tmp_path: Path) -> None:
    # Given a store, and a delete's file the engine wrote empty (what a full disk leaves;
    # the engine then refused to open the store: "expected 'format version: 1'")
    store = tmp_path / "store"
    made = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                   store=f"chdb://{store}")
    assert made.code == 0, made.stderr
    table_dir = next(p.parent for p in store.glob("store/*/*/*") if p.is_dir())
    (table_dir / "mutation_7.txt").write_bytes(b"")
    # When a report opens it
    summary = run_cli("report", "summary", "--format", "json", store=f"chdb://{store}")
    # Then the empty file is removed, said once, and the store reads as before
    assert summary.code == 0, summary.stderr
    assert '"127.0.0.1"' in summary.stdout
    assert not (table_dir / "mutation_7.txt").exists()
    assert "a delete the engine could not record (the disk was full)" in summary.stderr


def test_a_store_that_lost_its_findings_table_is_refused_as_damaged(tmp_path: Path) -> None:
    # Given a store whose findings table's definition file is gone
    store = tmp_path / "store"
    made = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                   store=f"chdb://{store}")
    assert made.code == 0, made.stderr
    (store / "metadata" / "portwatch" / "findings.sql").unlink()
    # When a report or a scan opens it (before: the report said "no store: scan something
    # first", and a scan made the table again, empty: every first_seen restarted)
    for args in (["report", "summary"], ["scan", "127.0.0.1", "--ports", "9", "--udp",
                                         "none", "-q"]):
        result = run_cli(*args, store=f"chdb://{store}")
        # Then it is refused in one line, and nothing is made again
        assert result.code == 2, result.stderr
        line = one_error_line(result.stderr)
        assert line == (f"portwatch: error: the store at {store} is damaged: it has layout "
                        f"{SCHEMA_VERSION} but no findings table; restore it from a backup, "
                        "or use a new --store and rescan")
    assert not (store / "metadata" / "portwatch" / "findings.sql").exists()


@pytest.mark.parametrize(("lost", "said"), [
    ("portwatch/port_latest.sql", "it has layout {layout} but no port_latest (a definition "
     "file lost)"),
    ("portwatch/accepted_risks.sql", "it has layout {layout} but no accepted_risks (a "
     "definition file lost)"),
    ("portwatch.sql", "the definition of its database portwatch is lost, its tables' "
     "remain"),
])
def test_a_store_that_lost_another_definition_is_refused_as_damaged(
        tmp_path: Path, lost: str, said: str) -> None:
    # Given a store, one of whose definition files is gone (a table's, or its database's)
    store = tmp_path / "store"
    made = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                   store=f"chdb://{store}")
    assert made.code == 0, made.stderr
    (store / "metadata" / lost).unlink()
    # When a report or a scan opens it (before: the scan made it again, empty, and the
    # acceptances, the page index or the whole history were gone; a review)
    for args in (["report", "summary"], ["scan", "127.0.0.1", "--ports", "9", "--udp",
                                         "none", "-q"]):
        result = run_cli(*args, store=f"chdb://{store}")
        # Then it is refused in one line, and nothing is made again
        assert result.code == 2, result.stderr
        assert one_error_line(result.stderr) == (
            f"portwatch: error: the store at {store} is damaged: "
            f"{said.format(layout=SCHEMA_VERSION)}; restore it from a backup, or use a new "
            "--store and rescan")
    assert not (store / "metadata" / lost).exists()


def test_the_engines_errno_reason_is_said() -> None:
    from stream_processors.store import engine_reason

    said = ("2026.12.06 07:00:00 [ 1 ] <Error> Application: Code: 76. "
            "DB::ErrnoException: Cannot open file /s/status, errno: 13, strerror: "
            "Permission denied. (CANNOT_OPEN_FILE)\n")
    # (before: only "DB::Exception: " was read, and the one line gave no reason)
    assert engine_reason(said).startswith("Cannot open file /s/status, errno: 13")


def test_a_store_on_a_read_only_file_system_says_so_in_one_line(tmp_path: Path) -> None:
    # Given a store, seen through a read-only bind mount (in a mount namespace of the
    # test's own: nothing outside sees it)
    store = tmp_path / "store"
    made = run_cli("scan", "127.0.0.1", "--ports", "9", "--udp", "none", "-q",
                   store=f"chdb://{store}")
    assert made.code == 0, made.stderr
    view = tmp_path / "view"
    view.mkdir()
    script = (f"mount --bind {store} {view} && mount -o remount,bind,ro {view} && "
              f"{sys.executable} -m portwatch report summary --store chdb://{view}; "
              'echo "exit=$?" >&2')
    result = subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    # When a report reads it: one line saying why it cannot (chdb writes where it
    # reads), exit 1 (it was "[Errno 30] Read-only file system: '.../.portwatch.lock'")
    *said, status = result.stderr.strip().splitlines()
    assert status == "exit=1", result.stderr
    assert said == [f"portwatch: error: cannot open the store at {view}: it is on a "
                    "read-only file system, and the embedded engine writes in its directory "
                    "even to read (copy it somewhere writable)"]
