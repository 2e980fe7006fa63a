"""The column bounds (schemas/bounded.py) are total and land in range, and the store's
row builders bound every value of any finding (issue 11, defect 1): property tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from schemas import bounded
from schemas.records import (
    Certificate,
    CipherSuite,
    Finding,
    OpenPort,
    ProbeStatus,
    ServiceInfo,
    Target,
    TlsResult,
)
from stream_processors.store_rows import (
    CERTIFICATE_COLUMNS,
    OBSERVATION_COLUMNS,
    TLS_CIPHER_COLUMNS,
    certificate_rows,
    observation_row,
    tls_cipher_rows,
    tls_probe_row,
)

anything = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) \
    | st.binary(max_size=10) | st.lists(st.integers(), max_size=3) | st.datetimes()
huge_ints = st.integers(min_value=-(10**40), max_value=10**40)
texts = st.text(max_size=300) | st.just("x" * 20_000)


@given(value=anything)
def test_the_bounds_are_total_and_in_range(value: Any) -> None:
    assert 0 <= bounded.u8(value) <= 255
    assert 0 <= bounded.u16(value) <= 65535
    assert 0 <= bounded.u32(value) <= 2**32 - 1
    assert bounded.flag(value) in (0, 1)
    text = bounded.text(value)
    assert isinstance(text, str) and len(text) <= bounded.TEXT_CAP
    text.encode("utf-8")  # never a lone surrogate
    assert len(bounded.texts(value)) <= bounded.ARRAY_CAP
    stamp = bounded.timestamp(value)
    assert bounded.TIME_MIN <= stamp <= bounded.TIME_MAX


@given(value=huge_ints)
def test_integers_saturate_not_wrap(value: int) -> None:
    assert bounded.u16(value) == min(max(value, 0), 65535)


@given(kex=huge_ints, pref=huge_ints, conf=huge_ints, bits=huge_ints, pos=huge_ints,
       banner=texts, subject=texts, sans=st.lists(texts, max_size=30),
       when=st.datetimes(timezones=st.just(UTC)))
def test_every_row_of_any_finding_is_within_its_columns(
        kex: int, pref: int, conf: int, bits: int, pos: int, banner: str, subject: str,
        sans: list[str], when: datetime) -> None:
    tls = TlsResult(status=ProbeStatus.COMPLETED, versions=tuple(sans),
                    suites=(CipherSuite("TLSv1.2", subject, kex_bits=kex, preference=pref),),
                    certificates=(Certificate(subject=subject, sans=tuple(sans), key_bits=bits,
                                              chain_position=pos),))
    finding = Finding(port=OpenPort(scan_id="s", target=Target("127.0.0.1", "t"), port=443,
                                    observed_at=when),
                      service=ServiceInfo(banner=banner, confidence=conf, product=subject),
                      tls=tls)
    rows = [observation_row(finding), tls_probe_row(finding), *tls_cipher_rows(finding),
            *certificate_rows(finding)]
    for row in rows:
        for value in row:
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                assert 0 <= value <= 2**32 - 1
            elif isinstance(value, str):
                assert len(value) <= bounded.TEXT_CAP
            elif isinstance(value, list):
                assert len(value) <= bounded.ARRAY_CAP
            elif isinstance(value, datetime):
                assert bounded.TIME_MIN <= value <= bounded.TIME_MAX
    cipher = tls_cipher_rows(finding)[0]
    assert cipher[10] == min(max(kex, 0), 65535)  # kex_bits, saturated
    # Each narrow column saturated to its own type (not merely to UInt32), found by name
    by_name = dict(zip(TLS_CIPHER_COLUMNS, cipher, strict=True))
    assert by_name["preference"] == min(max(pref, 0), 65535)  # UInt16
    certificate = dict(zip(CERTIFICATE_COLUMNS, certificate_rows(finding)[0], strict=True))
    assert certificate["key_bits"] == min(max(bits, 0), 65535)  # UInt16
    assert certificate["chain_position"] == min(max(pos, 0), 255)  # UInt8
    observation = dict(zip(OBSERVATION_COLUMNS, observation_row(finding), strict=True))
    assert observation["confidence"] == min(max(conf, 0), 255)  # UInt8
