"""Readers for the user's own nmap data files (Debian ``nmap-common``, /usr/share/nmap).

Owns: locating the nmap data directory and parsing three of its files at run time:
``nmap-services`` (port frequencies: top-N ports and prevalence priors),
``nmap-payloads`` (UDP discovery payloads) and ``nmap-service-probes`` (the
version-detection probes and match lines).

Licence: these files are under the Nmap Public Source License. portwatch never
copies them, or lines from them, into its repository or packages: it reads the
copy installed on the user's machine. Everything here is optional. When a file
is missing the loaders raise :class:`NmapDataUnavailable` (one clear message that
says how to fix it); callers turn that into a single warning and carry on with
portwatch's own probes.

Lookup order for the data directory: an explicit argument, then the
``PORTWATCH_NMAP_DATA`` environment variable, then ``/usr/share/nmap``.

Must not touch: the network, storage, Kafka. Parsing only.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = Path("/usr/share/nmap")
ENV_DATA_DIR = "PORTWATCH_NMAP_DATA"

INSTALL_HINT = "install nmap's data files (Debian: apt-get install nmap-common) or set " + (
    f"{ENV_DATA_DIR} to the directory that holds them"
)


class NmapDataUnavailable(RuntimeError):
    """An nmap data file is missing or unreadable; the message says how to fix it."""


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The nmap data directory: ``path``, else $PORTWATCH_NMAP_DATA, else /usr/share/nmap."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    return DEFAULT_DATA_DIR


def data_file(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Resolve one data file.

    ``path`` may name the file itself or the directory holding it. Raises
    :class:`NmapDataUnavailable` when the file is not there.
    """
    candidate = Path(path) if path is not None else data_dir() / name
    if candidate.is_dir():
        candidate = candidate / name
    if not candidate.is_file():
        raise NmapDataUnavailable(f"nmap data file {candidate} not found: {INSTALL_HINT}")
    return candidate


def read_data_file(name: str, path: str | os.PathLike[str] | None = None) -> bytes:
    """The raw bytes of one data file (see :func:`data_file` for ``path``)."""
    resolved = data_file(name, path)
    try:
        return resolved.read_bytes()
    except OSError as exc:
        raise NmapDataUnavailable(f"cannot read nmap data file {resolved}: {exc}") from exc


class NmapDataError(ValueError):
    """A data file is present but malformed at a given line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        # One line, bounded: the message quotes the file's line, which may be anything
        shown = " ".join(message.split())
        shown = shown if len(shown) <= 200 else shown[:200] + "..."
        super().__init__(f"{source}:{line}: {shown}")
        self.source = source
        self.line = line


_C_ESCAPES = {
    ord("0"): 0,
    ord("a"): 7,
    ord("b"): 8,
    ord("f"): 12,
    ord("n"): 10,
    ord("r"): 13,
    ord("t"): 9,
    ord("v"): 11,
    ord("\\"): ord("\\"),
    ord('"'): ord('"'),
    ord("'"): ord("'"),
}
_HEX = b"0123456789abcdefABCDEF"


def c_unescape(raw: bytes) -> bytes:
    """Decode the C escapes nmap uses in probe strings, payloads and $SUBST arguments.

    ``\\0 \\a \\b \\f \\n \\r \\t \\v \\\\ \\" \\'`` and ``\\xHH`` (one or two hex
    digits); any other escaped byte stands for itself, as in nmap's
    ``cstring_unescape``. Raises ValueError on a lone trailing backslash or ``\\x``
    without a hex digit.
    """
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte != 0x5C:  # backslash
            out.append(byte)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("lone backslash at the end of an escaped string")
        code = raw[i + 1]
        if code == ord("x"):
            digits = raw[i + 2 : i + 4]
            take = 2 if len(digits) == 2 and all(d in _HEX for d in digits) else 1
            if not digits[:1] or digits[0] not in _HEX:
                raise ValueError(f"bad \\x escape at offset {i}")
            out.append(int(raw[i + 2 : i + 2 + take], 16))
            i += 2 + take
            continue
        out.append(_C_ESCAPES.get(code, code))
        i += 2
    return bytes(out)


def parse_port_list(text: str) -> frozenset[int]:
    """Parse ``21-25,53,80`` (as in ``ports`` lines and nmap-payloads) into ports.

    Raises ValueError on anything else, or a port outside 0-65535.
    """
    ports: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        lo = int(first)
        hi = int(last) if sep else lo
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"bad port range {part!r}")
        ports.update(range(lo, hi + 1))
    return frozenset(ports)


__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_DATA_DIR",
    "NmapDataError",
    "NmapDataUnavailable",
    "c_unescape",
    "data_dir",
    "data_file",
    "parse_port_list",
    "read_data_file",
]
