"""Reading a file people give portwatch (an inventory, an exclude list, a checkpoint, an
alert or schedule file) with a bound on its size, whatever the path names.

Owns: ``read_bounded`` and ``FileReadError``. A path may name a regular file, a pipe
(``--inventory <(make-assets)``, ``/dev/stdin``) or anything else: ``stat`` gives a
pipe's or a device's size as 0, so a size check before ``read_text`` let ``/dev/zero``
grow a scan until the kernel killed it (a review). Here a regular file is read up to the
cap, a pipe until its end (within ``PIPE_WAIT_SECONDS``, up to the cap), and anything
else (a device, a socket) is refused. Opened without blocking: a FIFO with no writer
hung the reader for good.

Must not touch: what the text means (each caller parses its own format).
"""

from __future__ import annotations

import os
import select
import stat
import time

PIPE_WAIT_SECONDS = 10.0


class FileReadError(ValueError):
    """The file cannot be read, is too large or is not a file; the message is the
    reason alone (the caller names the file its own way)."""


def read_bounded(path: str | os.PathLike[str], cap: int) -> bytes:
    """The bytes at ``path``: at most ``cap``, FileReadError beyond (or when unreadable,
    a directory, a device, or a pipe that did not end within PIPE_WAIT_SECONDS)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FileReadError(f"{_UNREADABLE}{exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            raw = _read_file(fd, cap + 1)
        elif stat.S_ISFIFO(mode):
            piped = _read_pipe(fd, cap + 1)
            if piped is None:
                raise FileReadError(f"a pipe that did not end within "
                                    f"{PIPE_WAIT_SECONDS:g} s")
            raw = piped
        elif stat.S_ISDIR(mode):
            raise FileReadError("a directory, not a file")
        else:
            raise FileReadError("not a regular file or a pipe")
    except OSError as exc:
        raise FileReadError(f"{_UNREADABLE}{exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > cap:
        raise FileReadError(f"larger than {_size(cap)}")
    return raw


def _read_file(fd: int, cap: int) -> bytes:
    """A regular file's bytes, at most ``cap``."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = os.read(fd, min(1 << 20, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def describe(exc: FileReadError, what: str) -> str:
    """One line for ``exc`` about ``what`` ("inventory 'a.csv'"): "cannot read WHAT:
    why" when the file could not be opened or read, "WHAT: why" otherwise."""
    reason = str(exc)
    if reason.startswith(_UNREADABLE):
        return f"cannot read {what}: {reason.removeprefix(_UNREADABLE)}"
    return f"{what}: {reason}"


_UNREADABLE = "cannot read: "


def _size(cap: int) -> str:
    return f"{cap // 2**20} MiB" if cap >= 2**20 and cap % 2**20 == 0 else f"{cap:,} bytes"


def _read_pipe(fd: int, cap: int) -> bytes | None:
    """A pipe's bytes until its end (no writer reads as an end at once), at most ``cap``;
    None when it did not end within PIPE_WAIT_SECONDS."""
    deadline = time.monotonic() + PIPE_WAIT_SECONDS
    # poll, not select: select refuses a descriptor past 1,023, which a scan holding
    # many sockets (or a test run) reaches
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        try:
            chunk = os.read(fd, min(65536, cap - size))
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


__all__ = ["PIPE_WAIT_SECONDS", "FileReadError", "describe", "read_bounded"]
