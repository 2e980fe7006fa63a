"""Reading an embedded store through the process that holds it.

chdb allows one process per store path. While ``portwatch serve``, ``portwatch process
--serve`` or ``portwatch watch --serve`` holds a store, it advertises where it serves in a
small file in the store's directory (``ADVERT_FILE``: pid, loopback URL, token; mode 0600,
removed at exit), and ``portwatch report`` on that store asks the holder's JSON API
instead of failing with "in use". The answer is turned back into the ``Report`` the CLI
renders, so the output is the same either way.

Owns: the advert file (write, remove, bounded and validated read), and the HTTP client of
the JSON API (paged, bounded in time and size). The file is input like any other: a stale
one (its pid gone), an oversized or malformed one, or one naming an address that is not this
machine's is ignored, never followed.

Must not touch: the store itself; any address but loopback or one bound on this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_processors.store import Report

ADVERT_FILE = ".portwatch-serve.json"
MAX_ADVERT_BYTES = 4096
MAX_TOKEN = 512
PER_PAGE = 1000  # the API's largest page
MAX_PAGES = 1000  # a million rows: beyond that, a report belongs on a server store
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
TIMEOUT_SECONDS = 60.0
_ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
# API objects back to the tuples the renderer reads (portwatch.render.jsonable's keys).
_PORT_KEYS = ("port", "proto", "color", "is_cdn_expected", "state")
_SUITE_KEYS = ("tls_version", "iana_name", "openssl_name", "strength", "reason", "kex_group",
               "kex_bits", "preference")


class HolderError(RuntimeError):
    """The holder advertised itself but did not answer usefully; the message says why."""


@dataclass(frozen=True, slots=True)
class Advert:
    """Where the process holding a store serves its JSON API."""

    pid: int
    url: str  # http://<address>:<port>
    token: str
    command: str  # "serve" or "process --serve", for the user's message
    # its reader setting: whether its List counts the Internet prior (an answer follows
    # the holder's setting, not the asker's: the asker is told when they differ)
    prevalence_prior: bool = True


def advert_url(host: str, port: int) -> str:
    """The URL a local client uses for a server bound to ``host``: a wildcard bind is
    reached on loopback; an address as is (brackets for IPv6)."""
    bare = host.strip("[]")
    if bare.lower() == "localhost":
        bare = "127.0.0.1"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = ipaddress.ip_address("127.0.0.1")  # a name: serve bound what it resolved to
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address.compressed}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}"


@contextlib.contextmanager
def advertise(store: Any, host: str, port: int, token: str,
              command: str) -> Iterator[Path]:
    """Write the advert of this process holding the chdb ``store`` for the life of the
    block (0600: it holds the token)."""
    path = Path(store.location.path) / ADVERT_FILE
    body = json.dumps({"pid": os.getpid(), "url": advert_url(host, port), "token": token,
                       "command": command,
                       "prevalence_prior": not store.default_parameters.get("no_prior")})
    temporary = path.with_name(f"{ADVERT_FILE}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body)
    os.replace(temporary, path)  # readers never see half a file
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _read_pid(path) == os.getpid():  # never remove a successor's advert
                path.unlink()


def _read_pid(path: Path) -> int | None:
    advert = parse_advert(_read_bounded(path))
    return advert.pid if advert else None


def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_ADVERT_BYTES + 1)
    except OSError:
        return b""


def _is_local_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, or an address this machine can bind (so it is one of its own)."""
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))  # binds locally; sends nothing
    except OSError:
        return False
    return True


def parse_advert(raw: bytes) -> Advert | None:
    """The advert in ``raw``, or None when it is not a well-formed advert for a local URL."""
    if not raw or len(raw) > MAX_ADVERT_BYTES:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    pid, url, token = data.get("pid"), data.get("url"), data.get("token", "")
    command = data.get("command", "serve")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**22:
        return None
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not token.isprintable():
        return None
    if command not in ("serve", "process --serve", "watch --serve"):
        return None
    if not isinstance(url, str) or len(url) > 100:
        return None
    match = re.fullmatch(r"http://(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):(\d{1,5})", url)
    if match is None or not 0 < int(match.group(2)) < 65536:
        return None
    try:
        address = ipaddress.ip_address(match.group(1).strip("[]"))
    except ValueError:
        return None
    if not _is_local_address(address):
        return None
    prior = data.get("prevalence_prior", True)
    return Advert(pid, url, token, command, prior if isinstance(prior, bool) else True)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def find_holder(store_path: str) -> Advert | None:
    """The live holder advertised in the store directory, if any."""
    advert = parse_advert(_read_bounded(Path(store_path) / ADVERT_FILE))
    if advert is None or advert.pid == os.getpid() or not _is_alive(advert.pid):
        return None
    return advert


def busy_message(store_path: str) -> str | None:
    """What to say when ``store_path`` is held by a process that advertises itself (a
    `serve`, a `watch --serve`): which one, and what works meanwhile. None: no live
    holder advertised (a scan, say), for the store's own message."""
    holder = find_holder(store_path) if store_path else None
    if holder is None:
        return None
    return (f"the store at {store_path} is held by `portwatch {holder.command}` (pid "
            f"{holder.pid}, serving {holder.url}): `portwatch report` and the web pages "
            "read through it; stop it to scan, prune or change this store, or give "
            "another --store")


