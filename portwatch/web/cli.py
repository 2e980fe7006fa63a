"""``portwatch serve``: the web reports on 127.0.0.1 by default.

Owns: the bind-address policy (loopback needs nothing; any other address needs a token
from ``--token`` or PORTWATCH_WEB_TOKEN and refuses to start without one), opening the
store in this process (an embedded store allows one process: the server owns it), and
the ``serve`` command; the HTTP server itself is started by ``portwatch.web.server``.

Must not touch: any network but the listening socket; the store is only read.
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from stream_processors.store import Store

TOKEN_ENV = "PORTWATCH_WEB_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MIN_TOKEN_LENGTH = 16


class BindError(ValueError):
    """The bind address and token do not make a safe server; the message says why."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def check_bind(host: str, token: str) -> None:
    """Loopback: fine without a token. Anything else: a token of 16+ characters."""
    if is_loopback(host):
        return
    if not token:
        raise BindError(
            f"refusing to serve on {host}: any address other than loopback needs a token "
            f"(--token or {TOKEN_ENV}); for example {TOKEN_ENV}={secrets.token_urlsafe(24)}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise BindError(f"the token is too short ({len(token)} characters): use at least "
                        f"{MIN_TOKEN_LENGTH}, for example {secrets.token_urlsafe(24)}")


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ValueError says why."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not PORT or HOST:PORT (port 1-65535)")
    return host, int(port_text)


def web_app(db: Store, host: str, token: str, *, use_cache: bool = True,
            cookie_secure: bool = False,
            trusted_proxies: frozenset[str] = frozenset()) -> Starlette:
    """The reports app over ``db`` with the bind policy applied (BindError says why)."""
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    check_bind(host, token)
    return create_app(ReportService(db, use_cache=use_cache),
                      token=token, loopback_only=is_loopback(host) and not token,
                      cookie_secure=cookie_secure, trusted_proxies=trusted_proxies)


def parse_trusted_proxies(values: tuple[str, ...]) -> frozenset[str]:
    """``--trusted-proxy`` addresses, canonical (the form ``request.client`` reports);
    BindError for anything that is not an address."""
    proxies = set()
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                proxies.add(str(ipaddress.ip_address(item.strip().strip("[]"))))
            except ValueError:
                raise BindError(f"--trusted-proxy {item.strip()!r} is not an IP address") \
                    from None
    return frozenset(proxies)


def listening_line(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return (f"serving the reports on http://{shown}:{port}/ "
            f"({'token required' if token else 'loopback only'})")


@click.command("serve")
@click.option("--store", envvar="PORTWATCH_STORE", default=None, metavar="URL",
              help="Where findings live: chdb:///path or clickhouse://user@host:8123/db.")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on. Anything but loopback requires a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, help="TCP port to listen on.")
@click.option("--token", envvar=TOKEN_ENV, default="", metavar="TOKEN", show_envvar=True,
              help="Require this token (Authorization: Bearer, or ?token= once per browser).")
@click.option("--no-cache", is_flag=True, help="Run every report query on every request.")
@click.option("--cookie-secure", is_flag=True, envvar="PORTWATCH_WEB_COOKIE_SECURE",
              help="Mark the token cookie Secure: set it when a TLS proxy serves the pages.")
@click.option("--trusted-proxy", "trusted_proxy", multiple=True, metavar="ADDRESS",
              envvar="PORTWATCH_WEB_TRUSTED_PROXIES",
              help="A reverse proxy whose X-Forwarded-Proto is believed (repeatable or "
                   "comma-separated): https from it marks the token cookie Secure.")
def serve(store: str | None, host: str, port: int, token: str, no_cache: bool,
          cookie_secure: bool, trusted_proxy: tuple[str, ...]) -> None:
    """Serve the four reports as web pages and a JSON API.

    \b
    Pages:  /  (Summary)   /list   /products   /ciphers
    API:    /api/v1/summary  /api/v1/list  /api/v1/products  /api/v1/ciphers
            (same filters as `portwatch report`, plus sort, direction, page, per_page)

    Listens on 127.0.0.1 by default. Binding any other address requires a token.
    """
    from portwatch.assembly import Assembly
    from portwatch.console import EXIT_RUNTIME, EXIT_USAGE, fail, settings_from
    from portwatch.web.server import ListenError, serve_forever

    try:
        check_bind(host, token)
        proxies = parse_trusted_proxies(trusted_proxy)
    except BindError as exc:
        fail(str(exc), EXIT_USAGE)
    db = Assembly(settings_from(store=store)).open_store()
    try:
        app = web_app(db, host, token, use_cache=not no_cache, cookie_secure=cookie_secure,
                      trusted_proxies=proxies)

        def listening() -> None:
            click.echo(f"portwatch: {listening_line(host, port, token)}; Ctrl-C stops",
                       err=True)

        try:
            serve_forever(app, host, port, on_listening=listening)
        except ListenError as exc:
            fail(str(exc), EXIT_RUNTIME)
    finally:
        db.close()
    sys.stderr.flush()


__all__ = ["BindError", "check_bind", "is_loopback", "listening_line", "parse_listen", "serve",
           "web_app"]
