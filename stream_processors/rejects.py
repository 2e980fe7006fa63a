"""Telling a bad record from a broken store, and isolating the bad records of a batch.

Owns: ``is_data_error`` (an insert failed because of what a row holds: it will fail
again however often it is retried) and ``insert_isolating`` / ``insert_isolating_sync``
(insert a batch; when it fails on data, bisect it so every good record is stored and
each bad one is returned with its reason, for the caller to dead-letter or report).

Why: a sink that retries a batch forever because one record in it can never be
stored blocks everything behind it; a sink that drops a batch on any error loses
findings when ClickHouse restarts. Data errors are isolated; everything else (a
network error, a server restarting, memory limits, anything unknown) is transient and
left to the caller's retry with backoff, so nothing is lost (issue 11, defect 1).

Must not touch: Kafka, the stages, the store's SQL. Inserts are idempotent (the
store's tables are ReplacingMergeTrees keyed by the dedup key), so re-inserting the
good half of a batch whose other table failed is harmless.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from schemas.bounded import is_digits

R = TypeVar("R")

# ClickHouse error codes that name the data, not the server's state
# (src/Common/ErrorCodes.cpp): retrying the same rows gives the same error.
DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469,  # VIOLATED_CONSTRAINT
})

# Raised client-side while a row is serialized: the row itself is wrong. Deliberately
# not ValueError/TypeError/AttributeError in general: a closed client raises ValueError
# ("I/O operation on closed file"), and calling that a data error would dead-letter
# good records; clickhouse-connect wraps real serialization faults in DataError anyway.
_CLIENT_DATA_ERRORS: tuple[type[BaseException], ...] = (
    struct.error, OverflowError, UnicodeError,
)


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    message = str(exc)
    marker = "Code: "
    at = message.find(marker)
    if at < 0:
        return None
    digits = ""
    for ch in message[at + len(marker):at + len(marker) + 6]:
        if not is_digits(ch):
            break
        digits += ch
    return int(digits) if digits else None


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` (from an insert) is about the rows, not about the store."""
    from clickhouse_connect.driver.exceptions import DataError, OperationalError

    if isinstance(exc, OperationalError):
        return False  # connection, timeouts: the store's state
    if isinstance(exc, DataError):
        return True
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return False
    if isinstance(exc, _CLIENT_DATA_ERRORS):
        return True
    cause = exc.__cause__
    if cause is not None and isinstance(cause, _CLIENT_DATA_ERRORS):
        return True
    code = _error_code(exc)
    return code is not None and code in DATA_ERROR_CODES


def reason_of(exc: BaseException) -> str:
    """One line saying why a record was refused (for its dead letter)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        message = f"{message} ({type(cause).__name__}: {str(cause).strip()[:200]})"
    return f"store refused the record: {type(exc).__name__}: {message[:500]}"


class DataRejected(Exception):
    """An insert attempt failed on data; carries the one-line reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def insert_isolating(records: Sequence[R],
                           attempt: Callable[[Sequence[R]], Awaitable[Any]],
                           ) -> list[tuple[R, str]]:
    """Insert ``records`` through ``attempt``; returns the records refused for their
    data, each with its reason. ``attempt`` must raise ``DataRejected`` for a data
    error and handle (retry) everything else itself. A batch with k bad records of n
    costs about 2k·log2(n) extra inserts; a clean batch costs one."""
    if not records:
        return []
    try:
        await attempt(records)
        return []
    except DataRejected as exc:
        if len(records) == 1:
            return [(records[0], exc.reason)]
    middle = len(records) // 2
    return [*await insert_isolating(records[:middle], attempt),
            *await insert_isolating(records[middle:], attempt)]


def insert_isolating_sync(records: Sequence[R], insert: Callable[[Sequence[R]], Any],
                          ) -> list[tuple[R, str]]:
    """The same bisection for a synchronous insert (the embedded runner's thread): data
    errors are isolated; any other error propagates, as before."""
    if not records:
        return []
    try:
        insert(records)
        return []
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(records) == 1:
            return [(records[0], reason_of(exc))]
    middle = len(records) // 2
    return [*insert_isolating_sync(records[:middle], insert),
            *insert_isolating_sync(records[middle:], insert)]


__all__ = ["DATA_ERROR_CODES", "DataRejected", "insert_isolating", "insert_isolating_sync",
           "is_data_error", "reason_of"]
