"""``portwatch serve``: the web reports on 127.0.0.1 by default.

Owns: the bind-address policy (loopback needs nothing; any other address needs a token
from ``--token`` or PORTWATCH_WEB_TOKEN and refuses to start without one), the accepted
Host set (the names of the address it binds, loopback names on loopback, plus
``--allowed-host`` for a reverse proxy; DNS rebinding defence), opening the
store in this process (an embedded store allows one process: the server owns it), and
the ``serve`` command; the HTTP server itself is started by ``portwatch.web.server``.

Must not touch: any network but the listening socket; the store is only read.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import click

from schemas.bounded import is_digits
from schemas.records import RecordError, normalize_ip

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
    try:  # ::ffff:127.0.0.1 is loopback too (Python 3.11's ipaddress says it is not)
        return ipaddress.ip_address(normalize_ip(host.strip("[]"))).is_loopback
    except (RecordError, ValueError):
        return False  # a name other than localhost may resolve anywhere


def check_bind(host: str, token: str) -> None:
    """Loopback: fine without a token. Anything else: a token of 16+ characters. A token
    given is one of 16+ characters on loopback too (' ' served there, "token required":
    a review). First of all, ``host`` must be an address or a name: '' (an unset
    variable) was told to get a token, and with one it listened on every interface."""
    problem = host_problem(host)
    if problem:
        raise BindError(f"--host {host[:60]!r} {problem}")
    if is_loopback(host) and not token:
        return
    if not token:
        raise BindError(
            f"refusing to serve on {host}: any address other than loopback needs a token "
            f"(--token or {TOKEN_ENV}); for example {TOKEN_ENV}={secrets.token_urlsafe(24)}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise BindError(f"the token is too short ({len(token)} characters): use at least "
                        f"{MIN_TOKEN_LENGTH}, for example {secrets.token_urlsafe(24)}")


# A DNS name (RFC 1123 labels) or an address; no port, no path, no wildcard.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                        r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def host_header_names(host: str) -> frozenset[str]:
    """The Host header names (port stripped, lowercase) that reach ``host``: an IPv4
    address or a name as is, an IPv6 address in brackets; nothing for a wildcard bind,
    whose reachable names are unknowable here."""
    bare = host.strip().strip("[]").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return frozenset({bare}) if _HOST_NAME.match(bare) else frozenset()
    if address.is_unspecified:
        return frozenset()
    return frozenset({f"[{address.compressed}]" if address.version == 6 else str(address)})


def parse_allowed_host(text: str) -> str:
    """One ``--allowed-host`` value -> its Host header name; ValueError says why."""
    names = host_header_names(text)
    if len(names) != 1 or not text.strip():
        raise ValueError(f"--allowed-host {text!r} is not a host name or an address "
                         "(no port, scheme, path or wildcard)")
    return next(iter(names))


def accepted_hosts(host: str, allowed: Iterable[str] = ()) -> frozenset[str]:
    """What ``web_app`` adds to the Host check: the bound address's own names plus
    ``allowed`` (already parsed). Loopback names are always added by the app."""
    return host_header_names(host) | frozenset(allowed)


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); ValueError says why."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    host = host.strip("[]") or DEFAULT_HOST
    if not is_digits(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not PORT or HOST:PORT (port 1-65535)")
    # the host as an address or a name: '999.1.1.1' went on to contact the broker and
    # failed there, exit 1, instead of as bad input (a review, 2026-12-06)
    problem = host_problem(host)
    if problem:
        raise ValueError(f"{text[:80]!r}: {host[:60]!r} {problem}")
    return host, int(port_text)


def host_problem(host: str) -> str:
    """Why ``host`` cannot be listened on ("" when it can): an address (an IPv6 one with
    or without brackets and a link-local zone, fe80::1%eth0) or a host name."""
    from producers.targets import looks_like_hostname
    from schemas.filters import is_ip_address

    address, percent, zone = host.strip("[]").partition("%")
    if is_ip_address(address) and (not percent or looks_like_hostname(zone)):
        return ""
    if looks_like_hostname(host):
        return ""
    return "is not an address or a hostname (0.0.0.0 listens on every interface)"


def web_app(db: Store, host: str, token: str, *, use_cache: bool = True,
            cookie_secure: bool = False,
            trusted_proxies: frozenset[str] = frozenset(),
            allowed_hosts: Iterable[str] = ()) -> Starlette:
    """The reports app over ``db`` with the bind policy applied (BindError says why).

    Host check: on loopback without a token, loopback names, the bound address and
    ``allowed_hosts``; with a token, the same set when ``allowed_hosts`` is given, and
    no check otherwise (the token guards the pages). ``cookie_secure`` /
    ``trusted_proxies``: when the token cookie is marked Secure."""
    from portwatch.web.app import create_app
    from portwatch.web.service import ReportService

    check_bind(host, token)
    # the risk chart's rows of what was stored without a refresh (rows another tool
    # wrote) before the pages serve them: the pages themselves only read. A store that
    # refuses the write (a read-only user) is one warning line.
    db.refresh_risk_rows()
    loopback_only = is_loopback(host) and not token
    allowed = frozenset(allowed_hosts)
    extra = accepted_hosts(host, allowed) if loopback_only or allowed else frozenset()
    return create_app(ReportService(db, use_cache=use_cache),
                      token=token, loopback_only=loopback_only, extra_hosts=extra,
                      cookie_secure=cookie_secure, trusted_proxies=trusted_proxies)


def parse_trusted_proxies(values: tuple[str, ...]) -> frozenset[str]:
    """``--trusted-proxy`` addresses, canonical (``normalize_ip``: an IPv4-mapped address
    is its IPv4 one, as ``is_served_over_tls`` reads the client); BindError for anything
    that is not an address."""
    proxies = set()
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                proxies.add(normalize_ip(item.strip().strip("[]")))
            except RecordError:
                raise BindError(f"--trusted-proxy {item.strip()!r} is not an IP address") \
                    from None
    return frozenset(proxies)


def beside_serve_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--allowed-host``, ``--cookie-secure`` and ``--trusted-proxy`` of a command that
    serves the web reports beside its work (``process --serve``, ``watch --serve``), as
    ``portwatch serve`` takes them: without them a ``watch --serve`` behind a TLS proxy
    never set a Secure cookie, and one behind a proxy without a token answered the
    proxy's Host name with 421 (a review)."""
    for option in reversed((
            click.option("--allowed-host", "allowed_host", multiple=True, metavar="NAME",
                         help="--serve also answers to this Host name (as `portwatch "
                              "serve`)."),
            click.option("--cookie-secure", is_flag=True, envvar="PORTWATCH_WEB_COOKIE_SECURE",
                         help="--serve marks the token cookie Secure (as `portwatch "
                              "serve`)."),
            click.option("--trusted-proxy", "trusted_proxy", multiple=True,
                         metavar="ADDRESS", envvar="PORTWATCH_WEB_TRUSTED_PROXIES",
                         help="--serve believes X-Forwarded-Proto from this proxy (as "
                              "`portwatch serve`)."))):
        command = option(command)
    return command


