"""Schedules of ``portwatch watch``: the file, the cron arithmetic, the run ledger.

Owns: parsing ``schedules.yaml`` (entries with a name, targets or an inventory (optionally
narrowed to one organization), TCP ports, a UDP profile and a cron expression, checked
with croniter; errors are one FILE:LINE line), deciding what is due at an instant given
the last run of each entry (``plan``), the ``watch_runs`` ledger in the store, and the
claim a watcher takes on a slot before running it (``claim_slot``: two watchers on one
ClickHouse server never both run it).

Semantics (the clock is injected; nothing here sleeps):
- an entry that never ran is due at once (its first run is the baseline);
- otherwise it is due when a cron slot passed since the slot of its last run; however
  many slots were missed (portwatch was down), it runs once, and the plan says how many
  were skipped so the caller logs the catch-up;
- entries are planned in name order and run one after another by the watcher, so two
  entries never scan the same target at the same time.
Cron expressions are evaluated in UTC.

Must not touch: scanning or delivery (``portwatch.alerts.watch`` drives both).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from portwatch.alerts.config import (
    AlertConfigError,
    compose_yaml,
    mapping_items,
    read_text_file,
)
from portwatch.alerts.owners import owner_is_gone
from portwatch.settings import parse_bool

MAX_MISSED_COUNTED = 10_000
RUN_COLUMNS = ("entry", "slot", "started_at", "finished_at", "scan_id", "status", "note",
               "owner")


class ScheduleError(AlertConfigError):
    """A bad schedules file; one line ``FILE:LINE: what is wrong``."""


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    name: str
    cron: str
    targets: tuple[str, ...] = ()
    inventory: str = ""
    organization: str = ""
    asset: str = ""
    ports: str = "1-65535"
    udp: str = "top1000"
    exclude: tuple[str, ...] = ()
    line: int = 0
    allow_large: bool = False  # more than a /16 of addresses in all (scan's --allow-large)


@dataclass(frozen=True, slots=True)
class Decision:
    entry: ScheduleEntry
    is_due: bool
    slot: datetime  # the cron slot a due run stands for (now, for a first run)
    next_run: datetime  # when it runs next (now when due)
    missed: int = 0  # slots skipped beyond the one run now (catch-up)


CRON_MAX_YEARS = 5  # a slot at least this often: "0 0 31 2 *" never comes


def _croniter(expression: str, start: datetime) -> Any:
    from croniter import croniter

    return croniter(expression, start, max_years_between_matches=CRON_MAX_YEARS)


# A token of a standard cron field: *, a number, or a month or weekday name (jan, mon).
# Not croniter's extensions: R (random, drawn again at every check, so the entry ran at
# random minutes, twice in a row at times), L, W, # and ?, which Kubernetes CronJobs (the
# Helm chart's schedules:) refuse.
_CRON_TOKEN = re.compile(r"\*|[0-9]{1,4}|[A-Za-z]{3}")


_CRON_NAMES = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    start=1)} | {name: i for i, name in enumerate(
        ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}


def _cron_value(token: str) -> int | None:
    """A range end's value (a number, or a month or weekday name); None otherwise."""
    if token.isdigit():
        return int(token)
    return _CRON_NAMES.get(token.lower())


