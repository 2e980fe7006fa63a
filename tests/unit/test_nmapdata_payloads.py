"""nmap-payloads reader on our own lines in its format, and on the installed file when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from probers.nmapdata import NmapDataError, NmapDataUnavailable, c_unescape, data_file
from probers.nmapdata.payloads import load_payloads, parse_payloads, udp_payloads

OWN_PAYLOADS = b"""\
# our own payloads, in nmap-payloads format
udp 7 "\\x0D\\x0Aping"
udp 1000-1002,1234
  # a comment between strings
  "\\x00\\x01"   # and one after a string
  "hello\\tworld\\0"
  "quote\\"d # not a comment"
udp 1234 "second for 1234" source 4321
"""


def test_payloads_concatenate_strings_and_decode_c_escapes() -> None:
    # Given our own lines
    entries = parse_payloads(OWN_PAYLOADS)
    # Then each udp entry is one payload with its ports and optional source port
    assert [e.line for e in entries] == [2, 3, 8]
    assert entries[0].ports == frozenset({7})
    assert entries[0].data == b"\r\nping"
    assert entries[1].ports == frozenset({1000, 1001, 1002, 1234})
    assert entries[1].data == b'\x00\x01hello\tworld\x00quote"d # not a comment'
    assert entries[1].source_port is None
    assert entries[2].source_port == 4321


def test_by_port_keeps_every_payload_in_file_order() -> None:
    from probers.nmapdata.payloads import by_port

    table = by_port(parse_payloads(OWN_PAYLOADS))
    assert table[1234] == [
        b'\x00\x01hello\tworld\x00quote"d # not a comment',
        b"second for 1234",
    ]
    assert table[1001] == [table[1234][0]]
    assert 1003 not in table


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'tcp 7 "x"\n', "expected 'udp'"),
        (b"udp 7\n", "without a payload"),
        (b'udp 7 "unterminated\n', "unterminated string"),
        (b'udp 70000 "x"\n', "bad port range"),
        (b'udp 7 "x" source\n', "expected a port after 'source'"),
    ],
)
def test_malformed_entries_name_their_line(text: bytes, message: str) -> None:
    with pytest.raises(NmapDataError, match=message):
        parse_payloads(text)


def test_c_unescape_covers_nmap_escapes() -> None:
    decoded = c_unescape(rb"\0\a\b\f\n\r\t\v\\\"\x41\x4a\xfF\q")
    assert decoded == b'\x00\x07\x08\x0c\n\r\t\x0b\\"AJ\xffq'
    assert c_unescape(rb"\x7") == b"\x07"  # one hex digit, as nmap accepts
    with pytest.raises(ValueError):
        c_unescape(b"\\")
    with pytest.raises(ValueError):
        c_unescape(rb"\xZZ")


def test_missing_file_raises_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NmapDataUnavailable):
        udp_payloads(tmp_path)


def _installed() -> bool:
    try:
        data_file("nmap-payloads", "/usr/share/nmap")
    except NmapDataUnavailable:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="nmap-common not installed (/usr/share/nmap)")
def test_installed_file_parses_and_covers_dns() -> None:
    # Given the installed nmap-payloads
    entries = load_payloads("/usr/share/nmap")
    table = udp_payloads("/usr/share/nmap")
    # Then it parses completely, and DNS (53) has at least one non-empty payload
    assert len(entries) > 10
    assert table[53] and all(table[53])
    assert all(e.data for e in entries)
