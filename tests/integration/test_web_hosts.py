"""Which Host headers `portwatch serve` answers: the address it binds plus --allowed-host.

Given `portwatch serve --host 127.0.0.60` (its own process, a real store), when a client
sends the Host header of the URL serve printed, then it is answered (it used to be 421 for
any loopback address but 127.0.0.1); a foreign Host (DNS rebinding) is still 421 unless it
was given with --allowed-host; a bad --allowed-host is one line and exit 2. With a token
(the Kubernetes shape), --allowed-host turns the same check on and /healthz stays open.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.web.cli import (
    accepted_hosts,
    host_header_names,
    listening_line,
    parse_allowed_host,
)
from tests.conftest import REPO, make_store, run_cli, scratch_store
from tests.integration.test_web_api import serve
from tests.loopback import free_port

ADDRESS = "127.0.0.60"
TOKEN = "h" * 24


def get(address: str, port: int, path: str, host: str,
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One GET to address:port with exactly this Host header."""
    conn = http.client.HTTPConnection(address, port, timeout=60)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@contextlib.contextmanager
def serve_process(store: str, *args: str) -> Iterator[tuple[int, str]]:
    """`portwatch serve --host 127.0.0.60` in its own process, on ``store`` (created here,
    empty: serve refuses an embedded store that does not exist); yields (port, stderr
    line)."""
    make_store(store)
    port = free_port((ADDRESS,))
    env = {**os.environ, "PORTWATCH_WEB_TOKEN": "", "PORTWATCH_STORE": store}
    proc = subprocess.Popen([sys.executable, "-m", "portwatch", "serve", "--host", ADDRESS,
                             "--port", str(port), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once the socket is bound
        assert "serving the reports" in line, line + proc.stderr.read()
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if get(ADDRESS, port, "/healthz", f"{ADDRESS}:{port}")[0] == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield port, line
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("bound", "names"), [
    ("127.0.0.60", {"127.0.0.60"}),
    ("::1", {"[::1]"}),
    ("[::1]", {"[::1]"}),
    ("0:0:0:0:0:0:0:1", {"[::1]"}),
    ("Reports.Example.Internal.", {"reports.example.internal"}),
    ("0.0.0.0", set()),
    ("::", set()),
])
def test_host_header_names_of_a_bound_address(bound: str, names: set[str]) -> None:
    assert host_header_names(bound) == names


@pytest.mark.parametrize("bad", ["", "proxy.example:443", "https://proxy.example",
                                 "proxy.example/reports", "*.example", "0.0.0.0", "a b"])
def test_bad_allowed_host_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a host name or an address"):
        parse_allowed_host(bad)


@given(st.text(max_size=300))
def test_allowed_host_parser_returns_a_plain_name_or_refuses(text: str) -> None:
    # Given any text / When parsed / Then one lowercase name without port or path, or refused
    try:
        name = parse_allowed_host(text)
    except ValueError:
        return
    assert name == name.lower() and name
    assert "/" not in name and " " not in name and "*" not in name
    assert ":" not in name or (name.startswith("[") and name.endswith("]"))


def test_accepted_hosts_are_the_bound_names_plus_the_allowed() -> None:
    assert accepted_hosts("127.0.0.60", ["proxy.example.internal"]) == {
        "127.0.0.60", "proxy.example.internal"}
    assert accepted_hosts("0.0.0.0", ["ports.example.internal"]) == {"ports.example.internal"}


# -- serve, for real --------------------------------------------------------------------------


def test_serve_on_127_0_0_60_answers_on_the_url_it_prints(tmp_path: Path) -> None:
    # Given serve bound to 127.0.0.60 (a fresh store)
    with serve_process(f"chdb://{tmp_path / 'store'}") as (port, line):
        # Then the line it prints names that URL
        assert line.strip() == (f"portwatch: serving the reports on http://{ADDRESS}:{port}/ "
                                "(loopback only); Ctrl-C stops")
        # When a browser opens it (Host: 127.0.0.60:port) / Then the pages answer
        status, body = get(ADDRESS, port, "/api/v1/list", f"{ADDRESS}:{port}")
        assert status == 200 and json.loads(body)["total"] == 0
        assert get(ADDRESS, port, "/", f"{ADDRESS}:{port}")[0] == 200
        assert get(ADDRESS, port, "/", "localhost")[0] == 200
        # And a foreign Host (DNS rebinding) is refused, naming what is accepted
        status, body = get(ADDRESS, port, "/api/v1/list", f"evil.example:{port}")
        assert status == 421
        assert body == ("portwatch: Host header refused; this server answers to 127.0.0.1, "
                        "127.0.0.60, ::1, [::1], localhost only (serve --allowed-host adds "
                        "a name)\n")


def test_serve_allowed_host_adds_a_reverse_proxy_name(tmp_path: Path) -> None:
    # Given serve with --allowed-host for a reverse proxy's name (any case)
    with serve_process(f"chdb://{tmp_path / 'store'}",
                       "--allowed-host", "Reports.Example.Internal") as (port, _):
        # When the proxy forwards with its own Host / Then it is answered
        assert get(ADDRESS, port, "/api/v1/list", "reports.example.internal")[0] == 200
        assert get(ADDRESS, port, "/api/v1/list", f"{ADDRESS}:{port}")[0] == 200
        assert get(ADDRESS, port, "/api/v1/list", "other.example.internal")[0] == 421


def test_serve_bad_allowed_host_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", ADDRESS, "--allowed-host", "proxy.example:443",
                     "--store", f"chdb://{tmp_path / 'store'}")
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "portwatch: error: --allowed-host 'proxy.example:443' is not a host name or an address "
        "(no port, scheme, path or wildcard)"]