def _api_filters(filters: Mapping[str, Any]) -> dict[str, str]:
    """CLI filters -> the API's query string names (the same names); neutral ones dropped."""
    return {k: str(v) for k, v in filters.items() if v not in ("", 0, None)}


def _get_json(advert: Advert, path: str,
              params: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, Any]:
    url = f"{advert.url}{path}?{urllib.parse.urlencode(params)}"
    headers = {"Accept": "application/json"}
    if advert.token:
        headers["Authorization"] = f"Bearer {advert.token}"
    request = urllib.request.Request(url, headers=headers)
    # No proxy: the holder is on this machine, and a proxy from the environment must not
    # see the token or the findings.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", "replace")
        exc.close()
        try:
            detail = str(json.loads(detail).get("error", detail))
        except (ValueError, AttributeError):
            pass
        raise HolderError(f"{advert.url} answered {exc.code}: {detail.strip()[:300]}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HolderError(f"{advert.url} did not answer: {reason}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise HolderError(f"{advert.url} sent more than {MAX_RESPONSE_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError:
        raise HolderError(f"{advert.url} did not send JSON") from None
    if not isinstance(data, dict):
        raise HolderError(f"{advert.url} sent an unexpected answer")
    return data


# The reports' time columns (DateTime64 in the store; the API sends them as ISO text).
# Only these go back to datetimes: a product, a title or a certificate's notAfter that a
# server wrote as "2024-01-01T00:00:00Z" is text, kept as sent.
TIME_COLUMNS = frozenset({"first_seen", "last_seen", "last_scanned", "tested_at",
                          "accepted_until", "observed_at"})


def _value(column: str, value: Any) -> Any:
    """One API value back to what the store returns for it."""
    if column in TIME_COLUMNS and isinstance(value, str) and _ISO_UTC.match(value):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    if column == "ports" and isinstance(value, list):
        # jsonable made the UInt8 flag a bool; the store gives 0/1. The state too: an
        # unconfirmed UDP port read "open" through a holder (a review)
        return [(*(item.get(k) for k in _PORT_KEYS[:3]), int(bool(item.get(_PORT_KEYS[3]))),
                 item.get(_PORT_KEYS[4], "open")) for item in value if isinstance(item, dict)]
    if column == "suites" and isinstance(value, list):
        return [tuple(item.get(k) for k in _SUITE_KEYS) for item in value
                if isinstance(item, dict)]
    if isinstance(value, list):
        return [_value(column, v) for v in value]
    return value


def remote_report(advert: Advert, name: str, filters: Mapping[str, Any], *,
                  limit: int = 0) -> Report:
    """The report as the holder's JSON API answers it, paged, as a ``Report``."""
    params = _api_filters(filters)
    columns: tuple[str, ...] = ()
    rows: list[tuple[Any, ...]] = []
    for page in range(1, MAX_PAGES + 1):
        data = _get_json(advert, f"/api/v1/{name}",
                         {**params, "page": str(page), "per_page": str(PER_PAGE)})
        got_columns, got_rows, pages = data.get("columns"), data.get("rows"), data.get("pages")
        if not (isinstance(got_columns, list) and all(isinstance(c, str) for c in got_columns)
                and isinstance(got_rows, list) and isinstance(pages, int)):
            raise HolderError(f"{advert.url} sent a {name} page without columns and rows")
        columns = tuple(got_columns)
        for row in got_rows:
            if not isinstance(row, dict):
                raise HolderError(f"{advert.url} sent a malformed row")
            rows.append(tuple(_value(c, row.get(c)) for c in columns))
        if (limit and len(rows) >= limit) or page >= pages:
            break
    return Report(name, columns, rows[:limit] if limit else rows)


def remote_changes(advert: Advert, params: Mapping[str, Any], *, limit: int
                   ) -> tuple[Report, bool]:
    """The What-changed report as the holder's ``/api/v1/changes`` answers it (one answer
    of at most ``limit`` events, newest first), as a ``Report``, and whether there were
    more. ``params``: that endpoint's filters (``from``/``to`` as datetimes)."""
    pairs = [(k, v.isoformat() if isinstance(v, datetime) else str(v))
             for k, v in params.items() if k != "kind" and v not in ("", 0, None)]
    pairs += [("kind", str(k)) for k in params.get("kind", ())]
    pairs.append(("limit", str(limit)))
    data = _get_json(advert, "/api/v1/changes", pairs)
    columns, rows = data.get("columns"), data.get("rows")
    if not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)
            and isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        raise HolderError(f"{advert.url} sent changes without columns and rows")
    return (Report("changes", tuple(columns),
                   [tuple(_value(c, r.get(c)) for c in columns) for r in rows]),
            data.get("capped") is True)


__all__ = ["ADVERT_FILE", "Advert", "HolderError", "advert_url", "advertise", "busy_message",
           "find_holder",
           "parse_advert", "remote_changes", "remote_report"]
