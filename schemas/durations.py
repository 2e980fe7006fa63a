"""The one duration grammar of every command, alerts file and page.

Owns: reading ``250ms``, ``30s``, ``5m``, ``12h``, ``7d``, ``2w`` (a whole or decimal
amount and a unit, spaces between them allowed: ``5 m``; ``1.5h``) into seconds. The
same text means the same period wherever it is written: ``report changes --since``,
``prune --older-than``, the Changes page's ``since``, ``alerts deliver --wait`` and the
alerts file's ``digest``/``delivery`` values.
Each caller gives its range (a look-back of at least a second; a digest of at most 30
days) and whether a bare number is seconds (the alerts file's ``digest: 0``, kept for the
files already written; a look-back always names its unit).

Must not touch: anything of ours (``schemas`` imports nothing of ours). Total over any
text: a ``ValueError`` with a one-line message, never another exception.
"""

from __future__ import annotations

import math
import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# ASCII digits only ('²' and '٣' are digits to Python). An amount of more than
# ``MAX_WHOLE_DIGITS`` digits is out of any caller's range, said so before converting it.
_GRAMMAR = re.compile(r"([0-9]+)(?:\.([0-9]+))? *(ms|s|m|h|d|w)?", re.ASCII)
MAX_WHOLE_DIGITS = 15
EXAMPLES = "e.g. 30s, 5m, 12h, 7d, 2w"


def shown(text: str, cap: int = 40) -> str:
    """``text`` as an error message quotes it: repr-escaped, at most ``cap`` characters
    of the escaped form (a control character is four)."""
    quoted = repr(text)
    return quoted if len(quoted) <= cap else quoted[:cap - 3] + "..."


def describe_seconds(seconds: float) -> str:
    """A bound in the grammar's own words: ``0``, ``1s``, ``30 days``, ``36,500 days``."""
    if seconds == 0:
        return "0"
    if seconds >= 86400 and seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days:,} day" + ("s" if days != 1 else "")
    for unit in ("h", "m", "s"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{int(seconds // UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def parse_seconds(text: str, *, least: float, most: float, bare_seconds: bool = False
                  ) -> float:
    """``text`` in the grammar -> seconds in [least, most]; ValueError saying why
    otherwise. Case and surrounding blanks are ignored (but an upper-case M, a month to
    some, is refused); ``bare_seconds``: a number without a unit is seconds (else it is
    refused: ``--since 7`` would be ambiguous)."""
    found = _GRAMMAR.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if found is None or (found.group(3) is None and not bare_seconds):
        units = ", ".join(UNITS)
        need = "a number and a unit" + (" (seconds if none)" if bare_seconds else "")
        raise ValueError(f"bad duration {shown(str(text))}: use {need} ({units}), "
                         f"{EXAMPLES}")
    whole, fraction, unit = found.groups()
    if unit == "m" and "M" in text:
        # 1M reads as a month to many (Grafana, date tools): a month of raw rows pruned
        # as one minute's is not undone
        raise ValueError(f"bad duration {shown(text)}: M is not a unit here; write m for "
                         "minutes (5m) or days for a month (30d)")
    whole = whole.lstrip("0") or "0"
    seconds = (float(f"{whole}.{(fraction or '0')[:9]}") * UNITS[unit or "s"]
               if len(whole) <= MAX_WHOLE_DIGITS else math.inf)
    if not least <= seconds <= most:
        raise ValueError(f"bad duration {shown(text)}: from {describe_seconds(least)} to "
                         f"{describe_seconds(most)}")
    return seconds
