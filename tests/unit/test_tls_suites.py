"""The suite catalogue: names, decomposition, per-version offers, agreement with OpenSSL."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from probers.tls.suites import SUITES, TLS13_CODES, TlsVersion, decompose, describe, offer_list


def test_codes_and_names_are_unique() -> None:
    assert len({s.iana_name for s in SUITES.values()}) == len(SUITES)
    assert len({s.openssl_name for s in SUITES.values()}) == len(SUITES)
    assert 0x00FF not in SUITES and 0x5600 not in SUITES  # signalling values, not suites


@pytest.mark.parametrize(
    ("code", "kex", "auth", "cipher", "mac", "export"),
    [
        (0x000A, "RSA", "RSA", "3DES_EDE_CBC", "SHA", False),
        (0x0003, "RSA", "RSA", "RC4_40", "MD5", True),
        (0x0063, "DHE", "DSS", "DES_CBC", "SHA", True),
        (0xC02F, "ECDHE", "RSA", "AES_128_GCM", "SHA256", False),
        (0xC0AC, "ECDHE", "ECDSA", "AES_128_CCM", "AEAD", False),
        (0xC0AA, "DHE_PSK", "PSK", "AES_128_CCM_8", "AEAD", False),
        (0x001B, "DH", "anon", "3DES_EDE_CBC", "SHA", False),
        (0x1305, "any", "any", "AES_128_CCM_8", "SHA256", False),
    ],
)
def test_decomposition(code: int, kex: str, auth: str, cipher: str, mac: str, export: bool) -> None:
    info = SUITES[code]
    assert (info.key_exchange, info.authentication, info.cipher, info.mac, info.is_export) == (
        kex,
        auth,
        cipher,
        mac,
        export,
    )


def test_derived_properties() -> None:
    assert SUITES[0xC02F].is_forward_secret and SUITES[0xC02F].ephemeral_kind == "EC"
    assert SUITES[0x009E].ephemeral_kind == "DH"
    assert SUITES[0x00A6].ephemeral_kind == "DH" and SUITES[0x00A6].is_anonymous
    assert not SUITES[0x009C].is_forward_secret and SUITES[0x009C].ephemeral_kind == ""
    assert SUITES[0xC037].has_psk_hint  # ECDHE-PSK: identity hint precedes the curve
    assert SUITES[0x1301].is_forward_secret and SUITES[0x1301].is_tls13


def test_unparseable_name_is_refused() -> None:
    with pytest.raises(ValueError):
        decompose(0x1234, "TLS_NOT_A_SUITE", "X")


def test_unknown_code_gets_a_placeholder() -> None:
    info = describe(0xFFFE)
    assert info.iana_name == "UNKNOWN_0xFFFE" and info.key_exchange == "unknown"


def test_offer_lists_hold_only_suites_the_version_defines() -> None:
    assert offer_list(TlsVersion.TLS_1_3) == TLS13_CODES == (0x1301, 0x1302, 0x1303, 0x1304, 0x1305)
    tls10 = offer_list(TlsVersion.TLS_1_0)
    assert 0x000A in tls10 and 0xC02F not in tls10 and 0x1301 not in tls10
    assert set(tls10) < set(offer_list(TlsVersion.TLS_1_2))
    assert offer_list(TlsVersion.SSL_3_0) == tls10


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_names_agree_with_the_local_openssl() -> None:
    # Given every suite the local OpenSSL knows, with its standard (IANA) name
    listing = subprocess.run(
        ["openssl", "ciphers", "-stdname", "-V", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    rows = re.findall(r"0x(..),0x(..) - (\S+)\s+- (\S+)", listing)
    assert len(rows) > 100
    # Then the catalogue holds each of them under the same code and names
    for high, low, iana, openssl in rows:
        info = SUITES[int(high + low, 16)]
        assert (info.iana_name, info.openssl_name) == (iana, openssl)
