"""nmap-services reader: port names and open frequencies.

Owns: parsing ``nmap-services`` (``name  port/proto  frequency  # comment``) into a
lookup table, the top-N port lists (nmap's ``--top-ports``: the N highest open
frequencies, ties kept in file order, which is what nmap itself does) and the
per-port frequency used as a prevalence prior.

Must not touch: the network. The file is read from the user's nmap installation
at run time (see :mod:`probers.nmapdata`), never copied.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from probers.nmapdata import NmapDataError, data_file, read_data_file

FILE_NAME = "nmap-services"
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    name: str
    port: int
    proto: str
    frequency: float
    line: int


class ServicesDB:
    """The parsed nmap-services table."""

    def __init__(self, entries: list[ServiceEntry]) -> None:
        self.entries: tuple[ServiceEntry, ...] = tuple(entries)
        self._by_key: dict[tuple[str, int], ServiceEntry] = {}
        for entry in self.entries:
            # First line wins, as in nmap's own lookup.
            self._by_key.setdefault((entry.proto, entry.port), entry)
        self._ranked: dict[str, list[ServiceEntry]] = {}

    @classmethod
    def parse(cls, text: bytes, source: str = FILE_NAME) -> ServicesDB:
        entries: list[ServiceEntry] = []
        for lineno, raw in enumerate(text.decode("latin-1").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) < 2:
                raise NmapDataError(source, lineno, f"expected 'name port/proto [freq]': {raw!r}")
            port_text, _, proto = fields[1].partition("/")
            try:
                port = int(port_text)
                frequency = float(fields[2]) if len(fields) > 2 else 0.0
            except ValueError as exc:
                raise NmapDataError(source, lineno, f"bad port or frequency: {raw!r}") from exc
            proto = proto.lower()
            if proto not in PROTOCOLS or not 0 <= port <= 65535:
                raise NmapDataError(source, lineno, f"bad port/proto {fields[1]!r}")
            entries.append(ServiceEntry(fields[0], port, proto, frequency, lineno))
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ServicesDB:
        """Read nmap-services; raises NmapDataUnavailable when it is not installed."""
        resolved = data_file(FILE_NAME, path)  # errors name the file, not its directory
        return cls.parse(read_data_file(FILE_NAME, resolved), str(resolved))

    def ranked(self, proto: str) -> list[ServiceEntry]:
        """Entries of ``proto`` by descending frequency; ties keep file order (stable sort)."""
        proto = proto.lower()
        if proto not in self._ranked:
            # Only ports with a known open frequency can rank; nmap skips 0-frequency lines.
            entries = [e for e in self.entries if e.proto == proto and e.frequency > 0]
            entries.sort(key=lambda e: e.frequency, reverse=True)
            seen: set[int] = set()
            unique = []
            for entry in entries:
                if entry.port not in seen:
                    seen.add(entry.port)
                    unique.append(entry)
            self._ranked[proto] = unique
        return self._ranked[proto]

    def top_ports(self, proto: str, n: int) -> list[int]:
        """The ``n`` most frequently open ports of ``proto``, most frequent first."""
        if n < 0:
            raise ValueError("n must be >= 0")
        return [e.port for e in self.ranked(proto)[:n]]

    def service_name(self, proto: str, port: int) -> str:
        """nmap's name for the port ("" when nmap-services has none)."""
        entry = self._by_key.get((proto.lower(), port))
        return entry.name if entry else ""

    def frequency(self, proto: str, port: int) -> float:
        """Fraction of scanned hosts where nmap saw the port open (0.0 when unknown)."""
        entry = self._by_key.get((proto.lower(), port))
        return entry.frequency if entry else 0.0


_shared: dict[str, ServicesDB] = {}
_shared_lock = threading.Lock()


def shared(path: str | os.PathLike[str] | None = None) -> ServicesDB:
    """A process-wide ServicesDB, loaded once per path."""
    key = str(data_file(FILE_NAME, path))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ServicesDB.load(path)
        return _shared[key]


def top_ports(proto: str, n: int, *, path: str | os.PathLike[str] | None = None) -> list[int]:
    """The ``n`` most frequently open ports (see :meth:`ServicesDB.top_ports`)."""
    return shared(path).top_ports(proto, n)


def service_name(proto: str, port: int, *, path: str | os.PathLike[str] | None = None) -> str:
    return shared(path).service_name(proto, port)


def frequency(proto: str, port: int, *, path: str | os.PathLike[str] | None = None) -> float:
    return shared(path).frequency(proto, port)


__all__ = [
    "ServiceEntry",
    "ServicesDB",
    "frequency",
    "service_name",
    "shared",
    "top_ports",
]
