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
    """The file cannot be read, is too large or is not a file. The message says why
    without naming the file (the caller names it its own way); ``kind`` says which, for
    callers that word one case their own way: "unreadable", "too large", "directory",
    "not a file" or "pipe timeout"; ``reason`` is the why alone."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(f"cannot read: {reason}" if kind == "unreadable" else reason)
        self.reason = reason
        self.kind = kind


def read_bounded(path: str | os.PathLike[str], cap: int) -> bytes:
    """The bytes at ``path``: at most ``cap``, FileReadError beyond (or when unreadable,
    a directory, a device, or a pipe that did not end within PIPE_WAIT_SECONDS)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FileReadError(str(exc.strerror or exc), "unreadable") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileReadError("a directory, not a file", "directory")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise FileReadError("not a regular file or a pipe", "not a file")
        raw = _read(fd, cap + 1, pipe=stat.S_ISFIFO(mode))
    except OSError as exc:
        raise FileReadError(str(exc.strerror or exc), "unreadable") from None
    finally:
        os.close(fd)
    if len(raw) > cap:
        size = f"{cap // 2**20} MiB" if cap % 2**20 == 0 else f"{cap:,} bytes"
        raise FileReadError(f"larger than {size}", "too large")
    return raw


def _read(fd: int, cap: int, *, pipe: bool) -> bytes:
    """The bytes of ``fd`` until its end, at most ``cap``. A pipe's (no writer reads as
    an end at once) are waited for with poll, not select (which refuses a descriptor past
    1,023, which a scan holding many sockets reaches), until PIPE_WAIT_SECONDS."""
    poller = None
    if pipe:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
    deadline = time.monotonic() + PIPE_WAIT_SECONDS
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        if poller is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise FileReadError(f"a pipe that did not end within "
                                    f"{PIPE_WAIT_SECONDS:g} s", "pipe timeout")
        try:
            chunk = os.read(fd, min(1 << 20, cap - size))
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def describe(exc: FileReadError, what: str) -> str:
    """One line for ``exc`` about ``what`` ("inventory 'a.csv'"): "cannot read WHAT:
    why" when the file could not be opened or read, "WHAT: why" otherwise."""
    if exc.kind == "unreadable":
        return f"cannot read {what}: {exc.reason}"
    return f"{what}: {exc}"


__all__ = ["PIPE_WAIT_SECONDS", "FileReadError", "describe", "read_bounded"]
