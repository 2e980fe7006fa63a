"""nmap-payloads reader: the protocol-specific UDP payloads nmap sends during discovery.

Owns: parsing ``nmap-payloads``. Grammar, as nmap documents it in the file's
header: ``udp <port list>`` followed by one or more double-quoted C-escaped
strings (concatenated, possibly over several lines), optionally followed by
``source <port>``; ``#`` starts a comment outside strings. Several entries may
name the same port: each is a separate payload to try.

Must not touch: the network. The file is read from the user's nmap installation
at run time (see :mod:`probers.nmapdata`), never copied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from probers.nmapdata import (
    NmapDataError,
    c_unescape,
    data_file,
    parse_port_list,
    read_data_file,
)
from schemas.bounded import is_digits

FILE_NAME = "nmap-payloads"


@dataclass(frozen=True, slots=True)
class UdpPayload:
    ports: frozenset[int]
    data: bytes
    source_port: int | None  # some services only answer from a given port (IKE: 500)
    line: int


def _tokens(text: str, source: str) -> list[tuple[str, str, int]]:
    """Split into ('word'|'string', value, line) tokens, dropping comments."""
    out: list[tuple[str, str, int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        i = 0
        n = len(line)
        while i < n:
            ch = line[i]
            if ch.isspace():
                i += 1
            elif ch == "#":
                break
            elif ch == '"':
                j = i + 1
                while j < n and line[j] != '"':
                    j += 2 if line[j] == "\\" else 1
                if j >= n:
                    raise NmapDataError(source, lineno, "unterminated string")
                out.append(("string", line[i + 1 : j], lineno))
                i = j + 1
            else:
                j = i
                while j < n and not line[j].isspace() and line[j] not in '#"':
                    j += 1
                out.append(("word", line[i:j], lineno))
                i = j
    return out


def parse_payloads(text: bytes, source: str = FILE_NAME) -> list[UdpPayload]:
    tokens = _tokens(text.decode("latin-1"), source)
    payloads: list[UdpPayload] = []
    i = 0
    while i < len(tokens):
        kind, value, lineno = tokens[i]
        if kind != "word" or value.lower() != "udp":
            raise NmapDataError(source, lineno, f"expected 'udp', got {value!r}")
        if i + 1 >= len(tokens) or tokens[i + 1][0] != "word":
            raise NmapDataError(source, lineno, "expected a port list after 'udp'")
        try:
            ports = parse_port_list(tokens[i + 1][1])
        except ValueError as exc:
            raise NmapDataError(source, lineno, str(exc)) from exc
        i += 2
        chunks: list[bytes] = []
        while i < len(tokens) and tokens[i][0] == "string":
            try:
                chunks.append(c_unescape(tokens[i][1].encode("latin-1")))
            except ValueError as exc:
                raise NmapDataError(source, tokens[i][2], str(exc)) from exc
            i += 1
        if not chunks:
            raise NmapDataError(source, lineno, "udp entry without a payload string")
        source_port: int | None = None
        if i < len(tokens) and tokens[i][0] == "word" and tokens[i][1].lower() == "source":
            if i + 1 >= len(tokens) or not is_digits(tokens[i + 1][1]):
                raise NmapDataError(source, tokens[i][2], "expected a port after 'source'")
            source_port = int(tokens[i + 1][1])
            if not 0 < source_port < 65536:
                raise NmapDataError(source, tokens[i][2], f"bad source port {source_port}")
            i += 2
        payloads.append(UdpPayload(ports, b"".join(chunks), source_port, lineno))
    return payloads


def load_payloads(path: str | os.PathLike[str] | None = None) -> list[UdpPayload]:
    """All entries of nmap-payloads; raises NmapDataUnavailable when it is not installed."""
    resolved = data_file(FILE_NAME, path)  # errors name the file, not its directory
    return parse_payloads(read_data_file(FILE_NAME, resolved), str(resolved))


def by_port(payloads: list[UdpPayload]) -> dict[int, list[bytes]]:
    """Port -> payloads to send, in file order."""
    out: dict[int, list[bytes]] = {}
    for entry in payloads:
        for port in sorted(entry.ports):
            out.setdefault(port, []).append(entry.data)
    return out


def udp_payloads(path: str | os.PathLike[str] | None = None) -> dict[int, list[bytes]]:
    """Port -> the UDP payloads nmap would send to it (NmapDataUnavailable when absent)."""
    return by_port(load_payloads(path))


__all__ = ["UdpPayload", "by_port", "load_payloads", "parse_payloads", "udp_payloads"]