def cron_problem(expression: str) -> str:
    """Why ``expression`` is no schedule, in words (``""``: it is one). Five fields
    (minute hour day month weekday: croniter would also take a sixth, of seconds) of
    standard tokens, or an alias (@daily), at most 200 characters, and a slot at least
    once in CRON_MAX_YEARS years both ways (a date that never comes would leave the entry
    never due, or raise later)."""
    from croniter import croniter

    bad = (f"bad cron expression {expression[:60]!r} (five fields: minute hour day month "
           f"weekday, or @daily..., one that comes at least once in {CRON_MAX_YEARS} years)")
    fields = expression.split()
    is_alias = len(fields) == 1 and fields[0].startswith("@")  # @hourly, @daily...
    if len(expression) > 200 or not (len(fields) == 5 or is_alias):
        return bad
    for token in [] if is_alias else re.split(r"[,/-]", ",".join(fields)):
        if not _CRON_TOKEN.fullmatch(token):
            return (f"cron {expression[:60]!r}: {token[:20]!r} is not standard cron (R, L, "
                    "W, # and ? are refused: a random field is drawn again at every check, "
                    "and Kubernetes cron refuses them)")
    for part in [] if is_alias else ",".join(fields).split(","):
        first, dash, last = part.split("/")[0].partition("-")
        low, high = _cron_value(first), _cron_value(last)
        if dash and low is not None and high is not None and low > high:
            return (f"cron {expression[:60]!r}: range {first}-{last} runs backwards "
                    "(Kubernetes cron refuses it: write it as two ranges, e.g. 50-59,0-10)")
    try:
        if not croniter.is_valid(expression):
            return bad
        start = datetime(2026, 1, 1, tzinfo=UTC)
        _croniter(expression, start).get_next(datetime)
        _croniter(expression, start).get_prev(datetime)
    except Exception:  # noqa: BLE001 - croniter raises several types on garbage
        return bad
    return ""


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def previous_slot(entry: ScheduleEntry, now: datetime) -> datetime:
    """The latest cron slot at or before ``now`` (croniter's get_prev is strictly before
    its start, so start one second later: a slot at exactly ``now`` counts; from the
    whole second, so at 10:59:59.4 the slot is 10:00, not the 11:00 still to come)."""
    itr = _croniter(entry.cron, _utc(now).replace(microsecond=0) + timedelta(seconds=1))
    return _utc(itr.get_prev(datetime))


def next_slot(entry: ScheduleEntry, after: datetime) -> datetime:
    return _utc(_croniter(entry.cron, _utc(after)).get_next(datetime))


def is_from_the_future(slot: datetime, now: datetime) -> bool:
    """A slot is recorded when its run starts, at or after it: one after ``now`` was
    recorded by a clock that ran ahead."""
    return _utc(slot) > _utc(now)


def decide(entry: ScheduleEntry, last_slot: datetime | None, now: datetime) -> Decision:
    now = _utc(now)
    if last_slot is None or is_from_the_future(last_slot, now):
        # never run (its baseline runs now); a slot after now was recorded by a clock
        # that ran ahead (``last_slots(store, now)`` leaves those out): run it now too
        return Decision(entry, True, now, now)
    last_slot = _utc(last_slot)
    latest = previous_slot(entry, now)
    if latest <= last_slot:
        return Decision(entry, False, latest, next_slot(entry, max(now, last_slot)))
    missed = 0
    itr = _croniter(entry.cron, last_slot)
    while missed < MAX_MISSED_COUNTED:
        slot = _utc(itr.get_next(datetime))
        if slot >= latest:
            break
        missed += 1
    return Decision(entry, True, latest, now, missed)


def plan(entries: Sequence[ScheduleEntry], last_slots: Mapping[str, datetime | None],
         now: datetime) -> list[Decision]:
    """One decision per entry, in name order (the order they run in)."""
    return [decide(e, last_slots.get(e.name), now) for e in sorted(entries, key=lambda e: e.name)]


# -- the ledger -------------------------------------------------------------------------


def last_slots(store: Any, now: datetime | None = None) -> dict[str, datetime]:
    """The latest slot each entry ran for. With ``now``: the latest not after it (a slot
    recorded by a clock that ran ahead would hold the entry until that time came again;
    ``future_slots`` names them)."""
    rows = store.query("SELECT entry, maxIf(slot, slot <= {now:DateTime64(3, 'UTC')}) "
                       "FROM watch_runs FINAL WHERE status != 'interrupted' GROUP BY entry "
                       "HAVING countIf(slot <= {now:DateTime64(3, 'UTC')}) > 0",
                       {"now": _utc(now) if now is not None else datetime(2299, 1, 1,
                                                                          tzinfo=UTC)})
    return {str(r[0]): _utc(r[1]) for r in rows}


