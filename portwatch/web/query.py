"""Validation of web and API requests: query string -> ``ReportQuery`` or ``BadRequest``.

Owns: which filters each report takes (read from the report's SQL parameters, so the
web and the CLI can never disagree), the allow-lists for colours, prevalence buckets,
TLS grades, sort keys and page sizes, and the one-line messages of a 400. Every value
that reaches the store has passed through here; values are bound as query parameters
by the store, never formatted into SQL.

Must not touch: the store, HTTP objects (it takes a list of (name, value) pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import REPORTS, report_parameters
from schemas.bounded import TEXT_CAP, is_digits
from schemas.filters import check_length, filter_text, normalize_target
from schemas.records import RecordError, normalize_ip

COLORS = ("red", "yellow", "green")
PROTOS = ("tcp", "udp")
# Filters a drill-down link carries (one address of a target, one protocol of a port),
# kept by the filters form as hidden fields rather than asked for
HIDDEN_FILTERS = ("exact_target", "ip", "proto")
PREVALENCE = ("very common", "somewhat common", "less common", "rare")
GRADES = ("weak", "medium", "strong")
# List sort keys (schemas/reports/list.sql ORDER BY); '' = by target, address, port.
LIST_SORTS = ("target", "organization", "port", "service", "product", "risk", "prevalence",
              "first_seen", "last_seen")
DIRECTIONS = ("asc", "desc")
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PER_PAGE = 50
MAX_API_PER_PAGE = 1000
MAX_PAGE = 1_000_000
MAX_TEXT = TEXT_CAP  # a stored value is at most this long, and any stored value can be asked for
# Filters whose values come from scanned servers (the Products page links to them): any
# character a server sent may be asked for (bound, never formatted into SQL; pages show
# it escaped). The others come from people and inventories: controls there are refused.
ANY_CHARACTER = frozenset({"product", "version"})
TRUE_WORDS = ("1", "true", "on", "yes")
FALSE_WORDS = ("0", "false", "off", "no")

# Parameters of the SQL that are not user filters.
_PAGING = frozenset({"limit", "offset", "sort", "direction", "days",
                     "no_prior"})  # no_prior: a reader setting (Store.default_parameters)
# Query-string names that are not report filters.
CONTROL = frozenset({"sort", "direction", "page", "per_page"})
# Accepted and ignored: the token that authenticates a first visit (app strips it).
IGNORED = frozenset({"token"})


class BadRequest(ValueError):
    """A request the user must fix: the message is one line, shown with a 400."""


def filter_names(report: str) -> tuple[str, ...]:
    """The filters a report takes, in a stable order (its SQL's parameters)."""
    order = ("org", "target", "exact_target", "ip", "proto", "color", "port", "product",
             "version", "prevalence", "grade", "history")
    names = report_parameters(report) - _PAGING
    return tuple(n for n in order if n in names) + tuple(sorted(names - set(order)))


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """One validated request for one report page."""

    report: str
    filters: Mapping[str, Any] = field(default_factory=dict)
    sort: str = ""
    direction: str = "asc"
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def store_filters(self) -> dict[str, Any]:
        """Filters and sort as the store binds them (unset = neutral value)."""
        params = dict(self.filters)
        wanted = report_parameters(self.report)
        if "sort" in wanted:
            params["sort"] = self.sort
            params["direction"] = self.direction
        return params

    def key(self) -> tuple[Any, ...]:
        return (self.report, tuple(sorted(self.filters.items())), self.sort, self.direction,
                self.page, self.per_page)

    def link_params(self, **overrides: Any) -> dict[str, str]:
        """The query-string form of this query (for links), with overrides; empties dropped."""
        values: dict[str, Any] = {**self.filters}
        if self.sort:
            values["sort"] = self.sort
            values["direction"] = self.direction
        if self.page != 1:
            values["page"] = self.page
        if self.per_page != DEFAULT_PER_PAGE:
            values["per_page"] = self.per_page
        values.update(overrides)
        return {k: str(v) for k, v in values.items() if v not in ("", None, 0)}


def _text(name: str, value: str) -> str:
    try:
        if name in ANY_CHARACTER:
            check_length(name, value, MAX_TEXT)
            return value  # exactly as stored, blanks too: what the Products page links to
        return filter_text(name, value, MAX_TEXT)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _int(name: str, value: str, low: int, high: int) -> int:
    # ASCII digits only: int() also takes '٨٠', '1_0', '+5' and fullwidth digits
    digits = value.strip()
    if not is_digits(digits, max_digits=4300):  # (int's own limit)
        raise BadRequest(f"{name} must be a whole number, not {value[:40]!r}")
    if len(digits.lstrip("0")) > 18:  # a number, too large for any (a review)
        raise BadRequest(f"{name} must be between {low} and {high}, not {digits[:40]}"
                         + ("..." if len(digits) > 40 else ""))
    number = int(digits)
    if not low <= number <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, not {number}")
    return number


def _choice(name: str, value: str, choices: Iterable[str]) -> str:
    """``value`` among ``choices``, whatever its case (as the CLI's flags take it)."""
    options = tuple(choices)
    if value.lower() not in options:
        raise BadRequest(f"{name} must be one of {', '.join(options)}; got {value[:40]!r}")
    return value.lower()


def _filter_value(name: str, value: str) -> Any:
    if name == "target":
        try:
            return normalize_target(_text(name, value))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    if name == "port":
        return _int("port", value, 0, 65535)  # 0: any, as --port 0
    if name == "ip":
        try:
            return normalize_ip(value.strip())
        except RecordError:
            raise BadRequest(f"ip must be one IP address, not {value[:40]!r}") from None
    if name == "proto":
        return _choice("proto", value, PROTOS)
    if name == "color":
        return _choice("color", value, COLORS)
    if name == "prevalence":
        return _choice("prevalence", value, PREVALENCE)
    if name == "grade":
        return _choice("grade", value, GRADES)
    if name == "history":
        lowered = value.lower()
        if lowered in TRUE_WORDS:
            return 1
        if lowered in FALSE_WORDS:
            return 0
        raise BadRequest(f"history must be 1 or 0, not {value[:40]!r}")
    return _text(name, value)


def parse_query(report: str, pairs: Iterable[tuple[str, str]], *,
                is_api: bool = False) -> ReportQuery:
    """Validate a query string for one report; raises BadRequest with the reason."""
    if report not in REPORTS:
        raise BadRequest(f"unknown report {report!r}: choose one of {', '.join(REPORTS)}")
    allowed = filter_names(report)
    sortable = "sort" in report_parameters(report)
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name in IGNORED:
            continue
        if name in seen:
            raise BadRequest(f"{name} is given more than once")
        if name not in allowed and name not in CONTROL:
            # the paging controls, and the sorting ones only where the report sorts
            controls = sorted(CONTROL if sortable else CONTROL - {"sort", "direction"})
            accepted = ", ".join((*allowed, *controls))
            raise BadRequest(f"{report} has no parameter {name[:40]!r}; it accepts {accepted}")
        seen[name] = value
    filters: dict[str, Any] = {}
    for name in allowed:
        raw = seen.get(name, "")
        if raw.strip() == "":
            continue
        # product and version as sent (a server's " Jetty " is not "Jetty"); the rest
        # are typed by people: their blanks are not meant
        value = _filter_value(name, raw if name in ANY_CHARACTER else raw.strip())
        if value not in ("", 0):
            filters[name] = value
    sort = seen.get("sort", "")
    direction = seen.get("direction", "") or "asc"
    if (sort or seen.get("direction")) and not sortable:
        raise BadRequest(f"{report} cannot be sorted; its order is fixed")
    if sort:
        sort = _choice("sort", sort, LIST_SORTS)  # the listed spelling: the SQL's key
    direction = _choice("direction", direction, DIRECTIONS)
    if sortable and not sort and direction == "desc":
        sort = "target"  # the default order, reversed: what the header then shows
    if sort == "target" and direction == "asc":
        sort = ""  # the SQL's own default order (target descending is a sort of its own)
    page = _int("page", seen["page"], 1, MAX_PAGE) if seen.get("page") else 1
    per_page = DEFAULT_PER_PAGE
    if seen.get("per_page"):
        if is_api:
            per_page = _int("per_page", seen["per_page"], 1, MAX_API_PER_PAGE)
        else:
            per_page = int(_choice("per_page", seen["per_page"], map(str, PAGE_SIZES)))
    return ReportQuery(report, filters, sort, direction, page, per_page)
