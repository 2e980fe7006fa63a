"""Issue 11, defect 10, against a real uvicorn server on loopback and the real CLI:
a 500 carries the security headers every other answer carries; the token cookie is
Secure behind TLS (``--cookie-secure``, or X-Forwarded-Proto from a trusted proxy
only); ``serve`` on a taken port is one line and exit 1, never "serving" first; an
oversized request line is a 400 and the server goes on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portwatch.web.app import SECURITY_HEADERS, create_app
from portwatch.web.service import ReportService
from stream_processors.store import Store
from tests.conftest import make_store, run_cli, scratch_store
from tests.e2e.test_cli_errors import assert_refused
from tests.integration.test_web_api import Served
from tests.loopback import free_port

TOKEN = "t" * 24


@contextlib.contextmanager
def serve(app: Any, host: str = "127.0.0.1") -> Iterator[Served]:
    """The app under the very uvicorn configuration and listening socket ``portwatch
    serve`` uses (no proxy headers: uvicorn must not rewrite the scheme itself), in a
    thread, on loopback (``host``: 127.0.0.1, or ::ffff:127.0.0.1 for a dual-stack socket
    that IPv4 clients reach)."""
    import uvicorn

    from portwatch.web.server import listen_socket, uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, host, port))
    sock = listen_socket(host, port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def broken_store(shared_chdb_path: Path) -> Iterator[Store]:
    """A real store whose findings table is gone: every report query fails in ClickHouse."""
    with scratch_store(shared_chdb_path, "broken") as store:
        store._client.command("DROP TABLE current_findings")
        yield store


@pytest.mark.parametrize("path", ["/list", "/api/v1/list"])
def test_a_500_carries_the_security_headers(broken_store: Store, path: str) -> None:
    # Given the reports served over a store that fails every query
    with serve(create_app(ReportService(broken_store, use_cache=False))) as web:
        # When a report is asked for
        status, headers, body = web.get(path)
    # Then it is a 500 that says nothing of the internals, with every security header
    assert status == 500
    assert "Traceback" not in body
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, value in SECURITY_HEADERS.items():
        assert lowered[name.lower()] == value
    assert lowered["cache-control"] == "no-store"


def _cookie(web: Served, headers: dict[str, str] | None = None) -> str:
    status, answer, _ = web.get("/list?token=" + TOKEN, headers=headers)
    assert status == 303
    return {k.lower(): v for k, v in answer.items()}["set-cookie"]


def _attributes(cookie: str) -> set[str]:
    return {part.strip().lower() for part in cookie.split(";")[1:]}


@pytest.fixture(scope="module")
def db(shared_chdb_path: Path) -> Iterator[Store]:
    with scratch_store(shared_chdb_path, "cookie") as store:
        yield store


def _app(db: Store, **options: Any) -> Any:
    return create_app(ReportService(db), token=TOKEN, loopback_only=False, **options)


def test_the_token_cookie_is_secure_with_cookie_secure(db: Store) -> None:
    with serve(_app(db, cookie_secure=True)) as web:
        assert "secure" in _attributes(_cookie(web))


def test_x_forwarded_proto_counts_only_from_a_trusted_proxy(db: Store) -> None:
    # Given a server that trusts the proxy at 127.0.0.1 (where the test connects from)
    with serve(_app(db, trusted_proxies=frozenset({"127.0.0.1"}))) as web:
        # Then https forwarded by it marks the cookie Secure, plain http does not
        assert "secure" in _attributes(_cookie(web, {"X-Forwarded-Proto": "https"}))
        assert "secure" not in _attributes(_cookie(web, {"X-Forwarded-Proto": "http"}))
        assert "secure" not in _attributes(_cookie(web))
    # Given a server that trusts another address, the same header is ignored
    with serve(_app(db, trusted_proxies=frozenset({"127.0.0.9"}))) as web:
        assert "secure" not in _attributes(_cookie(web, {"X-Forwarded-Proto": "https"}))


@pytest.mark.parametrize("given", ["127.0.0.1", "::ffff:127.0.0.1"])
def test_a_trusted_ipv4_proxy_is_trusted_through_a_dual_stack_socket(db: Store,
                                                                      given: str) -> None:
    from portwatch.web.cli import is_loopback, parse_trusted_proxies

    # Given a server on a dual-stack IPv6 socket (as --host :: listens), which sees an
    # IPv4 client as ::ffff:127.0.0.1, trusting the IPv4 proxy however it was written
    proxies = parse_trusted_proxies((given,))
    assert proxies == frozenset({"127.0.0.1"})
    with serve(_app(db, trusted_proxies=proxies), host="::ffff:127.0.0.1") as web:
        # Then https forwarded by that proxy marks the cookie Secure (before: never, the
        # client's mapped form matched no --trusted-proxy)
        assert "secure" in _attributes(_cookie(web, {"X-Forwarded-Proto": "https"}))
        assert "secure" not in _attributes(_cookie(web, {"X-Forwarded-Proto": "http"}))
    # And an IPv4-mapped loopback address is loopback (no token demanded)
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("::ffff:198.18.0.1")


def _raw_answer(port: int, head: bytes) -> bytes:
    """Everything answered to ``head``, sent whole on a fresh connection, until the server
    closes it (or resets it: the rest of a head it refused is still unread there)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
    return got


