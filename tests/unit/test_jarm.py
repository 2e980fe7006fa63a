"""JARM pieces on recorded bytes: list orders, hello layout, ServerHello reading, the hash.

The end-to-end check against real TLS servers, with the reference computed by an
independent implementation, is tests/integration/test_jarm_reference.py.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from probers.tls.jarm import (
    HASH_ORDER,
    HELLOS,
    ZERO_HASH,
    Order,
    build_hello,
    jarm_hash,
    read_server_hello,
    reorder,
)

# ServerHellos recorded from `openssl s_server` (OpenSSL 3.0) answering hello 1 (TLS 1.2,
# ALPN offered, no h2 chosen) and hello 7 (TLS 1.3: supported_versions + key_share).
SERVER_HELLO_TLS12 = bytes.fromhex(
    "160303003e0200003a03035f56dd049227cc3b327cfbcd051eebd31a8405287e43ee9d444f574e47524401"
    "000033000012ff0100010000010001010023000000170000")
SERVER_HELLO_TLS13 = bytes.fromhex(
    "160303007a0200007603030b13da7dee89aff55b5c9031af2c79e0b32ee5056e690b1e97a020632be8dae4"
    "20bf15a6888408446f0f67507532a82fb24dc7f44d50a8c4ce81dad9645a46dfe4130200002e002b000203"
    "0400330024001d00208ff2a96e55ffb5eb9df48d09d28bec63b9f780429c019ce3fdf9705ae34dbe42")


def test_list_orders_of_the_method() -> None:
    odd = (1, 2, 3, 4, 5)
    even = (1, 2, 3, 4, 5, 6)
    assert reorder(odd, Order.REVERSE) == (5, 4, 3, 2, 1)
    assert reorder(odd, Order.BOTTOM_HALF) == (4, 5)
    assert reorder(even, Order.BOTTOM_HALF) == (4, 5, 6)
    # top half: reversed, the middle item first for an odd list
    assert reorder(odd, Order.TOP_HALF) == (3, 2, 1)
    assert reorder(even, Order.TOP_HALF) == (3, 2, 1)
    # middle-out: from the middle, upper then lower
    assert reorder(odd, Order.MIDDLE_OUT) == (3, 4, 2, 5, 1)
    assert reorder(even, Order.MIDDLE_OUT) == (4, 3, 5, 2, 6, 1)


def test_ten_hellos_and_the_hash_order_of_suites() -> None:
    assert len(HELLOS) == 10
    assert len(HASH_ORDER) == 69 and len(set(HASH_ORDER)) == 69
    assert HASH_ORDER[0] == 0x0004 and HASH_ORDER[-5:] == (0x1301, 0x1302, 0x1303, 0x1304,
                                                           0x1305)


def test_a_hello_is_a_well_formed_record_with_sni_and_the_offered_suites() -> None:
    hello = build_hello(HELLOS[8], "example.test", rand=lambda n: b"\x00" * n)
    assert hello[:3] == b"\x16\x03\x01"  # TLS 1.3 hellos ride in a 1.0 record
    assert int.from_bytes(hello[3:5], "big") == len(hello) - 5
    assert hello[5] == 1 and int.from_bytes(hello[6:9], "big") == len(hello) - 9
    assert hello[9:11] == b"\x03\x03"
    suites_len = int.from_bytes(hello[76:78], "big")
    suites = [int.from_bytes(hello[78 + i:80 + i], "big") for i in range(0, suites_len, 2)]
    assert len(suites) == 64 and not {0x1301, 0x1302, 0x1303} & set(suites)  # "NO1.3"
    assert b"\x00\x00\x00\x11\x00\x0f\x00\x00\x0cexample.test" in hello


def test_reading_recorded_server_hellos() -> None:
    assert read_server_hello(SERVER_HELLO_TLS12) == "0033|0303||ff01-0001-0023-0017"
    assert read_server_hello(SERVER_HELLO_TLS13) == "1302|0303||002b-0033"
    assert read_server_hello(b"\x15\x03\x03\x00\x02\x02\x28") == "|||"  # alert
    assert read_server_hello(b"HTTP/1.1 400 Bad Request\r\n") == "|||"
    assert read_server_hello(b"") == "|||"
    assert read_server_hello(None) == "|||"


def test_hash_layout() -> None:
    # Given ten results of which two answered
    results = ["c02f|0303|h2|0000-0017"] + ["|||"] * 8 + ["1301|0303||002b-0033"]
    digest = jarm_hash(results)
    # Then: 10 x (2-hex suite position + version letter), then 32 hex of SHA-256
    assert len(digest) == 62
    assert digest[:3] == "29d"  # 0xC02F is the 41st suite of jarm's order (0x29)
    assert digest[3:6] == "000"
    assert digest[27:30] == "41d"  # 0x1301 is the 65th suite
    tail = "h2" + "0000-0017" + "" * 8 + "" + "002b-0033"
    assert digest[30:] == hashlib.sha256(tail.encode()).hexdigest()[:32]
    assert jarm_hash(["|||"] * 10) == ZERO_HASH
    # A suite never offered is position 70 (0x46)
    assert jarm_hash(["abcd|0303||"] + ["|||"] * 9)[:3] == "46d"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=1484),
    st.binary(max_size=200).map(lambda b: b"\x16\x03\x03\x00\x40\x02" + b),
    st.binary(min_size=60, max_size=300).map(
        lambda b: SERVER_HELLO_TLS12[:44] + b),
))
def test_any_answer_reads_as_a_result_of_four_fields_and_hashes(data: bytes) -> None:
    result = read_server_hello(data)
    assert result.count("|") >= 3
    digest = jarm_hash([result] * 10)
    assert len(digest) == 62 and all(c in "0123456789abcdef" for c in digest)
