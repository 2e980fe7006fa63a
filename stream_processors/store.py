"""The store: one class over the clickhouse-connect client, two URL schemes.

``chdb:///path`` opens the embedded ClickHouse engine (chdb, through
clickhouse-connect's ``interface="chdb"``) and ``clickhouse://user@host:8123/db``
(or ``clickhouses://`` for HTTPS) a server. Both run the same DDL
(schemas/ddl.sql) and the same report SQL (schemas/reports/*.sql), with
parameters bound server-side, never formatted into SQL (IVRE's ``DB.from_url``
pattern: scheme -> backend, unknown scheme -> one clear error).

Owns: connecting, schema creation, inserts of findings and host scans, running
reports. Must not touch the network beyond its ClickHouse connection.

chdb allows one process per database path (a file lock): a second process gets
``StoreBusy`` with a message that says what to do, not a lock traceback.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import platformdirs

from schemas import REPORTS, ddl_statements, report_parameters, report_sql
from schemas.records import Finding, HostScan, ProbeStatus

ACCEPTED_SCHEMES = ("chdb", "clickhouse", "clickhouses")
DEFAULT_DATABASE = "portwatch"
PASSWORD_ENV = "PORTWATCH_CLICKHOUSE_PASSWORD"
BANNER_CAP = 1024  # characters of banner kept per observation
PIVOT_CAP = 512  # characters of an HTTP title/redirect/header kept (the prober caps at 256)
JARM_CAP = 62  # a JARM is 62 hex characters
SCHEMA_VERSION = 4  # layout of schemas/ddl.sql; bump with every change there

OBSERVATION_COLUMNS = (
    "scan_id", "target", "hostname", "organization", "asset", "ip", "proto", "port", "state",
    "engine", "service", "product", "version", "extra_info", "cpe", "banner", "method",
    "confidence", "is_tls", "tls_status", "tls_grade", "cdn_provider", "cdn_source",
    "is_cdn_expected", "risk_color", "risk_reason", "observed_at",
    "http_title", "http_redirect", "http_server", "http_powered_by", "favicon_mmh3", "jarm",
)
HOST_SCAN_COLUMNS = (
    "scan_id", "shard_id", "target", "hostname", "organization", "asset", "ip", "started_at",
    "finished_at", "ports_scanned", "open_ports", "status", "is_tarpit", "note",
)
TLS_PROBE_COLUMNS = (
    "scan_id", "target", "ip", "port", "status", "error", "versions", "grade", "grade_reason",
    "observed_at",
)
TLS_CIPHER_COLUMNS = (
    "scan_id", "target", "ip", "port", "tls_version", "iana_name", "openssl_name", "strength",
    "reason", "kex_group", "kex_bits", "preference", "observed_at",
)
CERTIFICATE_COLUMNS = (
    "scan_id", "target", "ip", "port", "chain_position", "subject", "sans", "issuer",
    "not_before", "not_after", "key_type", "key_bits", "signature_algorithm", "is_self_signed",
    "is_expired", "is_hostname_match", "sha256", "observed_at",
)


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message is one line for the user."""


class StoreBusy(StoreError):
    """Another process holds the embedded store."""


class UnknownStoreScheme(StoreError):
    pass


def default_store_url() -> str:
    return f"chdb://{Path(platformdirs.user_data_dir('portwatch')) / 'store'}"


@dataclass(frozen=True, slots=True)
class StoreLocation:
    scheme: str
    path: str = ""  # chdb
    host: str = ""
    port: int = 8123
    username: str = "default"
    database: str = DEFAULT_DATABASE

    @classmethod
    def parse(cls, url: str) -> StoreLocation:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ACCEPTED_SCHEMES:
            raise UnknownStoreScheme(
                f"unknown store URL {url!r}: use chdb:///path or "
                "clickhouse://user@host:8123/database"
            )
        query = parse_qs(parts.query)
        if scheme == "chdb":
            path = unquote(parts.netloc + parts.path)
            if not path:
                raise StoreError(f"store URL {url!r} has no path: use chdb:///path/to/store")
            database = query.get("database", [DEFAULT_DATABASE])[0]
            return cls(scheme, path=os.path.expanduser(path), database=database)
        if not parts.hostname:
            raise StoreError(f"store URL {url!r} has no host")
        database = parts.path.strip("/") or DEFAULT_DATABASE
        try:
            port = parts.port or (8443 if scheme == "clickhouses" else 8123)
        except ValueError as exc:
            raise StoreError(f"store URL {url!r}: {exc}") from exc
        return cls(
            scheme, host=parts.hostname, port=port,
            username=unquote(parts.username or "default"), database=database,
        )


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


