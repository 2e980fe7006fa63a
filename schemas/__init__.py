"""schemas: event records, ClickHouse DDL, report SQL and data files.

Owns: the definitions every other package shares. Imports nothing of ours.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

REPORTS: tuple[str, ...] = ("summary", "list", "products", "ciphers")


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def ddl_statements() -> tuple[str, ...]:
    """The DDL of schemas/ddl.sql as single statements, comments removed."""
    text = re.sub(r"--[^\n]*", "", _read("ddl.sql"))
    return tuple(s.strip() for s in text.split(";") if s.strip())


@cache
def report_sql(name: str) -> str:
    """The SQL of one report, run unchanged by the store (parameters bound server-side)."""
    if name not in REPORTS:
        raise KeyError(f"unknown report {name!r}; choose one of {', '.join(REPORTS)}")
    return _read(f"reports/{name}.sql")


@cache
def history_sql(name: str) -> str:
    """SQL of the change-history queries (schemas/history/*.sql), bound server-side."""
    if not re.fullmatch(r"[a-z_]+", name):
        raise KeyError(f"bad query name {name!r}")
    return _read(f"history/{name}.sql")


def report_parameters(name: str) -> frozenset[str]:
    """The names of the ``{name:Type}`` parameters a report's SQL binds."""
    return frozenset(re.findall(r"\{(\w+):\w+\}", report_sql(name)))


def data_path(name: str) -> str:
    return str(resources.files(__name__).joinpath("data", name))