def parse_proxy_options(allowed_host: Iterable[str], trusted_proxy: Iterable[str]
                        ) -> tuple[list[str], frozenset[str]]:
    """``--allowed-host`` and ``--trusted-proxy`` values, parsed: ValueError says why."""
    return ([parse_allowed_host(name) for name in allowed_host],
            parse_trusted_proxies(tuple(trusted_proxy)))


def listening_line(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return (f"serving the reports on http://{shown}:{port}/ "
            f"({'token required' if token else 'loopback only'})")


@click.command("serve")
@click.option("--store", envvar="PORTWATCH_STORE", default=None, metavar="URL",
              help="Where findings live: chdb:///path or clickhouse://user@host:8123/db.")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on. Anything but loopback requires a token.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT,
              show_default=True, help="TCP port to listen on.")
@click.option("--token", envvar=TOKEN_ENV, default="", metavar="TOKEN", show_envvar=True,
              help="Require this token (Authorization: Bearer, or ?token= once per browser).")
@click.option("--allowed-host", "allowed_host", multiple=True, metavar="NAME",
              help="Also answer to this Host name (a reverse proxy's or an Ingress's name); "
                   "repeatable. The address bound is always accepted.")
@click.option("--no-cache", is_flag=True, help="Run every report query on every request.")
@click.option("--cookie-secure", is_flag=True, envvar="PORTWATCH_WEB_COOKIE_SECURE",
              help="Mark the token cookie Secure: set it when a TLS proxy serves the pages.")
