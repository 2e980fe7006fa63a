"""Which observations say their port can still reach TLS (``tls_reachable``): the Ciphers
report shows a port's last TLS probe only while its latest observation does."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.records import Finding, OpenPort, ProbeStatus, ServiceInfo, Target, TlsResult
from stream_processors.store_rows import OBSERVATION_COLUMNS, observation_row, tls_reachable

PORT = OpenPort(scan_id="s1", target=Target(ip="127.0.0.1", target="127.0.0.1"), port=443,
                observed_at=datetime(2026, 3, 1, tzinfo=UTC))


def seen(service: ServiceInfo, tls: TlsResult | None = None) -> Finding:
    return Finding(port=PORT, service=service, tls=tls or TlsResult())


@pytest.mark.parametrize(("finding", "reachable"), [
    # probed this scan, whatever the name (a "not TLS" answer included)
    (seen(ServiceInfo(service="http"), TlsResult(status=ProbeStatus.ERROR,
                                                  error="not TLS: HTTP/1.1 400")), True),
    # TLS itself, not probed (--no-tls)
    (seen(ServiceInfo(service="https", is_tls=True)), True),
    (seen(ServiceInfo(service="ssl/http")), True),
    # a service with a STARTTLS upgrade the TLS stage speaks, not probed (--no-tls)
    (seen(ServiceInfo(service="smtp")), True),
    (seen(ServiceInfo(service="PostgreSQL")), True),
    # plain text now: nothing of TLS to show
    (seen(ServiceInfo(service="http", product="nginx")), False),
    (seen(ServiceInfo(service="ssh")), False),
    (seen(ServiceInfo(method="unidentified")), False),
])
def test_tls_reachable_follows_the_tls_stages_own_decision(finding: Finding,
                                                           reachable: bool) -> None:
    assert tls_reachable(finding) is reachable
    row = dict(zip(OBSERVATION_COLUMNS, observation_row(finding), strict=True))
    assert row["tls_reachable"] == int(reachable)
