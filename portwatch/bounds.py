"""Upper and lower bounds of every numeric setting, as one table the composition root
applies at start.

Owns: ``SETTING_BOUNDS`` (field name -> inclusive (low, high) and why the ceiling is
there) and ``check_bounds``, plus the ``--udp topN`` bound. A value outside its bounds
is bad input: one line, exit 2, before anything is sent (issue 11, defect 9: a
concurrency or shard size of 10**12 was accepted).

Must not touch: the settings' defaults or their sources (``portwatch.settings`` owns
them); the network; storage. It reads attributes by name only, so the table carries
over to whatever object holds the settings.
"""

from __future__ import annotations

from typing import Any

# name -> (lowest, highest, why the ceiling). Floats in seconds are bounded in settings.
SETTING_BOUNDS: dict[str, tuple[int, int, str]] = {
    "concurrency": (1, 1_000_000, "sockets in flight; the fd limit caps it further"),
    "identify_concurrency": (1, 10_000, "each identification holds sockets and memory"),
    "per_host_connections": (1, 256, "politeness towards one address"),
    "batch_size": (1, 100_000, "rows per insert: one batch must fit in memory"),
    "tarpit_threshold": (1, 65_535, "a host has at most 65,535 ports per protocol"),
    "shard_ports": (1, 65_535, "a shard covers at most every port of its hosts"),
    "shard_hosts": (1, 65_536, "a shard bigger than a /16 cannot be retried cheaply"),
    "rate": (0, 10_000_000, "packets/s; beyond any adapter this runs on"),
    "retries": (0, 10, "each retry re-sends a shard's silent ports"),
}

# ``--udp topN``: nmap-services lists fewer UDP ports than this; N beyond it is a typo.
MAX_UDP_TOP = 65_535


class BoundsError(ValueError):
    """A setting outside its bounds; the message is one line for the user."""


def check_bounds(settings: Any) -> None:
    """Raise BoundsError for the first numeric setting outside ``SETTING_BOUNDS``."""
    for name, (low, high, why) in SETTING_BOUNDS.items():
        value = getattr(settings, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BoundsError(f"--{name.replace('_', '-')} must be a whole number")
        if not low <= value <= high:
            raise BoundsError(f"--{name.replace('_', '-')} must be between {low:,} and "
                              f"{high:,} ({why}), not {value:,}")
    udp = getattr(settings, "udp", None)
    if isinstance(udp, str):
        check_udp_spec(udp)


def check_udp_spec(spec: str) -> None:
    """``topN`` needs 1 <= N <= MAX_UDP_TOP and ASCII digits; other forms are checked
    by the port-spec parser."""
    text = spec.strip().lower()
    if not text.startswith("top"):
        return
    digits = text[3:] or "1000"
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 6 \
            or not 1 <= int(digits) <= MAX_UDP_TOP:
        shown = spec if len(spec) <= 40 else spec[:40] + "..."
        raise BoundsError(f"bad --udp {shown!r}: topN needs 1 <= N <= {MAX_UDP_TOP:,}")


__all__ = ["MAX_UDP_TOP", "SETTING_BOUNDS", "BoundsError", "check_bounds", "check_udp_spec"]