def test_listening_line_brackets_ipv6() -> None:
    assert listening_line("::1", 8765, "") == \
        "serving the reports on http://[::1]:8765/ (loopback only)"


# -- with a token (the chart's shape: 0.0.0.0 behind an Ingress) ------------------------------


@pytest.fixture
def token_server(shared_chdb_path: Path) -> Iterator[int]:
    from portwatch.web.cli import web_app

    with scratch_store(shared_chdb_path, "hosts") as db:
        app: Any = web_app(db, "0.0.0.0", TOKEN, allowed_hosts=["ports.example.internal"])
        # Served on loopback only: the app is built for a 0.0.0.0 bind, the socket is not.
        with serve(app) as served:
            yield int(served.base.rsplit(":", 1)[1])


def test_token_server_with_allowed_host_checks_host_but_not_healthz(token_server: int) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    # The Ingress host with the token: answered
    assert get("127.0.0.1", token_server, "/api/v1/list", "ports.example.internal",
               bearer)[0] == 200
    # kubectl port-forward (Host: localhost): answered
    assert get("127.0.0.1", token_server, "/api/v1/list", f"localhost:{token_server}",
               bearer)[0] == 200
    # Another name, even with the token: refused
    assert get("127.0.0.1", token_server, "/api/v1/list", "evil.example", bearer)[0] == 421
    # The kubelet's probe (Host: the pod IP, no token): answered
    assert get("127.0.0.1", token_server, "/healthz", "10.1.2.3:8765") == (200, "ok\n")


@pytest.mark.parametrize(("path", "location"), [
    ("//evil.example/x", "/evil.example/x"),
    ("/%2F%2Fevil.example", "/evil.example"),
    ("/\\evil.example/y", "/%5Cevil.example/y"),  # arrives encoded: one slash, safe
    ("/list", "/list"),
])
def test_the_token_login_redirect_stays_on_this_host(token_server: int, path: str,
                                                     location: str) -> None:
    # Given a first visit with ?token= on a path that starts with two slashes (a browser
    # resolves "//evil.example/x" to another site)
    conn = http.client.HTTPConnection("127.0.0.1", token_server, timeout=60)
    try:
        conn.request("GET", f"{path}?token={TOKEN}&b=1",
                     headers={"Host": "ports.example.internal"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    # Then the redirect that drops the token points at a path on this host
    assert response.status == 303
    assert response.getheader("location") == f"{location}?b=1"
    assert "portwatch_token=" in (response.getheader("set-cookie") or "")
