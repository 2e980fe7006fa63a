"""JARM of real TLS servers equals the published algorithm's value, computed here.

The reference below is a second, independent rendering of Salesforce's published JARM
method (github.com/salesforce/jarm, version 1.0): the ten probes written as the method
writes them (strings such as "TLS_1.2", "ALL", "MIDDLE_OUT", "GREASE", "RARE_APLN",
"1.2_SUPPORT"), blocking sockets, one recv of 1,484 bytes, the same fuzzy hash. It
shares no code with probers/tls/jarm.py, so a mistake in one shows up as a mismatch.

Servers (real, on loopback, started by the test): nginx with TLS, ``openssl s_server``,
``gnutls-serv`` with two priorities, and plain nginx (not TLS: the zero hash).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from probers.tls.jarm import jarm_fingerprint
from tests import servers, tls_servers

pytestmark = pytest.mark.slow

# -- the reference, from the published description ---------------------------------------

CIPHERS_ALL = [
    "0016", "0033", "0067", "c09e", "c0a2", "009e", "0039", "006b", "c09f", "c0a3", "009f",
    "0045", "00be", "0088", "00c4", "009a", "c008", "c009", "c023", "c0ac", "c0ae", "c02b",
    "c00a", "c024", "c0ad", "c0af", "c02c", "c072", "c073", "cca9", "1302", "1301", "cc14",
    "c007", "c012", "c013", "c027", "c02f", "c014", "c028", "c030", "c060", "c061", "c076",
    "c077", "cca8", "1305", "1304", "1303", "cc13", "c011", "000a", "002f", "003c", "c09c",
    "c0a0", "009c", "0035", "003d", "c09d", "c0a1", "009d", "0041", "00ba", "0084", "00c0",
    "0007", "0004", "0005",
]
CIPHERS_NO13 = [c for c in CIPHERS_ALL if not c.startswith("13")]
# The fuzzy hash numbers suites by this list (1-based).
HASH_LIST = sorted(CIPHERS_NO13) + ["1301", "1302", "1303", "1304", "1305"]
ALPN_ALL = ["http/0.9", "http/1.0", "http/1.1", "spdy/1", "spdy/2", "spdy/3", "h2", "h2c", "hq"]
ALPN_RARE = ["http/0.9", "http/1.0", "spdy/1", "spdy/2", "spdy/3", "h2c", "hq"]
PROBES = [  # version, ciphers, cipher order, grease, alpn, supported_versions, ext order
    ("TLS_1.2", "ALL", "FORWARD", "NO_GREASE", "APLN", "1.2_SUPPORT", "REVERSE"),
    ("TLS_1.2", "ALL", "REVERSE", "NO_GREASE", "APLN", "1.2_SUPPORT", "FORWARD"),
    ("TLS_1.2", "ALL", "TOP_HALF", "NO_GREASE", "APLN", "NO_SUPPORT", "FORWARD"),
    ("TLS_1.2", "ALL", "BOTTOM_HALF", "NO_GREASE", "RARE_APLN", "NO_SUPPORT", "FORWARD"),
    ("TLS_1.2", "ALL", "MIDDLE_OUT", "GREASE", "RARE_APLN", "NO_SUPPORT", "REVERSE"),
    ("TLS_1.1", "ALL", "FORWARD", "NO_GREASE", "APLN", "NO_SUPPORT", "FORWARD"),
    ("TLS_1.3", "ALL", "FORWARD", "NO_GREASE", "APLN", "1.3_SUPPORT", "REVERSE"),
    ("TLS_1.3", "ALL", "REVERSE", "NO_GREASE", "APLN", "1.3_SUPPORT", "FORWARD"),
    ("TLS_1.3", "NO1.3", "FORWARD", "NO_GREASE", "APLN", "1.3_SUPPORT", "FORWARD"),
    ("TLS_1.3", "ALL", "MIDDLE_OUT", "GREASE", "APLN", "1.3_SUPPORT", "REVERSE"),
]
GREASE = "3a3a"


def mung(items: list[str], how: str) -> list[str]:
    n = len(items)
    half = n // 2
    if how == "REVERSE":
        return items[::-1]
    if how == "BOTTOM_HALF":
        return items[half + 1:] if n % 2 else items[half:]
    if how == "TOP_HALF":
        head = [items[half]] if n % 2 else []
        return head + mung(mung(items, "REVERSE"), "BOTTOM_HALF")
    if how == "MIDDLE_OUT":
        if n % 2:
            out = [items[half]]
            for step in range(1, half + 1):
                out += [items[half + step], items[half - step]]
            return out
        out = []
        for step in range(1, half + 1):
            out += [items[half - 1 + step], items[half - step]]
        return out
    return items


def u16(n: int) -> str:
    return f"{n:04x}"


def ext(kind: str, body_hex: str) -> str:
    return kind + u16(len(body_hex) // 2) + body_hex


def hello_hex(host: str, probe: tuple[str, ...]) -> str:
    version, cipher_set, cipher_order, grease, alpn_kind, support, ext_order = probe
    record_v, hello_v = {"TLS_1.1": ("0302", "0302"), "TLS_1.2": ("0303", "0303"),
                         "TLS_1.3": ("0301", "0303")}[version]
    ciphers = mung(list(CIPHERS_ALL if cipher_set == "ALL" else CIPHERS_NO13), cipher_order)
    if grease == "GREASE":
        ciphers = [GREASE] + ciphers
    alpns = mung(list(ALPN_ALL if alpn_kind == "APLN" else ALPN_RARE), ext_order)
    alpn_hex = "".join(f"{len(a):02x}" + a.encode().hex() for a in alpns)
    host_hex = host.encode().hex()
    exts = (GREASE + "0000") if grease == "GREASE" else ""
    exts += ext("0000", u16(len(host) + 3) + "00" + u16(len(host)) + host_hex)
    exts += "00170000" + "0001000101" + "ff01000100" + "000a000a0008001d001700180019"
    exts += "000b00020100" + "00230000" + ext("0010", u16(len(alpn_hex) // 2) + alpn_hex)
    exts += "000d00140012040308040401050308050501080606010201"
    share = (GREASE + "000100") if grease == "GREASE" else ""
    share += "001d0020" + os.urandom(32).hex()
    exts += ext("0033", u16(len(share) // 2) + share)
    exts += "002d00020101"
    if version == "TLS_1.3" or support == "1.2_SUPPORT":
        offered = ["0301", "0302", "0303"] + (["0304"] if support != "1.2_SUPPORT" else [])
        offered = mung(offered, ext_order)
        versions = (GREASE if grease == "GREASE" else "") + "".join(offered)
        exts += "002b" + u16(len(versions) // 2 + 1) + f"{len(versions) // 2:02x}" + versions
    body = hello_v + os.urandom(32).hex() + "20" + os.urandom(32).hex()
    body += u16(len(ciphers) * 2) + "".join(ciphers) + "0100" + u16(len(exts) // 2) + exts
    handshake = "01" + f"{len(body) // 2:06x}" + body
    return "16" + record_v + u16(len(handshake) // 2) + handshake


def ask(port: int, payload: bytes) -> bytes | str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.settimeout(10)
            sock.sendall(payload)
            return sock.recv(1484)
    except TimeoutError:
        return "TIMEOUT"
    except OSError:
        return None


def read_answer(data: bytes | None) -> str:
    try:
        if data is None or data[0] == 21 or not (data[0] == 22 and data[5] == 2):
            return "|||"
        hello_len = int(data[3:5].hex(), 16)
        sid = data[43]
        head = data[sid + 44:sid + 46].hex() + "|" + data[9:11].hex() + "|"
        return head + read_extensions(data, sid, hello_len)
    except Exception:  # the published method reads any failure as an empty answer
        return "|||"


def read_extensions(data: bytes, sid: int, hello_len: int) -> str:
    try:
        if data[sid + 47] == 11:
            return "|"
        if data[sid + 50:sid + 53] == bytes.fromhex("0eac0b") or \
                data[82:85] == bytes.fromhex("0ff00b"):
            return "|"
        if sid + 42 >= hello_len:
            return "|"
        at = sid + 49
        stop = int(data[sid + 47:sid + 49].hex(), 16) + at - 1
        found: list[tuple[bytes, bytes | str]] = []
        while at < stop:
            size = int(data[at + 2:at + 4].hex(), 16)
            found.append((data[at:at + 2], data[at + 4:at + 4 + size] if size else ""))
            at += size + 4
        alpn = next((v for t, v in found if t == b"\x00\x10"), None)
        # An empty ALPN extension ("" here) fails to decode, as in the method: "|||"
        alpn_text = "" if alpn is None else alpn[3:].decode()  # type: ignore[union-attr]
        return alpn_text + "|" + "-".join(t.hex() for t, _ in found)
    except IndexError:
        return "|"


def reference_jarm(port: int, host: str = "127.0.0.1") -> str:
    answers = []
    for probe in PROBES:
        data = ask(port, bytes.fromhex(hello_hex(host, probe)))
        if data == "TIMEOUT":
            return "0" * 62
        assert not isinstance(data, str)
        answers.append(read_answer(data))
    if all(a == "|||" for a in answers):
        return "0" * 62
    fuzzy, tail = "", ""
    for answer in answers:
        cipher, version, alpn, exts = answer.split("|")[:4]
        position = HASH_LIST.index(cipher) + 1 if cipher in HASH_LIST else len(HASH_LIST) + 1
        fuzzy += "00" if not cipher else f"{position:02x}"
        fuzzy += "0" if not version else "abcdef"[int(version[3])]
        tail += alpn + exts
    return fuzzy + hashlib.sha256(tail.encode()).hexdigest()[:32]


# -- the servers ---------------------------------------------------------------------------


def ours(port: int) -> str | None:
    return asyncio.run(jarm_fingerprint("127.0.0.1", port, server_name="127.0.0.1",
                                        timeout=5.0, budget=60.0))


@contextlib.contextmanager
def _started(cm: contextlib.AbstractContextManager[object]) -> Iterator[object]:
    try:
        with cm as server:
            yield server
    except (servers.ServerUnavailable, tls_servers.ServerUnavailable) as exc:
        pytest.skip(f"server unavailable: {exc}")


@pytest.fixture(scope="module")
def certs() -> Iterator[tls_servers.CertFiles]:
    with tempfile.TemporaryDirectory(prefix="portwatch-jarm-") as tmp:
        yield tls_servers.make_cert(Path(tmp))


def test_nginx_tls() -> None:
    with _started(servers.start_nginx(tls=True)) as server:
        port = server.port  # type: ignore[attr-defined]
        reference, mine = reference_jarm(port), ours(port)
    assert reference != "0" * 62  # the server answered: a real fingerprint
    assert mine == reference


def test_openssl_s_server() -> None:
    with _started(servers.start_openssl_s_server(("-www",))) as server:
        port = server.port  # type: ignore[attr-defined]
        reference, mine = reference_jarm(port), ours(port)
    assert reference != "0" * 62
    assert mine == reference


@pytest.mark.parametrize("priority", ["NORMAL", "NORMAL:-VERS-TLS1.3"])
def test_gnutls_serv(certs: tls_servers.CertFiles, priority: str) -> None:
    with _started(tls_servers.gnutls_server(certs, priority)) as port:
        reference, mine = reference_jarm(port), ours(port)  # type: ignore[arg-type]
    assert reference != "0" * 62
    assert mine == reference


def test_the_three_servers_have_different_fingerprints(certs: tls_servers.CertFiles) -> None:
    # JARM is worth storing only if it tells implementations apart
    with _started(servers.start_nginx(tls=True)) as nginx, \
            _started(servers.start_openssl_s_server(("-www",))) as s_server, \
            _started(tls_servers.gnutls_server(certs, "NORMAL")) as gnutls:
        prints = {ours(nginx.port), ours(s_server.port), ours(gnutls)}  # type: ignore[attr-defined,arg-type]
    assert len(prints) == 3


def test_a_plain_http_port_has_the_zero_hash() -> None:
    with _started(servers.start_nginx()) as server:
        port = server.port  # type: ignore[attr-defined]
        reference, mine = reference_jarm(port), ours(port)
    assert reference == mine == "0" * 62


def test_nothing_listening_is_the_zero_hash_and_a_tiny_budget_is_could_not_test() -> None:
    port = servers.free_port("127.0.0.1")
    assert ours(port) == "0" * 62  # every hello refused: ten empty answers
    with _started(servers.start_openssl_s_server(("-www",))) as server:
        cut_short = asyncio.run(jarm_fingerprint("127.0.0.1", server.port,  # type: ignore[attr-defined]
                                                 timeout=1.0, budget=0.0))
    assert cut_short is None