def last_statuses(store: Any, now: datetime) -> dict[str, str]:
    """The status of each entry's latest run (as ``last_slots`` picks it): "completed",
    "failed"..."""
    rows = store.query("SELECT entry, argMax(status, (slot, finished_at)) FROM watch_runs "
                       "FINAL WHERE status != 'interrupted' AND slot <= "
                       "{now:DateTime64(3, 'UTC')} GROUP BY entry", {"now": _utc(now)})
    return {str(r[0]): str(r[1]) for r in rows}


def future_slots(store: Any, now: datetime) -> dict[str, datetime]:
    """Entries with a run recorded for a slot after ``now`` (the clock was ahead then)."""
    rows = store.query("SELECT entry, max(slot) FROM watch_runs FINAL "
                       "WHERE status != 'interrupted' AND slot > {now:DateTime64(3, 'UTC')} "
                       "GROUP BY entry", {"now": _utc(now)})
    return {str(r[0]): _utc(r[1]) for r in rows}


def record_run(store: Any, entry: str, slot: datetime, started: datetime, finished: datetime,
               scan_id: str, status: str, note: str = "", owner: str = "") -> None:
    store.insert_rows("watch_runs", RUN_COLUMNS, [[entry, slot, started, finished, scan_id,
                                                   status, note[:500], owner]])


# -- who runs a slot (ddl.sql watch_claims) ---------------------------------------------------

CLAIM_COLUMNS = ("entry", "slot", "attempt", "owner", "claimed_at")
HEARTBEAT_SECONDS = 60.0  # a watcher running a slot renews its claim this often
CLAIM_LEASE_SECONDS = 300.0  # a claim not renewed this long (server time) is over
_CLAIM_TRIES = 5  # attempts whose token a pruned claim already used are skipped
_LATEST_CLAIM = (
    "SELECT slot, attempt, owner, "
    "dateDiff('millisecond', max(claimed_at), now64(3)) / 1000 AS age "
    "FROM watch_claims WHERE entry = {entry:String} AND slot <= {slot:DateTime64(3, 'UTC')} "
    "GROUP BY slot, attempt, owner ORDER BY slot DESC, attempt DESC LIMIT 1")
_INSERT_CLAIM = ("INSERT INTO watch_claims SELECT {entry:String}, "
                 "{slot:DateTime64(3, 'UTC')}, {attempt:UInt16}, {owner:String}, now64(3)")


@dataclass(frozen=True, slots=True)
class SlotClaim:
    """The answer of ``claim_slot``. ``won``: this watcher runs the slot (``attempt``,
    which it renews). Else ``holder`` is the watcher whose live claim holds the entry
    (on ``slot``: this one, or an earlier slot it still runs), or empty: the slot's run
    was recorded since this watcher read the ledger."""

    won: bool
    holder: str = ""
    slot: datetime | None = None
    attempt: int = 0


