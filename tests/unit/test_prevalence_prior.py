"""The Internet prior of prevalence (stream_processors/prevalence_prior.py): the formula,
the buckets, the rule combining it with the estate's count, and the rows it derives from
an nmap-services file (a small one the test writes: nmap's own file is never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_processors.prevalence_prior import (
    REFERENCE_HOSTS,
    bucket,
    combined,
    internet_instances,
    prior_rows,
)

SAMPLE = b"""# a few lines in nmap-services' format (name port/proto frequency # comment)
http\t80/tcp\t0.484143\t# World Wide Web HTTP
https\t443/tcp\t0.208669\t# secure http (SSL)
https-alt\t8443/tcp\t0.009986
Elite\t31337/tcp\t0.000163
BackOrifice\t31337/udp\t0.011469
unknown\t40000/tcp\t0.000000
sctp-thing\t80/sctp\t0.5
"""


@pytest.mark.parametrize(("frequency", "instances", "expected_bucket"), [
    (0.484143, 48414, "very common"),   # 80/tcp
    (0.208669, 20867, "very common"),   # 443/tcp
    (0.009986, 999, "somewhat common"),  # 8443/tcp
    (0.000608, 61, "less common"),      # 2222/tcp
    (0.000163, 16, "rare"),             # 31337/tcp
    (0.0, 0, "rare"),                   # not in nmap-services
])
def test_formula_and_bucket(frequency: float, instances: int, expected_bucket: str) -> None:
    assert REFERENCE_HOSTS == 100_000
    assert internet_instances(frequency) == instances
    assert bucket(instances) == expected_bucket


@pytest.mark.parametrize(("instances", "expected"), [
    (3001, "very common"), (3000, "somewhat common"), (500, "somewhat common"),
    (499, "less common"), (50, "less common"), (49, "rare"), (0, "rare")])
def test_bucket_boundaries_are_the_product_s(instances: int, expected: str) -> None:
    assert bucket(instances) == expected


@pytest.mark.parametrize(("estate", "internet", "expected"), [
    (1, 20867, (20867, "very common", "Internet")),   # day one: 443 on one host
    (1, 16, (16, "rare", "Internet")),                # 31337: rare either way
    (4000, 16, (4000, "very common", "estate")),      # your estate says otherwise
    (7, 7, (7, "rare", "estate")),                    # ties go to the estate
    (3, 0, (3, "rare", "estate")),                    # prior off or port unknown
])
def test_combination_takes_the_larger_count_and_says_which(
        estate: int, internet: int, expected: tuple[int, str, str]) -> None:
    assert combined(estate, internet) == expected


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_instances_are_bounded_for_any_frequency(frequency: float) -> None:
    assert 0 <= internet_instances(frequency) <= REFERENCE_HOSTS


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_combined_is_the_max_and_its_bucket(estate: int, internet: int) -> None:
    instances, shown, source = combined(estate, internet)
    assert instances == max(estate, internet)
    assert shown == bucket(instances)
    assert source == ("Internet" if internet > estate else "estate")


def test_rows_from_an_nmap_services_file(tmp_path: Path) -> None:
    (tmp_path / "nmap-services").write_bytes(SAMPLE)
    source, rows = prior_rows(str(tmp_path))
    # TCP and UDP only, zero-frequency ports left out, one row per (proto, port)
    assert rows == [("tcp", 80, 48414), ("tcp", 443, 20867), ("tcp", 8443, 999),
                    ("tcp", 31337, 16), ("udp", 31337, 1147)]
    assert source.startswith("nmap-services sha256:") and source.endswith(" x 100000")
    # And the tag changes with the file, so the store reloads only a changed file
    (tmp_path / "nmap-services").write_bytes(SAMPLE + b"x\t1/tcp\t0.1\n")
    assert prior_rows(str(tmp_path))[0] != source