# chdb paths this process has opened: chdb keeps one engine per process, so a second
# Store on the same path shares it and must not mistake its own lock for another's.
_OPENED_CHDB_PATHS: set[str] = set()


def _is_held_by_another_process(path: str) -> bool:
    """True when another process runs the embedded engine on ``path``.

    The engine holds ``flock(LOCK_EX | LOCK_NB)`` on ``<path>/status`` while it runs and
    removes the file on a clean exit. chdb reports a held lock only as "Error
    initializing EmbeddedServer" (the real reason goes straight to fd 2), so look first.
    """
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fd = os.open(os.path.join(path, "status"), os.O_RDONLY)
    except OSError:
        return False  # no engine has it open (or never had)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when fd closes
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _busy_error(path: str) -> StoreBusy:
    return StoreBusy(
        f"the store at {path} is in use by another portwatch process "
        "(embedded stores allow one process at a time): wait for it to finish, "
        "use another --store, or run a ClickHouse server; a sink started with "
        "`portwatch process --serve PORT` serves its reports on the web meanwhile"
    )


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Cannot lock file" in text or "already running" in text or "already initialized" in text


class Store:
    """ClickHouse-backed store; the same code for chdb and for a server."""

    def __init__(self, location: StoreLocation, *, create: bool = True) -> None:
        import clickhouse_connect  # lazy: importing it costs ~0.3 s

        self.location = location
        self._lock = threading.Lock()  # clickhouse-connect clients are not thread-safe
        try:
            if location.scheme == "chdb":
                Path(location.path).mkdir(parents=True, exist_ok=True)
                resolved = str(Path(location.path).resolve())
                if resolved not in _OPENED_CHDB_PATHS and _is_held_by_another_process(resolved):
                    raise _busy_error(location.path)
                bootstrap = clickhouse_connect.get_client(interface="chdb", path=location.path)
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{location.database}`")
                self._client = clickhouse_connect.get_client(
                    interface="chdb", path=location.path, database=location.database
                )
                _OPENED_CHDB_PATHS.add(resolved)
            else:
                self._client = clickhouse_connect.get_client(
                    interface="https" if location.scheme == "clickhouses" else "http",
                    host=location.host, port=location.port, username=location.username,
                    password=os.environ.get(PASSWORD_ENV, ""), database=location.database,
                )
        except StoreBusy:
            raise
        except Exception as exc:  # the drivers raise many types; translate to one line
            if _is_lock_error(exc):
                raise _busy_error(location.path) from exc
            where = location.path or f"{location.host}:{location.port}"
            text = str(exc).strip()
            first_line = text.splitlines()[0] if text else type(exc).__name__
            raise StoreError(f"cannot open the store at {where}: {first_line}") from exc
        if create:
            self.ensure_schema()

    @classmethod
    def from_url(cls, url: str | None = None, *, create: bool = True) -> Store:
        return cls(StoreLocation.parse(url or default_store_url()), create=create)

    # -- schema -------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create what is missing; refuse a store laid out by another portwatch version
        (the DDL is idempotent, so an old table would otherwise stay, silently wrong)."""
        with self._lock:
            existing = {r[0] for r in self._client.query(
                "SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}
            if "findings" in existing:
                found = 0
                if "schema_version" in existing:
                    rows = self._client.query("SELECT max(version) FROM schema_version")
                    found = int(rows.result_rows[0][0] or 0)
                if found != SCHEMA_VERSION:
                    where = self.location.path or f"{self.location.host}/{self.location.database}"
                    raise StoreError(
                        f"the store at {where} has layout version {found or 'unknown'}, this "
                        f"portwatch needs {SCHEMA_VERSION}: use a new --store (or another "
                        "database) and rescan")
            for statement in ddl_statements():
                self._client.command(statement)
            if "findings" not in existing:
                self._client.command(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION})")

    # -- writes -------------------------------------------------------------------------

    def _insert(self, table: str, columns: Sequence[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        with self._lock:
            self._client.insert(table, rows, column_names=list(columns))

    def insert_findings(self, findings: Iterable[Finding]) -> int:
        """Insert findings (observations, TLS probes, suites, certificates). Idempotent."""
        observations: list[list[Any]] = []
        probes: list[list[Any]] = []
        ciphers: list[list[Any]] = []
        certs: list[list[Any]] = []
        for f in findings:
            p, t, s, tls = f.port, f.port.target, f.service, f.tls
            # The enums are str subclasses: written as they are (``.value`` costs on
            # this per-row path, ~2 us a row).
            observations.append([
                p.scan_id, t.target, t.hostname, t.organization, t.asset, t.ip, p.proto,
                p.port, p.state, p.engine, s.service, s.product, s.version, s.extra_info,
                s.cpe, s.banner[:BANNER_CAP], s.method, s.confidence if 0 <= s.confidence < 256
                else max(0, min(255, s.confidence)),
                int(s.is_tls), tls.status, tls.grade, f.cdn.provider, f.cdn.source,
                int(f.cdn.is_expected_port), f.risk_color, f.risk_reason, p.observed_at,
                s.http_title[:PIVOT_CAP], s.http_redirect[:PIVOT_CAP],
                s.http_server[:PIVOT_CAP], s.http_powered_by[:PIVOT_CAP], s.favicon_mmh3,
                s.jarm[:JARM_CAP],
            ])
            if tls.status is not ProbeStatus.NOT_SCHEDULED:
                base = [p.scan_id, t.target, t.ip, p.port]
                probes.append([*base, tls.status, tls.error, list(tls.versions),
                               tls.grade, tls.grade_reason, p.observed_at])
                for c in tls.suites:
                    ciphers.append([*base, c.tls_version, c.iana_name, c.openssl_name,
                                    c.strength, c.reason, c.kex_group, c.kex_bits,
                                    c.preference, p.observed_at])
                for cert in tls.certificates:
                    certs.append([*base, cert.chain_position, cert.subject, list(cert.sans),
                                  cert.issuer, cert.not_before, cert.not_after, cert.key_type,
                                  cert.key_bits, cert.signature_algorithm,
                                  int(cert.is_self_signed), int(cert.is_expired),
                                  int(cert.is_hostname_match), cert.sha256, p.observed_at])
        self._insert("port_observations", OBSERVATION_COLUMNS, observations)
        self._insert("tls_probes", TLS_PROBE_COLUMNS, probes)
        self._insert("tls_ciphers", TLS_CIPHER_COLUMNS, ciphers)
        self._insert("certificates", CERTIFICATE_COLUMNS, certs)
        return len(observations)

    def insert_host_scans(self, scans: Iterable[HostScan]) -> int:
        """One row per (scan, host, shard): a host split over several shards sums its
        ports in the Summary, and a retried shard replaces its own row."""
        rows = [
            [h.scan_id, h.shard_id, h.target.target, h.target.hostname, h.target.organization,
             h.target.asset, h.target.ip, h.started_at, h.finished_at, h.ports_scanned,
             h.open_ports, h.status, int(h.is_tarpit), h.note]
            for h in scans
        ]
        self._insert("host_scans", HOST_SCAN_COLUMNS, rows)
        return len(rows)

    # -- reads --------------------------------------------------------------------------

    def report(self, name: str, filters: Mapping[str, Any] | None = None,
               *, limit: int = 0, offset: int = 0) -> Report:
        """Run one report's SQL unchanged, binding every parameter it declares.

        Unset filters bind their neutral value ('' or 0), which the SQL reads as "no filter".
        """
        if name not in REPORTS:
            raise StoreError(f"unknown report {name!r}: choose one of {', '.join(REPORTS)}")
        wanted = report_parameters(name)
        given = dict(filters or {})
        unknown = set(given) - wanted
        if unknown:
            raise StoreError(f"report {name} has no filter {', '.join(sorted(unknown))}")
        params: dict[str, Any] = {}
        for key in wanted:
            value = given.get(key)
            if key in ("port", "history"):
                params[key] = int(value or 0)
            elif key == "limit":
                params[key] = limit if limit > 0 else 2**62
            elif key == "offset":
                params[key] = max(0, offset)
            else:
                params[key] = "" if value is None else str(value)
        with self._lock:
            result = self._client.query(report_sql(name), parameters=params)
        return Report(name, tuple(result.column_names), [tuple(r) for r in result.result_rows])

    def select(self, name: str, sql: str, parameters: Mapping[str, Any] | None = None) -> Report:
        """Read-only query with its column names (parameters bound server-side)."""
        with self._lock:
            result = self._client.query(sql, parameters=dict(parameters or {}))
        return Report(name, tuple(result.column_names), [tuple(r) for r in result.result_rows])

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Read-only helper for tests and tools; parameters bound server-side."""
        with self._lock:
            rows = self._client.query(sql, parameters=dict(parameters or {})).result_rows
        return [tuple(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing must never mask the real error
                pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