def claim_slot(store: Any, entry: str, slot: datetime, owner: str) -> SlotClaim:
    """Claim ``entry``'s ``slot`` for ``owner`` (``owners.owner_id``) before running it.

    The entry's latest claim up to ``slot`` decides. It is over once its owner recorded
    a run of its slot or a later one (watch_runs.owner: a run is tied to its claim by
    who made it, never by comparing two machines' clocks), once its owner's process on
    this host is gone (a SIGKILL, a restarted container), or once it was not renewed for
    ``CLAIM_LEASE_SECONDS`` by the server's clock (a watcher on another host that died).
    A live one holds the entry, even for a later slot: two watchers never scan one
    entry at once, though a run outlasts its cron period. A completed or failed run of
    ``slot`` itself means it is done; an interrupted one is claimed again (the next
    attempt). The insert carries the deduplication token (entry, slot, attempt), so one
    claim per attempt lands however many watchers try at once; the watcher whose row
    landed runs the slot. Its own claim (its insert landed, then a store error) is its."""
    slot = _utc(slot)
    at_least = 1
    for _ in range(_CLAIM_TRIES):
        params: dict[str, Any] = {"entry": entry, "slot": slot}
        attempt = at_least
        latest = store.query(_LATEST_CLAIM, params)
        if latest:
            held = _utc(latest[0][0])
            last, holder, age = int(latest[0][1]), str(latest[0][2]), float(latest[0][3])
            recorded = {str(r[0]) for r in store.query(
                "SELECT status FROM watch_runs WHERE entry = {entry:String} "
                "AND owner = {holder:String} AND slot >= {held:DateTime64(3, 'UTC')}",
                {**params, "holder": holder, "held": held})}
            if recorded:
                if held == slot and recorded - {"interrupted"}:
                    return SlotClaim(False)  # made since this watcher read the ledger
            elif holder == owner:
                if held == slot:
                    return SlotClaim(True, attempt=last)
            elif not owner_is_gone(holder) and age < CLAIM_LEASE_SECONDS:
                return SlotClaim(False, holder, held)
            attempt = max(attempt, last + 1 if held == slot else 1)
        store.command(_INSERT_CLAIM, {**params, "attempt": attempt, "owner": owner},
                      settings={"insert_deduplication_token":
                                f"{entry}\x1f{slot.isoformat()}\x1f{attempt}"})
        landed = store.query("SELECT owner FROM watch_claims WHERE entry = {entry:String} "
                             "AND slot = {slot:DateTime64(3, 'UTC')} "
                             "AND attempt = {attempt:UInt16} LIMIT 1",
                             {**params, "attempt": attempt})
        if landed:
            holder = str(landed[0][0])
            return (SlotClaim(True, attempt=attempt) if holder == owner
                    else SlotClaim(False, holder, slot))
        at_least = attempt + 1  # its token was used by a claim pruned since: the next one
    return SlotClaim(False)


def renew_claim(store: Any, entry: str, slot: datetime, attempt: int, owner: str) -> None:
    """A running watcher's claim is still live (a row of the same attempt, by the
    server's clock; no token: each renewal lands)."""
    store.command(_INSERT_CLAIM, {"entry": entry, "slot": _utc(slot), "attempt": attempt,
                                  "owner": owner})


# -- the file ---------------------------------------------------------------------------


def load_schedules(path: str | os.PathLike[str]) -> list[ScheduleEntry]:
    name = str(path)
    text = read_text_file(name, ScheduleError)
    try:
        root = compose_yaml(name, text)
    except AlertConfigError as exc:
        raise ScheduleError(name, exc.line, str(exc).split(": ", 1)[-1]) from None
    return _parse(name, root)


_KEYS = ("name", "cron", "targets", "inventory", "organization", "asset", "ports", "udp",
         "exclude", "allow_large")