@pytest.mark.parametrize("size", [20_000, 300_000, 2_000_000])
def test_an_oversized_request_line_is_a_400_and_the_server_goes_on(db: Store,
                                                                   size: int) -> None:
    # Given the JSON API served as `portwatch serve` serves it
    with serve(_app(db)) as web:
        port = int(web.base.rsplit(":", 1)[1])
        # When a request line of an unknown parameter, 20 kB to 2 MB long, arrives
        answer = _raw_answer(port, b"GET /api/v1/list?x=" + b"a" * size + b" HTTP/1.1\r\n"
                             b"Host: 127.0.0.1\r\nAuthorization: Bearer " +
                             TOKEN.encode() + b"\r\nConnection: close\r\n\r\n")
        # Then it is refused with a 400, never a hang: by the app, naming the parameter
        # within a bound, when the head fits what the server reads at once; past that, by
        # uvicorn's h11 head limit before the app sees it (its own text; not a 414)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        body = answer.split(b"\r\n\r\n", 1)[1]
        if size >= 300_000:
            assert body == b"Invalid HTTP request received."
        else:
            assert b"has no parameter 'x'" in body and len(body) < 400
        # And the next request is served as usual
        status, _, _ = web.get("/list?token=" + TOKEN)
        assert status == 303


def test_serve_on_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # Given a store, and a port on 127.0.0.1 someone else listens on
    make_store(f"chdb://{tmp_path / 'store'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # When portwatch serve is asked to listen there
        result = run_cli("serve", "--port", str(port), "--store",
                         f"chdb://{tmp_path / 'store'}", timeout=60)
    # Then one line says why, exit 1, and it never claimed to be serving
    assert_refused(result, f"cannot listen on 127.0.0.1:{port}", code=1)
    assert "serving" not in result.stderr


def test_serve_refuses_an_embedded_store_that_does_not_exist(tmp_path: Path) -> None:
    # Given a mistyped store path / When served / Then refused, and nothing is created there
    result = run_cli("serve", "--port", str(free_port()), "--store",
                     f"chdb://{tmp_path / 'typo'}", timeout=60)
    assert_refused(result, f"no store at {tmp_path / 'typo'}: scan something first")
    assert not (tmp_path / "typo").exists()


def test_serve_refuses_a_trusted_proxy_that_is_not_an_address(tmp_path: Path) -> None:
    result = run_cli("serve", "--trusted-proxy", "proxy.example", "--store",
                     f"chdb://{tmp_path / 'store'}")
    assert_refused(result, "--trusted-proxy 'proxy.example' is not an IP address")


def test_healthz_answers_while_every_worker_thread_is_busy(shared_chdb_path: Path) -> None:
    """The liveness probe of the Helm web pod (1 s timeout, 3 failures): it waited behind
    report queries in the thread pool, 24-33 s under a burst of 60 pages (a review,
    2026-12-06). Every worker thread is taken here, as such a burst takes them."""
    import anyio
    import anyio.to_thread

    async def get(app: Any, path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8765)}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return start["status"], b"".join(m.get("body", b"") for m in sent
                                          if m["type"] == "http.response.body")

    async def main(app: Any) -> tuple[int, bytes]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        holders = [object() for _ in range(int(limiter.total_tokens))]
        for holder in holders:
            await limiter.acquire_on_behalf_of(holder)
        try:
            with anyio.fail_after(30):  # a hang guard, not a timing: it waited for a thread
                return await get(app, "/healthz")
        finally:
            for holder in holders:
                limiter.release_on_behalf_of(holder)

    with scratch_store(shared_chdb_path, "healthz") as store:
        assert anyio.run(main, create_app(ReportService(store))) == (200, b"ok\n")


def test_watch_serve_answers_while_the_watchers_loop_is_blocked(shared_chdb_path: Path
                                                               ) -> None:
    """`watch --serve`: the watcher's loop makes blocking store calls (its schedule's
    ledger), and the web server on that loop froze 16-18 s behind them (a review,
    2026-12-06). The pages run on a loop of their own."""
    import asyncio
    import urllib.request

    from portwatch.alerts.cli import _serving

    answered: dict[str, int] = {}

    def probe(port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            answered["status"] = r.status

    async def main(store: Store, port: int) -> bool:
        async with _serving(store, (create_app(ReportService(store)), "127.0.0.1", port),
                            ""):
            asker = threading.Thread(target=probe, args=(port,))
            asker.start()
            time.sleep(3)  # the watcher's loop, blocked in a store call
            while_blocked = "status" in answered
            asker.join(timeout=30)
        return while_blocked

    with scratch_store(shared_chdb_path, "watchserve") as store:
        assert asyncio.run(main(store, free_port())) is True
    assert answered == {"status": 200}
