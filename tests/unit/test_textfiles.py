"""Files people give portwatch are read with a bound whatever the path names: a regular
file, a pipe, a device (producers/textfiles.py and its callers: inventories, exclude
lists, checkpoints, standard input, the scope fence's setting)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from producers import textfiles
from producers.textfiles import FileReadError, read_bounded


def test_a_regular_file_is_read_to_its_cap_and_refused_past_it(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100) == b"x" * 100
    with pytest.raises(FileReadError, match="larger than 99 bytes"):
        read_bounded(path, 99)


def test_a_pipe_is_read_to_its_end_and_refused_past_the_cap(tmp_path: Path) -> None:
    fifo = tmp_path / "p"
    os.mkfifo(fifo)

    def write(size: int) -> None:
        with open(fifo, "wb") as out:  # blocks until the reader opens it
            try:
                out.write(b"y" * size)
            except BrokenPipeError:
                pass  # the reader stopped at its cap, as it should

    for size, cap, ok in ((5000, 5000, True), (200_000, 1000, False)):
        writer = threading.Thread(target=write, args=(size,))
        writer.start()
        try:
            if ok:
                assert read_bounded(fifo, cap) == b"y" * size
            else:
                with pytest.raises(FileReadError, match="larger than 1,000 bytes"):
                    read_bounded(fifo, cap)
        finally:
            writer.join(10)


def test_a_pipe_past_descriptor_1023_is_read(tmp_path: Path) -> None:
    import resource

    # Given a process holding many descriptors (a scan's sockets): the pipe's is past
    # 1,023, which select() refused ("filedescriptor out of range"; a test run found it)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1100, "cannot hold 1,100 files"
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"127.0.0.1\n"))
    writer.start()
    try:
        # When it is read, then it is, whole
        assert read_bounded(fifo, 100) == b"127.0.0.1\n"
    finally:
        writer.join(10)
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_device_or_a_directory_is_refused_without_reading(tmp_path: Path) -> None:
    # /dev/zero's size reads 0: read whole, it grew a scan until the kernel killed it
    with pytest.raises(FileReadError, match="not a regular file or a pipe"):
        read_bounded("/dev/zero", 1 << 20)
    with pytest.raises(FileReadError, match="a directory"):
        read_bounded(tmp_path, 1 << 20)
    with pytest.raises(FileReadError, match="cannot read: No such file"):
        read_bounded(tmp_path / "missing", 10)


def test_no_descriptor_is_left_open_whatever_the_path_names(tmp_path: Path) -> None:
    # (a directory's descriptor leaked on every read: a long-running process re-reading
    # its files ran out of them; a review)
    regular = tmp_path / "f"
    regular.write_bytes(b"z" * 10)
    before = len(os.listdir("/proc/self/fd"))
    for path, cap in ((tmp_path, 100), ("/dev/zero", 100), (regular, 5), (regular, 100)):
        for _ in range(20):
            try:
                read_bounded(path, cap)
            except FileReadError:
                pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_checkpoint_path_keeps_its_meanings(tmp_path: Path) -> None:
    from producers.shards import Checkpoint, CheckpointError

    # A dangling link is no checkpoint yet (a fresh start), as a missing file is
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    assert Checkpoint.load(tmp_path / "dangling.json") is None
    assert Checkpoint.load(tmp_path / "missing" / "ck.json") is None
    # A directory is said to be one
    with pytest.raises(CheckpointError, match="is a directory"):
        Checkpoint.load(tmp_path)


def test_a_fifo_with_no_writer_is_given_up_on(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(textfiles, "PIPE_WAIT_SECONDS", 0.3)
    fifo = tmp_path / "quiet"
    os.mkfifo(fifo)
    # (opened for writing by nobody: the open does not block, the read gives up)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a writer that never writes
    try:
        with pytest.raises(FileReadError, match="did not end within 0.3 s"):
            read_bounded(fifo, 100)
    finally:
        os.close(holder)
        os.close(fd)


def test_every_reader_of_peoples_files_is_bounded(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from portwatch.assembly import _expand_stdin
    from producers.shards import Checkpoint, CheckpointError
    from producers.targets import Scope, TargetError, read_inventory

    # An inventory, an exclude file and a checkpoint naming a device: one line each
    with pytest.raises(TargetError, match="inventory '/dev/zero': not a regular file"):
        read_inventory("/dev/zero")
    with pytest.raises(TargetError, match="exclude file '/dev/zero': not a regular file"):
        Scope.build(exclude_file="/dev/zero", allow=())
    with pytest.raises(CheckpointError, match="checkpoint /dev/zero: not a regular file"):
        Checkpoint.load("/dev/zero")
    # Standard input: a line of no end is refused at its cap, not read whole
    with pytest.raises(TargetError, match="line 1: longer than 65,536 characters"):
        _expand_stdin(["-"], io.StringIO("1" * 1_000_000))
    assert _expand_stdin(["-"], io.StringIO("127.0.0.1  # web\n\n::1\n")) == ["127.0.0.1",
                                                                             "::1"]
    # and bytes that are not UTF-8 (binary junk piped in) are said to be that, as for the
    # files (before: 'bad CIDR block "IWd\\udcef..."': a review)
    junk = io.TextIOWrapper(io.BytesIO(b"127.0.0.1\nIWd\xef\xf5/\x00\n"), encoding="utf-8",
                            errors="surrogateescape")
    with pytest.raises(TargetError, match="^standard input line 2 is not UTF-8 text"):
        _expand_stdin(["-"], junk)
    # and closed (`scan - <&-`): said, not a TypeError's traceback
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(TargetError, match="standard input, which is closed"):
        _expand_stdin(["-"])


def test_a_scope_fence_of_blanks_is_refused_not_read_as_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from portwatch.settings import Settings, SettingsError

    # Given the fence set to blanks (a template that left it empty, a stray space)
    for blanks in ("  ", "\t"):
        monkeypatch.setenv("PORTWATCH_SCOPE_ALLOW", blanks)
        # When the settings are read, then it is refused: read as unset, it turned the
        # fence off and scans reached any address (a review)
        with pytest.raises(SettingsError, match="holds no CIDR block"):
            Settings.from_env()
    # An empty value is still "unset", as shells write it
    monkeypatch.setenv("PORTWATCH_SCOPE_ALLOW", "")
    assert Settings.from_env().scope_allow == ""
