"""The Internet prior of prevalence: how common a port is before your own scans say so.

Owns: the formula that turns nmap-services' open frequencies into instances on a reference
population, the bucket rule, and the rule combining that prior with your own estate's
count. The rows are derived at run time from the user's own nmap-services (read by
``probers.nmapdata.services``; Nmap Public Source License) and kept only in the user's
store (table ``internet_prior``): never in this repository or its packages.

Formula. nmap-services gives, per (port, proto), the fraction ``f`` of the hosts in nmap's
Internet-wide scans on which the port was found open. On a reference population of
``REFERENCE_HOSTS`` = 100,000 Internet-facing hosts, the port is expected open on

    internet_instances = round(f x 100,000)

hosts: 80/tcp (f = 0.484) -> 48,414; 443/tcp (0.209) -> 20,867; 8443/tcp (0.00999) ->
999; 31337/tcp (0.000163) -> 16; a port nmap-services does not list -> 0. The reference
population is the scale the product's buckets were set on (instances counted across a
whole platform's scans): at 100,000 hosts the buckets fall where an Internet-facing
estate expects them, web and mail very common, back doors rare.

Buckets (DESIGN.md): > 3000 very common, 500-3000 somewhat common, 50-499 less common,
< 50 rare.

Combination. The bucket shown is that of ``max(estate_instances, internet_instances)``,
and the source shown is the one that gave the maximum ("Internet" when the prior is
larger, "estate" otherwise, ties to the estate). Both counts are lower bounds of how common
a port is, so the larger one is the better estimate: 443 reads "very common (Internet)" on
day one, a port seen on 4,000 of your own hosts reads "very common (estate)" whatever
nmap's scans said. With the prior off (``PORTWATCH_PREVALENCE_PRIOR=false``) the estate
count alone decides. schemas/reports/list.sql applies the same rule in SQL; a test
proves both agree.

Must not touch: the network; the store (the caller inserts the rows).
"""

from __future__ import annotations

import hashlib

REFERENCE_HOSTS = 100_000
VERY_COMMON, SOMEWHAT_COMMON, LESS_COMMON = 3000, 500, 50
INTERNET, ESTATE = "Internet", "estate"


def internet_instances(frequency: float) -> int:
    """Instances on the reference population for nmap's open frequency (bounded)."""
    if not frequency > 0:  # also NaN
        return 0
    return round(min(frequency, 1.0) * REFERENCE_HOSTS)


def bucket(instances: int) -> str:
    if instances > VERY_COMMON:
        return "very common"
    if instances >= SOMEWHAT_COMMON:
        return "somewhat common"
    if instances >= LESS_COMMON:
        return "less common"
    return "rare"


def combined(estate_instances: int, prior_instances: int) -> tuple[int, str, str]:
    """(instances, bucket, source) shown for a port: the larger count and where it came
    from; ties go to the estate."""
    if prior_instances > estate_instances:
        return prior_instances, bucket(prior_instances), INTERNET
    return estate_instances, bucket(estate_instances), ESTATE


def prior_source(nmap_data: str | None = None) -> tuple[str, bytes]:
    """(source tag, file bytes) of the user's nmap-services; NmapDataUnavailable when it
    is not installed. The tag (a digest of the file and the reference population) lets the
    store skip an unchanged reload without parsing the file (~0.2 s)."""
    from probers.nmapdata import read_data_file
    from probers.nmapdata.services import FILE_NAME

    raw = read_data_file(FILE_NAME, nmap_data or None)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"nmap-services sha256:{digest} x {REFERENCE_HOSTS}", raw


def parse_prior(raw: bytes) -> list[tuple[str, int, int]]:
    """Rows of (proto, port, internet_instances) for TCP and UDP ports nmap saw open."""
    from probers.nmapdata.services import ServicesDB

    best: dict[tuple[str, int], int] = {}
    for entry in ServicesDB.parse(raw).entries:
        if entry.proto not in ("tcp", "udp"):
            continue
        instances = internet_instances(entry.frequency)
        if instances > best.get((entry.proto, entry.port), -1):
            best[(entry.proto, entry.port)] = instances
    return [(proto, port, n) for (proto, port), n in sorted(best.items()) if n > 0]


def prior_rows(nmap_data: str | None = None) -> tuple[str, list[tuple[str, int, int]]]:
    """(source tag, rows) from the user's nmap-services."""
    source, raw = prior_source(nmap_data)
    return source, parse_prior(raw)


__all__ = ["ESTATE", "INTERNET", "REFERENCE_HOSTS", "bucket", "combined", "internet_instances",
           "parse_prior", "prior_rows", "prior_source"]
