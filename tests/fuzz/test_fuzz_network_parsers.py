"""What a scanned host sends, fuzzed: banner parsers (probers/service/banners.py) over
arbitrary bytes, and the TLS first-flight reader (probers/tls/hello.py) over arbitrary
server bytes sent by a real socket on 127.0.0.1. Neither may raise, and what they keep
is bounded."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from probers.service import banners
from probers.tls.hello import HelloOutcome, detect_spec, exchange_hello
from schemas.records import ServiceInfo

PARSERS = [banners.parse_ssh, banners.parse_mysql, banners.parse_misc, banners.parse_http,
           banners.parse_redis, banners.parse_postgres_ssl_reply,
           banners.parse_postgres_version_error, banners.parse_foreign_reply,
           banners.parse_rdp_confirm]
HINTS = ["", "ftp", "smtp", "redis", "postgresql", "ms-wbt-server", "http", "nntp"]

prefixes = st.sampled_from([b"", b"SSH-2.0-", b"HTTP/1.1 200 OK\r\nServer: ", b"220 ",
                            b"+OK ", b"$", b"-ERR ", b"* OK ", b"200 ", b"201 news ",
                            b"\x16\x03\x01", b"E\x00\x00", b"\x03\x00\x00\x13\x0e\xd0"])


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__name__)
@given(prefix=prefixes, body=st.binary(max_size=2048))
def test_banner_parsers_never_raise(parse: object, prefix: bytes, body: bytes) -> None:
    assert callable(parse)
    info = parse(prefix + body)
    assert info is None or isinstance(info, ServiceInfo)


@given(prefix=prefixes, body=st.binary(max_size=4096), hint=st.sampled_from(HINTS))
@example(prefix=b"HTTP/1.1 200 OK\r\nServer: ", body=b":smile:" * 1000, hint="http")
def test_parse_banner_is_bounded(prefix: bytes, body: bytes, hint: str) -> None:
    info = banners.parse_banner(prefix + body, hint)
    if info is not None:
        assert len(info.banner) <= 4 * 1024
        for value in (info.product, info.version, info.extra_info):
            assert len(value) <= 4 * 1024


# -- the TLS flight reader, over a real loopback socket -----------------------------------


class _Peer:
    """Answers each ClientHello with ``payload``, then closes: a real TCP peer."""

    def __init__(self) -> None:
        self.payload = b""
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(1.0)
                conn.recv(65536)
                conn.sendall(self.payload)


@pytest.fixture(scope="module")
def peer() -> Iterator[_Peer]:
    server = _Peer()
    server.thread.start()
    yield server
    server.stop.set()
    server.thread.join(timeout=2)
    server.listener.close()


def _record(content_type: int, payload: bytes) -> bytes:
    return struct.pack("!BHH", content_type, 0x0303, len(payload)) + payload


tls_bytes = st.one_of(
    st.binary(max_size=600),
    st.builds(_record, st.sampled_from([20, 21, 22, 23, 99]), st.binary(max_size=600)),
    st.builds(lambda body: _record(22, b"\x02" + len(body).to_bytes(3, "big") + body),
              st.binary(max_size=600)),
    st.builds(lambda t, body: _record(22, bytes([t]) + len(body).to_bytes(3, "big") + body),
              st.sampled_from([2, 11, 12, 14, 0]), st.binary(max_size=300)),
)


@given(payload=tls_bytes)
@example(payload=_record(22, b"\x02\xff\xff\xff"))  # a 16 MiB handshake message announced
@example(payload=b"\x16\x03\x03\xff\xff" + b"\x00" * 100)  # an oversized record announced
def test_the_tls_flight_reader_never_raises(peer: _Peer, payload: bytes) -> None:
    peer.payload = payload
    outcome = exchange_hello("127.0.0.1", peer.port, detect_spec(None), timeout=2.0)
    assert isinstance(outcome, HelloOutcome)
    assert len(outcome.detail) <= 2000


@given(name=st.text(max_size=300))
def test_sni_name_never_raises_and_gives_a_name_sni_can_carry(name: str) -> None:
    # (a host name IDNA refuses made our own hello raise; it now goes without SNI)
    from probers.tls.hello import is_ip_literal, sni_name

    sni = sni_name(name)
    assert sni is None or (sni.isascii() and 0 < len(sni) <= 253 + 1
                           and not is_ip_literal(name))
