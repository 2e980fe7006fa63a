"""Bounding values before they reach a typed ClickHouse column.

Owns: the saturating and capping helpers the store's row builders apply to every
value, and the caps themselves (``TEXT_CAP``...). Everything in a row came, one way
or another, from the network or a file: a TLS server can announce a 9,000-byte DHE
prime (72,000 bits, which overflows ``UInt16``), a banner can be megabytes, a
timestamp can be in the year 9999 (``DateTime64(3)`` stops in 2299). Clamping here,
once per column kind, means one hostile value can never fail an insert and take the
batch, the scan or the sink with it (issue 11, defect 1).

Saturating (not wrapping) keeps the meaning: a 72,000-bit prime is stored as 65,535,
"at least this big", never as 6,464.

Must not touch: anything of ours (``schemas`` imports nothing of ours), the network,
the store. Pure functions, total over any input: they never raise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

UINT8_MAX = 2**8 - 1
UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1

# Characters kept of one free-text value (subjects, products, reasons, notes...).
TEXT_CAP = 4096
# Characters kept of one banner (an excerpt: the full banner never needs storing).
BANNER_CAP = 1024
# Characters kept of a JARM fingerprint (one is 62 hex characters).
JARM_CAP = 62
# Elements kept of one array column (SANs, TLS versions), and characters per element.
ARRAY_CAP = 1000
ARRAY_ITEM_CAP = 1024

# DateTime64(3, 'UTC') holds 1900-01-01 .. 2299-12-31: clamp into it.
TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if math.isinf(value):
            return UINT32_MAX if value > 0 else 0
        return int(value)
    return 0  # not a number at all: the neutral value, never an exception


def saturate(value: Any, high: int, low: int = 0) -> int:
    """``value`` as an int clamped into [low, high]; non-numbers become ``low``."""
    number = _as_int(value)
    return low if number < low else high if number > high else number


def u8(value: Any) -> int:
    return saturate(value, UINT8_MAX)


def u16(value: Any) -> int:
    return saturate(value, UINT16_MAX)


def u32(value: Any) -> int:
    return saturate(value, UINT32_MAX)


def i32(value: Any) -> int:
    """Int32, saturating (a certificate's days to expiry come from the network)."""
    return saturate(value, 2**31 - 1, -(2**31))


def flag(value: Any) -> int:
    """A UInt8 boolean column."""
    return 1 if value else 0


def text(value: Any, cap: int = TEXT_CAP) -> str:
    """``value`` as a str of at most ``cap`` characters; lone surrogates (which a UTF-8
    encoder refuses) replaced, so encoding the row cannot fail."""
    out: str = value if isinstance(value, str) else "" if value is None else str(value)
    if len(out) > cap:
        out = out[:cap]
    if not out.isascii():
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:
            out = out.encode("utf-8", "replace").decode("utf-8")
    return out


def texts(values: Any, cap: int = ARRAY_CAP, item_cap: int = ARRAY_ITEM_CAP) -> list[str]:
    """An Array(String) column: at most ``cap`` elements of at most ``item_cap`` chars."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        return []
    out: list[str] = []
    for item in values:
        if len(out) >= cap:
            break
        out.append(text(item, item_cap))
    return out


def is_digits(text: str, max_digits: int = 18) -> bool:
    """1 to ``max_digits`` ASCII digits: ``str.isdigit`` also says yes to '²' and '٣', which
    ``int`` refuses (a ValueError where a check had promised a number), and ``int`` refuses
    more than 4,300 digits; 18 fit any count, port, pid or limit this code reads."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def timestamp(value: Any) -> datetime:
    """A DateTime64(3, 'UTC') column: aware, inside the column's range."""
    if not isinstance(value, datetime):
        return TIME_MIN
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return TIME_MIN if value < TIME_MIN else TIME_MAX if value > TIME_MAX else value


__all__ = [
    "ARRAY_CAP", "ARRAY_ITEM_CAP", "BANNER_CAP", "JARM_CAP", "TEXT_CAP", "TIME_MAX", "TIME_MIN",
    "UINT16_MAX", "UINT32_MAX", "UINT8_MAX", "flag", "is_digits", "saturate", "text", "texts",
    "timestamp",
    "u16", "u32", "u8",
]