def _parse(path: str, root: yaml.Node | None) -> list[ScheduleEntry]:
    def fail(node: yaml.Node | None, message: str) -> ScheduleError:
        return ScheduleError(path, node.start_mark.line + 1 if node is not None else 0, message)

    if root is None:
        raise fail(None, "empty file: needs schedules: with at least one entry")
    entries_node: yaml.Node | None = root
    if isinstance(root, yaml.MappingNode):
        keys = mapping_items(root, "the file", fail)
        for key, (key_node, _) in keys.items():
            if key != "schedules":
                raise fail(key_node, f"unknown key {key!r} (known: schedules)")
        if "schedules" not in keys:
            raise fail(root, "no schedules: list")
        entries_node = keys["schedules"][1]
    if not isinstance(entries_node, yaml.SequenceNode):
        raise fail(entries_node, "schedules must be a list of entries (- name: ...)")
    if not entries_node.value:  # a list, just empty: say so, not that it is no list
        raise fail(entries_node, "schedules: no entries (a list of entries with name, cron "
                                 "and targets or inventory)")
    out: list[ScheduleEntry] = []
    seen: set[str] = set()
    for node in entries_node.value:
        if not isinstance(node, yaml.MappingNode):
            raise fail(node, "a schedule entry must be a mapping (name:, cron:, targets:)")
        values: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        for key, (key_node, value_node) in mapping_items(node, "schedule entry", fail).items():
            if key not in _KEYS:
                raise fail(key_node, f"unknown key {key!r} (known: {', '.join(_KEYS)})")
            nodes[key] = value_node
            if key in ("targets", "exclude"):
                items = value_node.value if isinstance(value_node, yaml.SequenceNode) \
                    else [value_node]
                texts = []
                for item in items:
                    if not isinstance(item, yaml.ScalarNode) or not str(item.value).strip():
                        raise fail(item, f"{key}: each entry is one address, block or name")
                    texts.append(str(item.value).strip())
                values[key] = tuple(texts)
            else:
                if not isinstance(value_node, yaml.ScalarNode):
                    raise fail(value_node, f"{key} must be a single value")
                values[key] = str(value_node.value).strip()
        name = values.get("name", "")
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?", name or ""):
            raise fail(nodes.get("name", node), f"schedule name {name!r}: lower-case letters, "
                                                "digits and '-', at most 52 (it names a "
                                                "CronJob)")
        if name in seen:
            raise fail(nodes["name"], f"schedule name {name!r} used twice")
        seen.add(name)
        cron = values.get("cron", "")
        if not cron:
            raise fail(node, f"schedule {name!r}: no cron: expression")
        problem = cron_problem(cron)
        if problem:
            raise fail(nodes["cron"], f"schedule {name!r}: {problem}")
        if not values.get("targets") and not values.get("inventory"):
            raise fail(node, f"schedule {name!r}: give targets: or inventory:")
        inventory = values.get("inventory", "")
        if inventory:
            inv_path = os.path.expanduser(inventory)
            if not os.path.isabs(inv_path):
                inv_path = os.path.join(os.path.dirname(os.path.abspath(path)), inv_path)
            if not os.path.isfile(inv_path):
                raise fail(nodes["inventory"], f"schedule {name!r}: inventory {inventory!r} "
                                               "not found")
            values["inventory"] = inv_path
        ports = values.get("ports", "1-65535")
        if not _is_port_profile(ports):
            why = _top_problem(ports) or "a spec like 22,80,8000-8100, all, or topN"
            raise fail(nodes["ports"], f"schedule {name!r}: bad ports {ports!r} ({why})")
        udp = values.get("udp", "top1000")
        if not _is_port_profile(udp, allow_none=True):
            why = _top_problem(udp) or "top1000, none or a spec"
            raise fail(nodes["udp"], f"schedule {name!r}: bad udp {udp!r} ({why})")
        try:
            allow_large = parse_bool(values.get("allow_large", "false"))
        except ValueError:
            raise fail(nodes["allow_large"], f"schedule {name!r}: allow_large is true or "
                                             f"false, not {values['allow_large'][:40]!r}"
                       ) from None
        if inventory and values.get("asset") and not values.get("targets"):
            # it labels the entry's targets; with an inventory alone it did nothing
            raise fail(nodes["asset"], f"schedule {name!r}: asset labels the entry's "
                                       "targets; an inventory's targets carry their own "
                                       "(its asset column)")
        out.append(ScheduleEntry(
            name=name, cron=cron, targets=values.get("targets", ()), inventory=inventory and
            values["inventory"], organization=values.get("organization", ""),
            asset=values.get("asset", ""), ports=ports, udp=udp,
            exclude=values.get("exclude", ()), line=node.start_mark.line + 1,
            allow_large=allow_large))
    return out


def _top_problem(text: str) -> str:
    """What is wrong with a ``topN`` profile ("" when it is one, or is not a topN at all):
    N counts nmap's most often open ports, 1 to 65,535, as ``--udp topN`` takes it (a
    schedule once took top99999 and scanned whatever nmap-services lists, and top0 failed
    at its first run, not when the file was read)."""
    from producers.targets import TargetError, top_count

    lowered = text.strip().lower()
    if not lowered.startswith("top"):
        return ""
    try:
        top_count(lowered)
    except TargetError as exc:
        return str(exc)
    return ""


def _is_port_profile(text: str, *, allow_none: bool = False) -> bool:
    lowered = text.strip().lower()
    if allow_none and lowered in ("none", "no", "off"):
        return True
    if lowered in ("all", "-", "*"):
        return True
    if lowered.startswith("top"):
        return not _top_problem(lowered)
    from producers.targets import TargetError, parse_ports

    try:
        parse_ports(lowered)
    except (TargetError, ValueError):
        return False
    return True