@click.option("--trusted-proxy", "trusted_proxy", multiple=True, metavar="ADDRESS",
              envvar="PORTWATCH_WEB_TRUSTED_PROXIES",
              help="A reverse proxy whose X-Forwarded-Proto is believed (repeatable or "
                   "comma-separated): https from it marks the token cookie Secure.")
def serve(store: str | None, host: str, port: int, token: str, allowed_host: tuple[str, ...],
          no_cache: bool, cookie_secure: bool, trusted_proxy: tuple[str, ...]) -> None:
    """Serve the four reports as web pages and a JSON API.

    \b
    Pages:  /  (Summary)   /list   /products   /ciphers   /changes   /target
    API:    /api/v1/summary  /api/v1/list  /api/v1/products  /api/v1/ciphers
            (`portwatch report`'s filters as parameters: target, org, product, version,
            port, color...; plus page, per_page, and sort, direction on list, and
            exact_target, ip, proto on list: one host exactly, one protocol of a port)
            /api/v1/changes (the Changes page's filters, from, to, limit)

    Listens on 127.0.0.1 by default. Binding an address off loopback requires a token.
    Answers to the Host names of the address it binds (and loopback names), plus each
    --allowed-host; other Host headers get 421 (DNS rebinding defence). With a token and
    no --allowed-host, any Host is answered: the token guards the pages.

    \b
    Examples:
      portwatch serve
      portwatch serve --port 8080 --store chdb:///var/lib/portwatch/store
      portwatch serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    from portwatch.assembly import Assembly
    from portwatch.console import EXIT_RUNTIME, EXIT_USAGE, fail, settings_from
    from portwatch.store_holder import advertise
    from portwatch.web.server import ListenError, serve_forever

    try:
        check_bind(host, token)
        allowed, proxies = parse_proxy_options(allowed_host, trusted_proxy)
    except ValueError as exc:  # BindError included
        fail(str(exc), EXIT_USAGE)
    assembly = Assembly(settings_from(store=store))
    # An embedded store must exist (a mistyped path is refused, not served empty); a
    # server's tables may still be on their way (the chart starts web beside process).
    db = assembly.open_store(create=assembly.store_location().scheme != "chdb")
    try:
        app = web_app(db, host, token, use_cache=not no_cache, allowed_hosts=allowed,
                      cookie_secure=cookie_secure, trusted_proxies=proxies)
        advert = contextlib.ExitStack()

        def listening() -> None:
            click.echo(f"portwatch: {listening_line(host, port, token)}; Ctrl-C stops",
                       err=True)
            if db.location.scheme == "chdb":  # `report` on this store asks us meanwhile
                advert.enter_context(advertise(db, host, port, token, "serve"))

        try:
            with advert:
                serve_forever(app, host, port, on_listening=listening,
                              on_stopped=advert.close)
        except ListenError as exc:
            fail(str(exc), EXIT_RUNTIME)
    finally:
        db.close()
    sys.stderr.flush()


__all__ = ["BindError", "accepted_hosts", "beside_serve_options", "check_bind",
           "host_header_names", "is_loopback", "listening_line", "parse_allowed_host",
           "parse_listen", "parse_proxy_options", "serve", "web_app"]
