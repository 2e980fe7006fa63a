"""Starting the web reports' HTTP server: ``serve``, ``process --serve``, ``watch --serve``.

Owns: binding the listening socket ourselves (uvicorn exits the process on a bind
error; a taken port must be one line and exit 1, with nothing started), the one
uvicorn configuration, and running the server either on its own (``serve``) or on
an event loop it shares with the Faust apps (``process --serve``: the process keeps
its own signal handlers and tells the server when to exit).

Must not touch: the store (the app reads it), any socket but the listening one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette


class ListenError(OSError):
    """The address cannot be listened on (taken, not ours); the message says which."""


LISTEN_BACKLOG = 2048  # uvicorn's default


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket for ``host:port`` (ListenError, one line, when it cannot be).

    Listening, not only bound: the caller announces the server (the store's advert, the
    "listening" line) before uvicorn starts, and a client that reads the advert in
    between must queue in the backlog, not be refused (a fresh-clone CI run caught a
    report refused that way)."""
    bare = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


# Bytes of a request head: two stored texts of 4,096 characters, 4 UTF-8 bytes each,
# percent-encoded (x3), plus the rest of a URL and the headers.
MAX_HEAD = 128 * 1024


def uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """One uvicorn configuration for ``serve`` and ``process --serve``: quiet, no
    server header, no proxy headers, a short graceful shutdown, and a request head of up
    to ``MAX_HEAD`` bytes (a Products link carries a product and a version as stored:
    up to 4,096 characters each, percent-encoded; h11's default 16 KiB refused some)."""
    import uvicorn

    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    return uvicorn.Config(app, host=host.strip("[]"), port=port,
                          log_level="warning", access_log=False, server_header=False,
                          proxy_headers=False, timeout_graceful_shutdown=2, lifespan="off",
                          h11_max_incomplete_event_size=MAX_HEAD)


def serve_forever(app: Starlette, host: str, port: int,
                  on_listening: Callable[[], None] | None = None,
                  on_stopped: Callable[[], None] | None = None) -> None:
    """``portwatch serve``: bind (ListenError), say so, serve until Ctrl-C / SIGTERM.

    ``on_stopped`` runs once the server has shut down, before uvicorn re-raises the signal
    that stopped it (which ends the process: a caller's ``finally`` would never run)."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    if on_stopped is not None:
                        on_stopped()

    sock = listen_socket(host, port)
    if on_listening is not None:
        on_listening()
    StoppingServer(uvicorn_config(app, host, port)).run(sockets=[sock])


def _keeping_signals(app: Starlette, host: str, port: int) -> uvicorn.Server:
    """A server that leaves the process's signal handlers alone: its caller keeps them
    and sets ``should_exit`` (``process --serve``, ``watch --serve``)."""
    import uvicorn

    class KeepSignals(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the process's handlers stay
            yield

    return KeepSignals(uvicorn_config(app, host, port))


async def start_beside(app: Starlette, host: str, port: int
                       ) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The server on the running loop, beside other work; its caller keeps the
    process's signals and sets ``server.should_exit`` to stop it."""
    sock = listen_socket(host, port)
    server = _keeping_signals(app, host, port)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    return server, task


def start_in_thread(app: Starlette, host: str, port: int
                    ) -> tuple[uvicorn.Server, threading.Thread]:
    """The server on a loop of its own, in a thread (``watch --serve``: the watcher's
    loop makes blocking store calls, and /healthz and the pages waited 16-18 s behind
    them: a review, 2026-12-06); the caller keeps the process's signals and stops it
    with ``stop_thread``."""
    sock = listen_socket(host, port)
    server = _keeping_signals(app, host, port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="portwatch-web", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    return server, thread


def stop_thread(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=15.0)


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10.0)


__all__ = ["ListenError", "listen_socket", "serve_forever", "start_beside",
           "start_in_thread", "stop", "stop_thread", "uvicorn_config"]
