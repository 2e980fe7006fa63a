"""The store: one class over the clickhouse-connect client, two URL schemes.

``chdb:///path`` opens the embedded ClickHouse engine (chdb, through
clickhouse-connect's ``interface="chdb"``) and ``clickhouse://user@host:8123/db``
(or ``clickhouses://`` for HTTPS) a server. Both run the same DDL
(schemas/ddl.sql) and the same report SQL (schemas/reports/*.sql), with
parameters bound server-side, never formatted into SQL (IVRE's ``DB.from_url``
pattern: scheme -> backend, unknown scheme -> one clear error).

Owns: connecting, schema creation, inserts of findings and host scans (their rows:
``store_rows.py``), running
reports. Must not touch the network beyond its ClickHouse connection.

chdb allows one process per database path (a file lock): a second process gets
``StoreBusy`` with a message that says what to do, not a lock traceback.

Why one file: every statement goes through the one client under the one lock, and the
layout (DDL, migrations, the steps before the DDL) must change together with the reads
that map the engine's errors to ``StoreError``; the row builders and the report SQL
already live elsewhere (``store_rows.py``, ``schemas/``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import platformdirs

from schemas import REPORTS, bind_parameters, ddl_statements, report_parameters, report_sql
from schemas.records import Finding, HostScan, ProbeStatus
from stream_processors.risk_days import migrate_risk_days, refresh_risk_days
from stream_processors.store_rows import (
    CERTIFICATE_COLUMNS,
    HOST_SCAN_COLUMNS,
    OBSERVATION_COLUMNS,
    TLS_CIPHER_COLUMNS,
    TLS_PROBE_COLUMNS,
    certificate_rows,
    host_scan_row,
    observation_row,
    tls_cipher_rows,
    tls_probe_row,
)

log = logging.getLogger(__name__)

ACCEPTED_SCHEMES = ("chdb", "clickhouse", "clickhouses")
DEFAULT_DATABASE = "portwatch"
PASSWORD_ENV = "PORTWATCH_CLICKHOUSE_PASSWORD"
# A mutation (prune's deletes) is waited for this long at most; polled this often.
MUTATION_WAIT = 900.0
MUTATION_POLL = 0.1
# Free bytes a chdb store's disk must have before a mutation starts: on a full disk the
# engine writes the mutation's file empty, and the store no longer opens.
MUTATION_MIN_FREE = 64 * 2**20
# Seconds a server may take to answer one statement (reports run in well under one; a
# mutation is started, not waited for, by the statement: run_mutation polls it)
STATEMENT_TIMEOUT = 60
SCHEMA_VERSION = 22  # layout of schemas/ddl.sql; bump with every change there


def _incomplete_backfill() -> str:
    from stream_processors.changes import INCOMPLETE
    from stream_processors.history import PORT_STATE_COLUMNS

    # (the columns of layout 21: a later one, udp_reply, does not exist yet at this step)
    kept = [c for c in PORT_STATE_COLUMNS
            if c not in ("updated_at", "is_incomplete", "udp_reply")]
    key = "target, ip, proto, port, scan_id"
    cut = ("method = 'unidentified' AND ("
           + " OR ".join(f"startsWith(extra_info, '{r}')" for r in INCOMPLETE) + ")")
    # the scan's *latest* observation of the port was cut short: a resumed scan holds
    # the killed run's cut-short one and the full identification after it under one
    # scan id (any cut-short observation marked a port identified since: a review)
    return (f"INSERT INTO port_state ({', '.join([*kept, 'updated_at', 'is_incomplete'])}) "
            f"SELECT {', '.join(kept)}, updated_at + toIntervalMillisecond(1), 1 "
            f"FROM port_state FINAL WHERE is_incomplete = 0 AND ({key}) IN ("
            f"SELECT {key} FROM port_observations WHERE ({key}) IN ("
            f"SELECT {key} FROM port_observations WHERE {cut}) "
            f"GROUP BY {key} HAVING argMax({cut}, observed_at))")


# A statement of schemas/ddl.sql that makes a table or a view: (TABLE or VIEW, its name)
_DDL_OBJECT = re.compile(r"CREATE (TABLE|(?:MATERIALIZED )?VIEW) IF NOT EXISTS (\w+)\b")


def _ddl_statement(name: str) -> str:
    """The statement of schemas/ddl.sql that creates the table or view ``name`` (a
    migration step that replaces a view runs the DDL's own text, never a copy of it)."""
    (statement,) = [s for s in ddl_statements()
                    if (found := _DDL_OBJECT.match(s)) and found.group(2) == name]
    return statement


# How a store of layout N becomes N + 1 in place: a year of history must survive an
# upgrade of portwatch. Each step is additive and idempotent (a crash half-way re-runs
# it); a layout with no path to SCHEMA_VERSION is refused as before. The DDL runs first
# and creates what is missing, so a step only adds columns or backfills.
MIGRATIONS: dict[int, tuple[str | Callable[[Any], None], ...]] = {
    # 9 -> 10: host scans keep their shard's coverage (change recovery). Older rows read
    # as covering nothing, so a recovered old record closes nothing.
    9: ("ALTER TABLE host_scans ADD COLUMN IF NOT EXISTS proto LowCardinality(String), "
        "ADD COLUMN IF NOT EXISTS cover_first Array(UInt16), "
        "ADD COLUMN IF NOT EXISTS cover_last Array(UInt16)",),
    # 10 -> 11: port_latest, the reports' page index, filled from the merged findings (its
    # view only sees new observations; a replayed step re-inserts rows that merge away).
    # An upgraded store keeps findings' 8,192-row granules (a table setting that cannot be
    # altered): its pages are correct, phase 2 reads a little more than a new store's.
    10: ("INSERT INTO port_latest (target, ip, proto, port, scan_id, hostname, organization, "
         "asset, state, service, product, version, risk_color, is_cdn_expected, last_seen) "
         "SELECT target, ip, proto, port, last_scan_id, hostname, organization, asset, state, "
         "service, product, version, risk_color, is_cdn_expected, last_seen "
         "FROM current_findings",),
    # 11 -> 12: host_scans' 256-row granules (new stores). A table setting that cannot be
    # altered: an upgraded store keeps its granules, correct and a little slower.
    11: (),
    # 12 -> 13: an outbox row keeps the id of the message it went out in, so a retry is
    # that message again. Rows queued before read '' and are batched as they were.
    12: ("ALTER TABLE alert_outbox ADD COLUMN IF NOT EXISTS delivery_id String",),
    # 13 -> 14: host_latest also keeps each host's latest completed scan, whose ports the
    # reports show (an interrupted rescan reset every host it had not reached to no port
    # and grade A). Its view and the view over it are replaced (the DDL's IF NOT EXISTS
    # kept the old ones), then the column is filled from the stored host scans.
    13: ("DROP VIEW IF EXISTS host_latest_mv",
         _ddl_statement("host_latest_mv"),
         "DROP VIEW IF EXISTS latest_host_scans",
         _ddl_statement("latest_host_scans"),
         "INSERT INTO host_latest (target, ip, last_complete) "
         "SELECT target, ip, max((finished_at, scan_id)) FROM host_scans "
         "WHERE status = 'completed' GROUP BY target, ip"),
    # 14 -> 15: ports_carried, the open ports a host's latest compared scan did not see,
    # filled for each host's stored state: open there, not seen by that scan and not
    # covered by it (its shards' coverage; a re-probe's answer is not stored, so a port it
    # found open is carried from the next scan on).
    14: ("INSERT INTO ports_carried (target, ip, proto, port, scan_id, finished_at) "
         "SELECT ps.target, ps.ip, ps.proto, ps.port, hs.scan_id, hs.finished_at "
         "FROM (SELECT target, ip, proto, port, is_open FROM port_state "
         "      ORDER BY updated_at DESC LIMIT 1 BY target, ip, proto, port) AS ps "
         "INNER JOIN (SELECT target, ip, scan_id, finished_at FROM host_state FINAL "
         "            WHERE is_reachable = 1) AS hs ON hs.target = ps.target AND hs.ip = ps.ip "
         "LEFT JOIN (SELECT target, ip, scan_id, proto, groupArrayArray(cover_first) AS firsts, "
         "                  groupArrayArray(cover_last) AS lasts FROM host_scans FINAL "
         "           WHERE (target, ip, scan_id) IN "
         "                 (SELECT target, ip, scan_id FROM host_state FINAL) "
         "           GROUP BY target, ip, scan_id, proto) AS cov "
         "  ON cov.target = ps.target AND cov.ip = ps.ip AND cov.scan_id = hs.scan_id "
         "  AND cov.proto = ps.proto "
         "LEFT ANTI JOIN (SELECT DISTINCT target, ip, scan_id, proto, port "
         "                FROM port_observations WHERE (target, ip, scan_id) IN "
         "                      (SELECT target, ip, scan_id FROM host_state FINAL)) AS seen "
         "  ON seen.target = ps.target AND seen.ip = ps.ip AND seen.scan_id = hs.scan_id "
         "  AND seen.proto = ps.proto AND seen.port = ps.port "
         "WHERE ps.is_open = 1 "
         "  AND NOT arrayExists((f, l) -> ps.port >= f AND ps.port <= l, cov.firsts, cov.lasts)",),
    # 15 -> 16: carried_history, every scan's carried ports (the score after every scan
    # counts them), starts from what ports_carried kept: each port's latest carrying scan
    # (earlier ones were replaced there; their points count what they saw, as before).
    # Its view writes the same rows back into ports_carried, where they merge away.
    15: ("INSERT INTO carried_history (target, ip, scan_id, proto, port, finished_at) "
         "SELECT target, ip, scan_id, proto, port, finished_at FROM ports_carried FINAL",),
    # 16 -> 17: the risk chart's rows (scan_scores, risk_days), computed once for every
    # stored host scan, a month at a time (stream_processors/risk_days.py).
    16: (migrate_risk_days,),
    # 17 -> 18: watch_claims (who runs a watch slot), new and empty: the DDL makes it;
    # each run names the watcher that made it (older runs: none, matching no claim).
    17: ("ALTER TABLE watch_runs ADD COLUMN IF NOT EXISTS owner String",),
    # 18 -> 19: two changes that once landed without a new layout, repaired on every store
    # (harmless where they are right): latest_host_scans gained ports_seen_after after
    # step 13 (a layout-14 store of that time kept the older view, and every report
    # failed on it), and host_scan_scores arrived empty beside a filled scan_scores (a
    # layout-17 store of that time lost its per-target chart). Copied rows that exist
    # already merge away (same key and version).
    18: ("DROP VIEW IF EXISTS latest_host_scans",
         _ddl_statement("latest_host_scans"),
         "INSERT INTO host_scan_scores (target, ip, scan_id, day, finished_at, organization, "
         "hostname, asset, raw_score, computed_at, is_deleted) "
         "SELECT target, ip, scan_id, day, finished_at, organization, hostname, asset, "
         "raw_score, computed_at, is_deleted FROM scan_scores"),
    # 19 -> 20: each observation says whether its port can still reach TLS
    # (tls_reachable), and port_latest keeps the latest one's, so the Ciphers report drops
    # a port that speaks plain text now. The columns were added before the DDL (older
    # rows read 1, as before); the view that fills port_latest is replaced.
    19: ("DROP VIEW IF EXISTS port_latest_mv",
         _ddl_statement("port_latest_mv")),
    # 20 -> 21: the change state says which ports' identification never finished. Older
    # rows are marked from the observation of the scan they hold (what the rule reads a
    # stored snapshot by, changes.INCOMPLETE): left at 0, a port cut short before the
    # upgrade gave its service and product events at its next full scan (a review). A
    # millisecond later than the row it replaces, so it wins however parts merge.
    20: ("ALTER TABLE port_state ADD COLUMN IF NOT EXISTS is_incomplete UInt8 DEFAULT 0",
         lambda ops: ops.command(_incomplete_backfill())),
    # 21 -> 22: the change state keeps a UDP port's last word (answered, or no reply).
    # Older rows read 0, unknown: the next scan of such a port writes it, saying nothing
    # (an upgrade raises no event).
    21: ("ALTER TABLE port_state ADD COLUMN IF NOT EXISTS udp_reply UInt8 DEFAULT 0",),
}

# Steps that must run before the DDL on a store of that layout: a column a view of the
# DDL selects into (the engine checks a view's query even when IF NOT EXISTS finds the
# view). (table, statement): skipped when the table does not exist yet (the DDL makes it
# whole).
BEFORE_DDL: dict[int, tuple[tuple[str, str], ...]] = {
    13: (("host_latest", "ALTER TABLE host_latest ADD COLUMN IF NOT EXISTS last_complete "
                         "SimpleAggregateFunction(max, Tuple(DateTime64(3, 'UTC'), String))"),),
    19: (("port_observations", "ALTER TABLE port_observations ADD COLUMN IF NOT EXISTS "
                               "tls_reachable UInt8 DEFAULT 1"),
         ("port_latest", "ALTER TABLE port_latest ADD COLUMN IF NOT EXISTS "
                         "tls_reachable UInt8 DEFAULT 1")),
}

# One row per port / host / TLS port, kept by materialized views: what the report pages
# rank and page over (``compact_page_indexes``).
PAGE_INDEXES = ("port_latest", "host_latest", "tls_latest")

class _ClientOps:
    """``query``/``command`` with bound parameters straight on a client, for a migration
    step written in Python (the store's lock is held by ``ensure_schema``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None
              ) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._client.query(
            sql, parameters=dict(parameters or {})).result_rows]

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None, *,
                settings: Mapping[str, Any] | None = None) -> None:
        self._client.command(sql, parameters=dict(parameters or {}),
                             settings=dict(settings) if settings else None)

    def mutate(self, table: str, sql: str, parameters: Mapping[str, Any] | None = None
               ) -> None:
        run_mutation(self, table, sql, parameters, where="")


def _number(mutation_id: str) -> int:
    """The sequence number of a mutation id ("mutation_12.txt": 12); ids sort as text."""
    found = re.search(r"\d+", mutation_id)
    return int(found.group()) if found else 0


def run_mutation(ops: Any, table: str, sql: str, parameters: Mapping[str, Any] | None = None,
                 *, where: str, wait: float = MUTATION_WAIT) -> None:
    """Run the mutation ``sql`` (``ALTER TABLE table DELETE ...``) through ``ops`` (a
    Store, or a migration's client) and wait until it is done, at most ``wait`` seconds.
    Not with ``mutations_sync = 1``: the engine then waits for ever for a mutation that
    cannot run (on a full disk it retries "Cannot reserve" in the background: prune hung,
    deaf to Ctrl-C, holding the store). So it is started and its own entries (those the
    statement added to ``system.mutations``; another writer's are not ours to wait for,
    blame or stop) are polled: one that fails (its latest fail reason), outlasts
    ``wait`` or is interrupted is killed, and StoreError says why in one line."""
    if not re.fullmatch(r"[a-z_]+", table):
        raise ValueError(f"not a table name: {table!r}")
    listed = ("SELECT mutation_id FROM system.mutations WHERE database = currentDatabase() "
              "AND table = {table:String}")
    before = {str(r[0]) for r in ops.query(listed, {"table": table})}
    ops.command(sql, parameters, settings={"mutations_sync": 0})
    ours = sorted({str(r[0]) for r in ops.query(listed, {"table": table})} - before)
    if not ours:
        return  # done and gone already, or nothing to mutate
    deadline = time.monotonic() + wait
    first_ours = min(map(_number, ours))
    try:
        while True:
            pending = {str(m): str(r) for m, r in ops.query(
                "SELECT mutation_id, latest_fail_reason FROM system.mutations WHERE NOT "
                "is_done AND database = currentDatabase() AND table = {table:String}",
                {"table": table})}
            if not any(m in pending for m in ours):
                return
            # ours failing, or an earlier one still pending ahead of ours (the engine
            # applies a table's mutations in order, and its failure then shows on ours
            # too: ours would wait behind it for ever). Then the earlier one is named.
            earlier = [r for m, r in sorted(pending.items(), key=lambda i: _number(i[0]))
                       if m not in ours and _number(m) < first_ours]
            reason = next((r for r in earlier if r), "") or next(
                (pending[m] for m in ours if pending.get(m)), "")
            if reason and earlier:
                reason = f"an earlier delete on it fails: {reason}"
            if reason or time.monotonic() > deadline:
                why = (_engine_first_line(RuntimeError(reason)) if reason
                       else f"not done after {wait:g}s")
                at = f" at {where}" if where else ""
                raise StoreError(f"the store{at} could not rewrite {table} (the delete was "
                                 f"stopped; run it again once that is fixed): {why}")
            time.sleep(MUTATION_POLL)
    except BaseException:
        with contextlib.suppress(Exception):
            ids = ", ".join(f"'{m}'" for m in ours if re.fullmatch(r"[\w.-]+", m))
            ops.command("KILL MUTATION WHERE database = currentDatabase() "
                        f"AND table = '{table}' AND mutation_id IN ({ids}) SYNC")
        raise


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message is one line for the user.

    The subclasses say why, so a caller maps them (the CLI to exit codes) by type,
    never by reading the message.
    """


class StoreUrlError(StoreError):
    """The store URL itself is wrong (bad input: nothing was opened)."""


class UnknownStoreScheme(StoreUrlError):
    """The URL's scheme is none of ``ACCEPTED_SCHEMES``."""


class StoreMissing(StoreError):
    """Opened for reading only, and no store exists there (``where``: the path or server
    it looked at, as the message names it)."""

    def __init__(self, where: str) -> None:
        super().__init__(f"no store at {where}: scan something first (`portwatch scan "
                         "TARGET`) or give the --store it was written to")
        self.where = where


class StoreBusy(StoreError):
    """Another process holds the embedded store (``path``: its directory, as given)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StoreLayoutError(StoreError):
    """The store was laid out by another portwatch version."""


class StoreReadError(StoreError):
    """A query on an opened store failed in the engine (a damaged table part, a server
    that went away): the CLI says one line and exits 1 instead of a driver traceback."""


def _engine_first_line(exc: BaseException) -> str:
    """The first non-empty line of the engine's message: chdb chains RuntimeError ->
    ChdbError -> DatabaseError, each with a paragraph of stack; the first line names
    the error code and what failed."""
    for line in str(exc).splitlines():
        text = " ".join(line.split())
        if text:
            return text if len(text) <= 300 else text[:300] + "..."
    return type(exc).__name__


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
    def from_url(cls, url: str | None) -> StoreLocation:
        """The location of ``url`` (None or empty: the default store under the user's
        data dir); StoreUrlError (one line) when the URL is wrong."""
        return cls.parse(url or default_store_url())

    @property
    def where(self) -> str:
        """The store, as a person names it in a message."""
        return self.path if self.scheme == "chdb" else f"{self.address}/{self.database}"

    @property
    def address(self) -> str:
        """host:port, an IPv6 address in brackets ([::1]:8123, not ::1:8123)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> StoreLocation:
        try:
            parts = urlsplit(url)
            shown = _shown_url(url)
        except ValueError:  # "Invalid IPv6 URL": an unclosed '['
            raise StoreUrlError(f"store URL {url[:120]!r} is not a URL") from None
        scheme = parts.scheme.lower()  # errors never echo a password or a whole hostile string
        if scheme not in ACCEPTED_SCHEMES:
            raise UnknownStoreScheme(
                f"unknown store URL {shown!r}: use chdb:///path or "
                "clickhouse://user@host:8123/database"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        # What the URL says beyond its path is refused, not dropped: "st#1" opened "st",
        # and "?databse=x" the default database (a review)
        if parts.fragment or url.rstrip().endswith("#"):
            raise StoreUrlError(f"store URL {shown!r}: a '#' ends the path there; write it "
                                "%23 if the path holds one")
        if len(query.get("database", ())) > 1:
            raise StoreUrlError(f"store URL {shown!r}: 'database' given twice: give one")
        unknown = sorted(set(query) - ({"database"} if scheme == "chdb" else set()))
        if unknown:
            known = "database" if scheme == "chdb" else "none: the database is the path"
            raise StoreUrlError(f"store URL {shown!r}: unknown parameter "
                                f"{unknown[0][:40]!r} (known: {known})")
        if scheme == "chdb":
            # chdb:///abs, chdb://relative/dir, chdb://~/dir; and, as in file:// URLs,
            # chdb://localhost/abs is /abs (it became ./localhost/abs, found by no
            # command run from another directory)
            netloc = "" if parts.netloc.lower() == "localhost" else parts.netloc
            path = unquote(netloc + parts.path)
            if not path:
                raise StoreUrlError(f"store URL {shown!r} has no path: use chdb:///path/to/store")
            if "\x00" in path:
                raise StoreUrlError(f"store URL {shown!r}: a NUL byte cannot be in a path")
            database = _database(query.get("database", [DEFAULT_DATABASE])[0], shown)
            return cls(scheme, path=os.path.expanduser(path), database=database)
        if not parts.hostname:
            raise StoreUrlError(f"store URL {shown!r} has no host")
        if parts.password is not None:
            raise StoreUrlError(f"store URL {shown!r} carries a password: give it in "
                                f"{PASSWORD_ENV} instead (a URL shows in process lists)")
        database = _database(parts.path.strip("/") or DEFAULT_DATABASE, shown)
        try:
            port = parts.port or (8443 if scheme == "clickhouses" else 8123)
        except ValueError as exc:
            raise StoreUrlError(f"store URL {shown!r}: {exc}") from None
        return cls(
            scheme, host=parts.hostname, port=port,
            username=unquote(parts.username or "default"), database=database,
        )


# What a chdb store directory holds (chdb's own directories and our lock): a directory
# holding anything else and no store is someone else's.
STORE_ENTRIES = frozenset({".portwatch.lock", "data", "metadata", "store", "tmp",
                           "user_files", "format_schemas", "preprocessed_configs",
                           "metadata_dropped", "flags", "status", "uuid",
                           # a volume of its own mounted there (ext4's)
                           "lost+found"})


def _refuse_a_foreign_directory(path: str) -> None:
    """A new store goes into a new or empty directory (or one only a store left): chdb
    writes data/, metadata/, store/ and tmp/ beside whatever is there, so ``chdb:///``
    filled the file system's root and a mistyped path a user's folder (a review,
    2026-12-06). StoreUrlError when ``path`` is someone else's."""
    where = Path(path)
    real = Path(os.path.realpath(path))
    if real == real.parent:
        raise StoreUrlError(f"the store path {path} is the file system's root: give a "
                            "directory of its own, e.g. chdb:///var/lib/portwatch")
    if (where / "metadata").is_dir():
        return  # a store already
    try:
        foreign = sorted(e.name for e in where.iterdir() if e.name not in STORE_ENTRIES)
    except FileNotFoundError:
        return  # new: created for the store
    except NotADirectoryError:
        return  # a file: said by the caller
    except OSError as exc:
        raise StoreUrlError(f"the store path {path} cannot be read: "
                            f"{exc.strerror or exc}") from None
    if foreign:
        shown = ", ".join(repr(name)[:40] for name in foreign[:3])
        raise StoreUrlError(f"the store path {path} holds other files ({shown}"
                            f"{', ...' if len(foreign) > 3 else ''}) and no store: give a "
                            "new or empty directory")


def _driver_reason(exc: BaseException) -> str:
    """The reason in a driver's error, short: urllib3 nests "Connection refused" in a
    paragraph of pool and retry detail."""
    text = " ".join(str(exc).split())
    for errno_text in ("Connection refused", "Name or service not known", "timed out",
                       "No route to host", "Network is unreachable",
                       "Temporary failure in name resolution", "Connection reset"):
        if errno_text in text:
            return errno_text.lower()
    text = text or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _database(name: str, shown: str) -> str:
    """A database name that is safe to quote into DDL: letters, digits and '_'."""
    if not _DATABASE_NAME.fullmatch(name):
        raise StoreUrlError(f"store URL {shown!r}: database {name[:40]!r} must be letters, "
                            "digits and '_' (at most 64, not starting with a digit)")
    return name


def _shown_url(url: str) -> str:
    """``url`` for an error line: without a password, at most 120 characters."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username or ""
        url = parts._replace(netloc=f"{user}:***@{host}").geturl()
    return url if len(url) <= 120 else url[:120] + "..."


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
# Our own advisory lock per chdb path, taken before chdb opens it and held while a
# Store of this process has the path open: two processes starting at the same moment
# both saw chdb's lock free, and the loser got a raw chdb error; whoever holds ours owns
# the path. path -> [fd, Stores open on it].
_PATH_LOCKS: dict[str, list[int]] = {}
_PATH_LOCKS_GUARD = threading.Lock()
LOCK_FILE = ".portwatch.lock"


def _take_path_lock(path: str, shown: str) -> None:
    """Own ``path`` for this process (StoreBusy when another process owns it)."""
    if sys.platform == "win32":
        return
    import fcntl

    with _PATH_LOCKS_GUARD:
        if path in _PATH_LOCKS:
            _PATH_LOCKS[path][1] += 1
            return
        try:
            fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                # chdb writes where it reads, even for a query: a read-only copy cannot be
                # opened at all (a bare "Errno 30" said nothing of why: a review)
                raise StoreError(f"cannot open the store at {shown}: it is on a read-only "
                                 "file system, and the embedded engine writes in its "
                                 "directory even to read (copy it somewhere writable)"
                                 ) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy_error(shown) from None
        except OSError:
            os.close(fd)  # a file system without locks: chdb's own lock still applies
            return
        _PATH_LOCKS[path] = [fd, 1]


def _release_path_lock(path: str) -> None:
    """One Store of this process closed ``path``; the last one lets other processes in."""
    with _PATH_LOCKS_GUARD:
        held = _PATH_LOCKS.get(path)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _PATH_LOCKS[path]
            os.close(held[0])  # closing the descriptor releases the flock


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
        "use another --store, or run a ClickHouse server; a watcher or a sink started "
        "with `--serve PORT` (`portwatch watch`, `portwatch process`) answers `portwatch "
        "report` and serves the web reports meanwhile", path)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc)
    return "Cannot lock file" in text or "already running" in text or "already initialized" in text


ENGINE_MESSAGE_CAP = 64 * 1024  # bytes of the engine's stderr read for its reason
_ENGINE_EXCEPTION = re.compile(r"DB::\w*Exception: ")  # ErrnoException too
_ENGINE_START = threading.Lock()  # fd 2 is the process's: one engine start at a time


class _EngineStartError(Exception):
    """chdb's engine did not start; ``reason`` is what it wrote to stderr, one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def engine_reason(text: str) -> str:
    """The reason in what chdb's engine wrote to stderr when it would not start, as one
    printable line of at most 300 characters, from its first "DB::Exception" on ('' when
    it said nothing it would say)."""
    found = _ENGINE_EXCEPTION.search(text)
    if found is None:
        return ""
    line = " ".join(text[found.end():].split())
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= 300 else line[:300] + "..."


def _write_back(spool: Any) -> None:
    """What was written to fd 2 while it pointed at ``spool``, to fd 2 again, whole."""
    spool.seek(0)
    with contextlib.suppress(OSError):  # a closed or full stderr loses only these lines
        while chunk := spool.read(ENGINE_MESSAGE_CAP):
            left = memoryview(chunk)
            while left:
                left = left[os.write(2, left):]


def _refuse_lost_findings(client: Any, version_table: str, where: str) -> None:
    """StoreLayoutError when the store has no findings table yet a layout version: a
    finished store that lost it (its definition file deleted or unreadable). Made again
    empty, every first_seen would silently restart at the next scan."""
    (made,), = client.query(f"SELECT max(version) FROM {version_table}").result_rows
    if made:
        raise StoreLayoutError(
            f"the store at {where} is damaged: it has layout {made} but no findings "
            "table; restore it from a backup, or use a new --store and rescan")


def _refuse_a_lost_database(location: StoreLocation) -> None:
    """StoreLayoutError when the store's database definition is lost (its metadata file
    deleted) while its tables' definitions remain: the engine, started on it, made a new
    empty database of that name beside the old data (every first_seen and the change log
    gone at the next scan; a review). Read from the files, before the engine starts."""
    metadata = Path(location.path, "metadata")
    tables = metadata / location.database
    if (metadata / f"{location.database}.sql").exists() or not tables.is_dir():
        return
    if any(tables.glob("*.sql")):
        raise StoreLayoutError(
            f"the store at {location.path} is damaged: the definition of its database "
            f"{location.database} is lost, its tables' remain; restore it from a backup, or "
            "use a new --store and rescan")


# The layout that first made each table and view of the DDL made after layout 9 (the
# oldest one upgraded): a store of an older layout lacks them, and the DDL makes them.
# Every other one is in every store portwatch upgrades. (A new table or view goes here
# with its layout: a test checks every DDL name is here or in layout 9's list.)
FIRST_LAYOUT = {
    "port_latest": 10, "port_latest_mv": 10, "ports_carried": 15, "carried_history": 16,
    "ports_carried_mv": 16, "scan_scores": 17, "host_scan_scores": 17,
    "host_scan_scores_mv": 17, "risk_days": 17, "risk_dirty": 17, "risk_dirty_mv": 17,
    "risk_dirty_observations_mv": 17, "risk_dirty_carried_mv": 17, "watch_claims": 18,
}
OLDEST_LAYOUT = 9


def ddl_names(*, tables_only: bool = False) -> list[str]:
    """The tables (and views) schemas/ddl.sql makes, in its order."""
    found = [_DDL_OBJECT.match(s) for s in ddl_statements()]
    return [m.group(2) for m in found if m and (m.group(1) == "TABLE" or not tables_only)]


def _lost_objects(existing: set[str], layout: int) -> list[str]:
    """The tables and views a store of ``layout`` lacks: their definition files lost
    (deleted, a bad restore). Made again empty by the DDL, the next scan silently
    restarted what they held (a review: port_latest, accepted_risks, host_state), and an
    upgrade first (a store of an older layout: another review). Before an upgrade, its
    tables only: a step drops a view and makes it again, and an upgrade cut short in
    between is finished by the next open (a review); and only those its layout had
    (strictly older: two changes once landed within one layout, whose stores of that
    time lacked them)."""
    if layout == SCHEMA_VERSION:
        return [n for n in ddl_names() if n not in existing]
    return [n for n in ddl_names(tables_only=True) if n not in existing
            and FIRST_LAYOUT.get(n, OLDEST_LAYOUT) < layout]


def _drop_unwritten_mutations(path: str) -> None:
    """Remove the mutation files the engine could not write: on a full disk it leaves
    ``mutation_N.txt`` empty, and the store no longer opens ("Cannot attach table ...
    expected 'format version: 1'"). Such a mutation was never recorded, so it never ran:
    without its file the store is as before it. Run with the path's lock held, before
    the engine starts on it."""
    for entry in Path(path, "store").glob("*/*/mutation_*.txt"):
        with contextlib.suppress(OSError):
            if entry.stat().st_size == 0:
                entry.unlink()
                log.warning("the store at %s: removed %s, a delete the engine could not "
                            "record (the disk was full); it never ran", path,
                            entry.relative_to(path))


def _start_chdb(clickhouse_connect: Any, path: str) -> Any:
    """A chdb client on ``path``: the first one starts the engine. When the engine cannot
    start (a broken metadata file, say) it writes why to the process's stderr (fd 2), in
    lines of its own, and raises only "Error initializing EmbeddedServer". So fd 2 goes to
    a file while it starts: on failure what it wrote is the reason (``_EngineStartError``)
    instead of raw lines above portwatch's one; otherwise (and when it said nothing to
    use) it is written back unchanged. One start at a time: fd 2 belongs to the process."""
    import tempfile

    with _ENGINE_START:
        try:
            spool = tempfile.TemporaryFile()
        except OSError:  # nowhere to keep it: the engine's lines go where they would
            return clickhouse_connect.get_client(interface="chdb", path=path)
        with spool:
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all: nothing to keep apart
                return clickhouse_connect.get_client(interface="chdb", path=path)
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            try:
                os.dup2(spool.fileno(), 2)
                client = clickhouse_connect.get_client(interface="chdb", path=path)
            except Exception as exc:
                failed: Exception | None = exc
            else:
                failed = None
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            if failed is not None:
                spool.seek(0)
                reason = engine_reason(spool.read(ENGINE_MESSAGE_CAP).decode("utf-8",
                                                                             "replace"))
                if reason:
                    raise _EngineStartError(reason) from failed
            _write_back(spool)
            if failed is not None:
                raise failed
            return client


# Seconds a ClickHouse server has to answer its /ping before the store is said
# unreachable: the driver's own read timeout (300 s, right for a long upgrade statement)
# kept every command silent for five minutes on a server that accepted and never
# answered (a review).
PING_TIMEOUT = 10.0


def _ping(location: StoreLocation) -> None:
    """Ask the server's HTTP interface for /ping ("Ok.") within ``PING_TIMEOUT``; an
    error whose reason the caller words as "cannot open the store at HOST:PORT". No
    credentials are sent, and a TLS server's certificate is the driver's to check. Not
    when a proxy is set for the server (HTTP_PROXY / HTTPS_PROXY, NO_PROXY): the driver
    goes through it, and so would a ping that could tell (a review)."""
    import http.client
    import ssl
    import urllib.request

    scheme = "https" if location.scheme == "clickhouses" else "http"
    if urllib.request.getproxies().get(scheme) and not urllib.request.proxy_bypass(
            location.host):
        return  # reached through a proxy (the driver honours HTTP(S)_PROXY): its call
    connection = (http.client.HTTPSConnection(location.host, location.port,
                                              timeout=PING_TIMEOUT,
                                              context=ssl._create_unverified_context())
                  if scheme == "https" else
                  http.client.HTTPConnection(location.host, location.port, timeout=PING_TIMEOUT))
    try:
        connection.request("GET", "/ping")
        connection.getresponse().read(64)
    except TimeoutError as exc:
        raise TimeoutError(f"no answer within {PING_TIMEOUT:g}s (is it a ClickHouse "
                           "server's HTTP port?)") from exc
    finally:
        connection.close()


class Store:
    """ClickHouse-backed store; the same code for chdb and for a server."""

    def __init__(self, location: StoreLocation, *, create: bool = True) -> None:
        """Open the store; ``create=False`` opens an existing one only (StoreMissing
        otherwise: a report on a wrong path must not leave an empty store behind)."""
        import clickhouse_connect  # lazy: importing it costs ~0.3 s

        self.location = location
        self._lock = threading.Lock()  # clickhouse-connect clients are not thread-safe
        self._locked_path = ""  # the chdb path whose process lock this Store holds
        # Bound into every query that declares them, whatever the caller passed: reader
        # settings the SQL needs, e.g. {"no_prior": 1} (set by portwatch/assembly.py).
        self.default_parameters: dict[str, Any] = {}
        # (table, columns) -> their ClickHouse types, described once (see _column_types)
        self._insert_types: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        try:
            self._connect(clickhouse_connect, location, create=create)
            self.ensure_schema(create=create)
        except BaseException:
            self._release_path()
            raise
        self._say_damaged_parts()

    def _say_damaged_parts(self) -> None:
        """One warning when the engine set parts of our tables aside as damaged (a
        truncated file after a full disk or a crash: chdb starts without them, in
        ``detached/broken-*``) and no active part holds their rows (a part a merge had
        already folded into another is not missing: a review): those rows are not read,
        so reports look empty and the next scan's every port reads as opened. Said each
        time the store opens; never fatal (what is left stays usable)."""
        try:
            detached = self.query(
                "SELECT table, partition_id, min_block_number, max_block_number "
                "FROM system.detached_parts WHERE database = currentDatabase() "
                "AND (startsWith(reason, 'broken') OR startsWith(reason, 'unexpected'))")
            if not detached:
                return
            active = self.query(
                "SELECT table, partition_id, min_block_number, max_block_number "
                "FROM system.parts WHERE database = currentDatabase() AND active")
        except StoreError:
            return  # a server that does not let us read system tables: nothing to say
        held: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for table, partition, low, high in active:
            held.setdefault((table, partition), []).append((low, high))
        missing: dict[str, int] = {}
        for table, partition, low, high in detached:
            spans = held.get((table, partition), [])
            if low is None or high is None or not any(a <= low and high <= b for a, b in spans):
                missing[table] = missing.get(table, 0) + 1
        if missing:
            parts = ", ".join(f"{table} ({count})" for table, count in sorted(missing.items()))
            log.warning("the store at %s has damaged parts the engine set aside, not read: "
                        "%s; their rows are missing from every report (the files are kept "
                        "under the tables' detached/ directories: move them away once "
                        "checked, and this warning stops)", self.location.where, parts)

    def _connect(self, clickhouse_connect: Any, location: StoreLocation, *,
                 create: bool) -> None:
        try:
            if location.scheme == "chdb":
                if Path(location.path).exists() and not Path(location.path).is_dir():
                    # scan said "[Errno 17] File exists" (exit 1), report "no store
                    # there: scan something first" (exit 2): one answer, bad input
                    raise StoreUrlError(f"the store path {location.path} is a file, not a "
                                        "store directory: give another --store")
                if not create and not (Path(location.path) / "metadata").is_dir():
                    raise StoreMissing(location.path)
                _refuse_a_foreign_directory(location.path)
                try:
                    Path(location.path).mkdir(parents=True, exist_ok=True)
                except (NotADirectoryError, FileExistsError):
                    # a file on the path ("afile/sub"): bad input, said so (exit 2; it
                    # was "[Errno 20] Not a directory", exit 1: a review)
                    raise StoreUrlError(f"the store path {location.path[:200]!r} cannot be a "
                                        "store directory: a part of it is a file; give "
                                        "another --store") from None
                resolved = str(Path(location.path).resolve())
                if resolved not in _OPENED_CHDB_PATHS and _is_held_by_another_process(resolved):
                    raise _busy_error(location.path)
                first = resolved not in _OPENED_CHDB_PATHS
                _take_path_lock(resolved, location.path)
                self._locked_path = resolved
                if first:
                    _drop_unwritten_mutations(location.path)
                    _refuse_a_lost_database(location)
                bootstrap = _start_chdb(clickhouse_connect, location.path)
                if not create:
                    found = bootstrap.query(
                        "SELECT count() FROM system.tables WHERE database = {db:String} "
                        "AND name = 'findings'", parameters={"db": location.database})
                    if not found.result_rows[0][0]:
                        version = bootstrap.query(
                            "SELECT count() FROM system.tables WHERE database = {db:String} "
                            "AND name = 'schema_version'", parameters={"db": location.database})
                        if version.result_rows[0][0]:
                            _refuse_lost_findings(
                                bootstrap, f"`{location.database}`.schema_version",
                                location.path)
                        raise StoreMissing(f"{location.path} (database {location.database})")
                bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{location.database}`")
                self._client = clickhouse_connect.get_client(
                    interface="chdb", path=location.path, database=location.database
                )
                # Closed once the store's own client holds the engine (closing the last
                # client of a path stops chdb's engine; the next one starts it again)
                bootstrap.close()
                _OPENED_CHDB_PATHS.add(resolved)
            else:
                _ping(location)
                self._client = clickhouse_connect.get_client(
                    interface="https" if location.scheme == "clickhouses" else "http",
                    # a server that answers its ping and then nothing held every command
                    # for the driver's default 300 s (a review)
                    send_receive_timeout=STATEMENT_TIMEOUT,
                    host=location.host, port=location.port, username=location.username,
                    password=os.environ.get(PASSWORD_ENV, ""), database=location.database,
                )
        except StoreError:
            raise
        except _EngineStartError as exc:
            if _is_lock_error(exc):
                raise _busy_error(location.path) from exc
            raise StoreError(f"cannot open the store at {location.path}: the chdb engine did "
                             f"not start: {exc.reason}") from exc
        except Exception as exc:  # the drivers raise many types; translate to one line
            if _is_lock_error(exc):
                raise _busy_error(location.path) from exc
            where = location.path or location.address
            raise StoreError(f"cannot open the store at {where}: {_driver_reason(exc)}"
                             ) from exc

    def _release_path(self) -> None:
        if self._locked_path:
            _release_path_lock(self._locked_path)
            self._locked_path = ""

    @classmethod
    def from_url(cls, url: str | None = None, *, create: bool = True) -> Store:
        """IVRE's ``from_url``: the URL scheme picks the interface (chdb or HTTP(S));
        typed errors (StoreUrlError, StoreMissing, StoreBusy, StoreLayoutError)."""
        return cls(StoreLocation.from_url(url), create=create)

    # -- schema -------------------------------------------------------------------------

    def ensure_schema(self, *, create: bool = True) -> None:
        """Create what is missing; upgrade an older layout that ``MIGRATIONS`` leads
        here; refuse any other (the DDL is idempotent, so an old table would otherwise
        stay, silently wrong).
        ``create=False``: check the version only (StoreMissing when there is no store).
        An engine error on the way (a damaged part an upgrade step reads) is a
        StoreError of one line; the steps are idempotent, so the next open goes on."""
        try:
            self._ensure_schema(create=create)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the drivers raise many types
            raise StoreError(f"cannot create or upgrade the store at {self.location.where}: "
                             f"{_engine_first_line(exc)}") from exc

    def _ensure_schema(self, *, create: bool) -> None:
        with self._lock:
            self._insert_types.clear()  # an upgrade may change a table's columns
            existing = {r[0] for r in self._client.query(
                "SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}
            if "findings" not in existing and "schema_version" in existing:
                _refuse_lost_findings(self._client, "schema_version", self.location.where)
            if "findings" not in existing and not create:
                raise StoreMissing(self.location.where)
            upgrade: list[int] = []  # layouts to step through, oldest first
            found = 0
            if "findings" in existing and "schema_version" in existing:
                rows = self._client.query("SELECT max(version) FROM schema_version")
                found = int(rows.result_rows[0][0] or 0)
            # New: no findings table, or a new store's creation that was cut short
            # (killed, an engine error): its version table is made first and written
            # last, so it is there and empty. It is completed, as a new store is made.
            is_new = "findings" not in existing or (
                "schema_version" in existing and found == 0)
            if not is_new:
                if found < SCHEMA_VERSION and all(
                        v in MIGRATIONS for v in range(found, SCHEMA_VERSION)):
                    upgrade = list(range(found, SCHEMA_VERSION))
                elif found > SCHEMA_VERSION:
                    # a newer portwatch wrote it: upgrading keeps its history (a new store
                    # loses first_seen and the change log: a review)
                    where = self.location.path or f"{self.location.host}/{self.location.database}"
                    raise StoreLayoutError(
                        f"the store at {where} has layout version {found}, written by a "
                        f"newer portwatch (this one reads {SCHEMA_VERSION}): upgrade "
                        "portwatch to read it")
                elif found != SCHEMA_VERSION:
                    where = self.location.path or f"{self.location.host}/{self.location.database}"
                    raise StoreLayoutError(
                        f"the store at {where} has layout version {found or 'unknown'}, this "
                        f"portwatch needs {SCHEMA_VERSION}: use a new --store (or another "
                        "database) and rescan")
            lost = _lost_objects(existing, found) if not is_new else []
            if lost:
                where = self.location.where
                shown = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3
                                               else "")
                raise StoreLayoutError(
                    f"the store at {where} is damaged: it has layout {found} but no {shown} "
                    "(a definition file lost); restore it from a backup, or use a new "
                    "--store and rescan")
            if not create and not upgrade and not is_new:
                return
            if is_new:  # the version table first: see above
                self._client.command(_ddl_statement("schema_version"))
            for version in upgrade:
                for table, statement in BEFORE_DDL.get(version, ()):
                    if table in existing:
                        self._client.command(statement)
            # The DDL first: it creates the tables and views a step may fill (a new view
            # only sees new rows; its step backfills the history it must hold).
            for statement in ddl_statements():
                self._client.command(statement)
            for version in upgrade:
                for step in MIGRATIONS[version]:
                    if callable(step):  # a step in Python (its lock is held here)
                        step(_ClientOps(self._client))
                    else:
                        self._client.command(step)
                self._client.command(f"INSERT INTO schema_version VALUES ({version + 1})")
            if is_new:
                self._client.command(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION})")

    # -- writes -------------------------------------------------------------------------

    def _insert(self, table: str, columns: Sequence[str], rows: list[list[Any]], *,
                settings: dict[str, Any] | None = None) -> None:
        if not rows:
            return
        with self._lock:
            key = (table, tuple(columns))
            try:
                self._client.insert(table, rows, column_names=list(columns),
                                    column_types=self._column_types(key), settings=settings)
            except BaseException:
                self._insert_types.pop(key, None)  # described again on the next insert
                raise

    def _column_types(self, key: tuple[str, tuple[str, ...]]) -> list[Any]:
        """The ClickHouse types of ``key``'s columns, described once per table and column
        list (the lock held). clickhouse-connect otherwise runs ``DESCRIBE TABLE`` before
        every insert: a second statement per insert, ~0.7 ms of a 3 ms alert claim on
        chdb and a round trip to a server. Forgotten by ``ensure_schema``, by a DDL
        statement through ``command``, and by a failed insert."""
        types = self._insert_types.get(key)
        if types is None:
            from clickhouse_connect.datatypes.registry import get_from_name

            table, columns = key
            described = {str(r[0]): str(r[1]) for r in self._client.query(
                f"DESCRIBE TABLE {table}").result_rows}
            missing = [c for c in columns if c not in described]
            if missing:
                raise StoreError(f"table {table} has no column {missing[0]}: is the store's "
                                 "layout older than this portwatch?")
            types = self._insert_types[key] = [get_from_name(described[c]) for c in columns]
        return types

    def insert_rows(self, table: str, columns: Sequence[str], rows: list[list[Any]], *,
                    dedup_token: str = "") -> int:
        """Insert prepared rows into one of our tables (change history, alerting); with
        ``dedup_token``, a second insert with the same token is dropped by ClickHouse
        (the alert claims rely on it)."""
        if not rows:
            return 0
        self._insert(table, columns, rows,
                     settings={"insert_deduplication_token": dedup_token} if dedup_token else None)
        return len(rows)

    def insert_findings(self, findings: Iterable[Finding]) -> int:
        """Insert findings (observations, TLS probes, suites, certificates). Idempotent."""
        observations: list[list[Any]] = []
        probes: list[list[Any]] = []
        ciphers: list[list[Any]] = []
        certs: list[list[Any]] = []
        for f in findings:
            observations.append(observation_row(f))
            if f.tls.status is not ProbeStatus.NOT_SCHEDULED:
                probes.append(tls_probe_row(f))
                ciphers.extend(tls_cipher_rows(f))
                certs.extend(certificate_rows(f))
        # The TLS rows first, the observations last: a batch the store refuses part-way
        # (the sink then isolates the record it refused) leaves no observation of it, so
        # a record reported refused shows in no report (a TLS row alone is shown by none:
        # the Ciphers report lists TLS ports open now)
        self._insert("tls_probes", TLS_PROBE_COLUMNS, probes)
        self._insert("tls_ciphers", TLS_CIPHER_COLUMNS, ciphers)
        self._insert("certificates", CERTIFICATE_COLUMNS, certs)
        self._insert("port_observations", OBSERVATION_COLUMNS, observations)
        return len(observations)

    def insert_host_scans(self, scans: Iterable[HostScan]) -> int:
        """One row per (scan, host, shard): a host split over several shards sums its
        ports in the Summary, and a retried shard replaces its own row."""
        rows = [host_scan_row(h) for h in scans]
        self._insert("host_scans", HOST_SCAN_COLUMNS, rows)
        return len(rows)

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None, *,
                settings: Mapping[str, Any] | None = None) -> None:
        """One statement with server-side parameters (maintenance: prune; a claim
        inserted with the server's clock and a deduplication token in ``settings``)."""
        with self._lock:
            if not sql.lstrip()[:6].upper().startswith(("INSERT", "SELECT")):
                self._insert_types.clear()  # DDL may change a table's columns
            try:
                self._client.command(sql, parameters=dict(parameters or {}),
                                     settings=dict(settings) if settings else None)
            except Exception as exc:  # noqa: BLE001 - the drivers raise many types
                # one line for the user (prune on a damaged part printed 186 lines)
                raise StoreError(f"the store at {self.location.where} refused a statement: "
                                 f"{_engine_first_line(exc)}") from exc

    def mutate(self, table: str, sql: str, parameters: Mapping[str, Any] | None = None, *,
               wait: float = MUTATION_WAIT) -> None:
        """``run_mutation`` on this store; refused on a chdb store whose disk is (nearly)
        full, before anything is written (``MUTATION_MIN_FREE``)."""
        if self.location.scheme == "chdb":
            try:
                free = shutil.disk_usage(self.location.path).free
            except OSError:
                free = MUTATION_MIN_FREE
            if free < MUTATION_MIN_FREE:
                raise StoreError(
                    f"the store at {self.location.path} has {free / 2**20:.1f} MiB free: "
                    f"rewriting {table} needs room (at least {MUTATION_MIN_FREE // 2**20} "
                    "MiB); free some space and run it again (nothing was changed)")
        run_mutation(self, table, sql, parameters, where=self.location.where, wait=wait)

    def active_parts(self, tables: Sequence[str]) -> dict[str, int]:
        """Active data parts per table of ``tables`` (a table without any is absent)."""
        with self._lock, self._reading():
            rows = self._client.query(
                "SELECT table, count() FROM system.parts WHERE active "
                "AND database = currentDatabase() AND table IN {tables:Array(String)} "
                "GROUP BY table", parameters={"tables": list(tables)}).result_rows
        return {str(table): int(parts) for table, parts in rows}

    def refresh_risk_rows(self) -> None:
        """``risk_days.refresh_risk_days``, said in one warning line when it fails: only
        the chart waits (its rows are refreshed at the next scan's end or web start),
        never a scan's end, its change events or its alerts."""
        try:
            refresh_risk_days(self)
        except Exception as exc:  # noqa: BLE001 - the drivers raise many types
            log.warning("could not bring the risk chart's rows up to date (the chart shows "
                        "what was refreshed before): %s", _engine_first_line(exc)[:300])

    def compact_page_indexes(self) -> list[str]:
        """Bring the risk chart's rows up to date (``risk_days.refresh_risk_days``), merge
        each page index (``PAGE_INDEXES``) left in more than one part into one, and return
        the tables merged. Every report page reads these with FINAL, which
        merges their parts at read time: at 100,000 hosts after a day's scan the Summary
        took 410-500 ms over 7 parts of ``port_latest`` and 256 ms once merged (the three
        merges took 1.2 s; BENCHMARKS.md). Called where a scan's rows are all in: the
        embedded runner's end, the sink when its hold empties (at most every few minutes).
        """
        self.refresh_risk_rows()  # the risk chart's rows of what was stored, too
        several = sorted(t for t, parts in self.active_parts(PAGE_INDEXES).items() if parts > 1)
        merged: list[str] = []
        with self._lock:
            for table in several:
                try:
                    self._client.command(f"OPTIMIZE TABLE {table} FINAL")
                except Exception as exc:  # noqa: BLE001 - the drivers raise many types
                    # Only speed is lost (FINAL still merges at read time): say so, go on
                    log.warning("could not merge the page index %s (its pages stay correct, "
                                "only slower): %s", table, str(exc).splitlines()[0][:300])
                    continue
                merged.append(table)
        return merged

    def internet_prior_source(self) -> str:
        """The source tag of the stored Internet prior ('' when none is stored)."""
        with self._lock, self._reading():
            stored = self._client.query("SELECT any(source) FROM internet_prior").result_rows
        return str(stored[0][0]) if stored and stored[0][0] else ""

    def load_internet_prior(self, source: str, rows: Sequence[tuple[str, int, int]]) -> bool:
        """Replace the Internet prior (stream_processors/prevalence_prior.py) unless the
        stored one has the same ``source`` tag; True when it was (re)loaded."""
        if self.internet_prior_source() == source:
            return False
        with self._lock:
            self._client.command("TRUNCATE TABLE internet_prior")
        self._insert("internet_prior", ("proto", "port", "instances", "source"),
                     [[proto, port, instances, source] for proto, port, instances in rows])
        return True

    def _with_defaults(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any]:
        bound = dict(params)
        for key, value in self.default_parameters.items():
            if f"{{{key}:" in sql:
                bound[key] = value
        return bound

    # -- reads --------------------------------------------------------------------------

    def report(self, name: str, filters: Mapping[str, Any] | None = None,
               *, limit: int = 0, offset: int = 0) -> Report:
        """Run one report's SQL unchanged, binding every parameter it declares.

        Unset filters bind their neutral value ('' or 0), which the SQL reads as "no filter".
        """
        if name not in REPORTS:
            raise StoreError(f"unknown report {name!r}: choose one of {', '.join(REPORTS)}")
        given = dict(filters or {})
        unknown = set(given) - report_parameters(name)
        if unknown:
            raise StoreError(f"report {name} has no filter {', '.join(sorted(unknown))}")
        params = self._with_defaults(report_sql(name), bind_parameters(
            report_sql(name), given, limit=limit, offset=offset))
        return self._read(name, report_sql(name), params)

    def select(self, name: str, sql: str, parameters: Mapping[str, Any] | None = None) -> Report:
        """Read-only query with its column names (parameters bound server-side)."""
        return self._read(name, sql, self._with_defaults(sql, parameters or {}))

    def _read(self, name: str, sql: str, bound: Mapping[str, Any]) -> Report:
        with self._lock, self._reading():
            result = self._client.query(sql, parameters=bound)
            columns = tuple(result.column_names)
            if not columns:
                # An empty answer from chdb carries no block, so no column names: ask the
                # engine for the query's columns (a CSV of no rows still has its header).
                described = self._client.query(f"DESCRIBE TABLE ({sql})", parameters=bound)
                columns = tuple(str(r[0]) for r in described.result_rows)
        return Report(name, columns, [tuple(r) for r in result.result_rows])

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Read-only helper for tests and tools; parameters bound server-side."""
        with self._lock, self._reading():
            rows = self._client.query(sql, parameters=self._with_defaults(
                sql, parameters or {})).result_rows
        return [tuple(r) for r in rows]

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Every read's engine error as StoreReadError (one line, the store named): a
        damaged part (chdb's "Unknown codec family code") raised a driver exception
        chained through three types, which the CLI printed as a 65-line traceback.
        Inserts are left alone: the sink sorts their errors by type (rejects.py)."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the drivers raise many types
            raise StoreReadError(f"cannot read the store at {self.location.where}: "
                                 f"{_engine_first_line(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing must never mask the real error
                pass
            self._release_path()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
