"""TLS prober: versions, cipher suites, server order, key exchange, certificates, grades.

Owns the ``probers/tls`` package. Public API:

- ``probe_tls(ip, port, *, server_name=None, timeout=3.0, budget=30.0, upgrade="direct",
  trust_store=None) -> TlsResult``: ``upgrade`` is a ``starttls.Upgrade`` value
  ("starttls-smtp", ...) whose plaintext preamble is replayed on every connection
- ``route_for(service, is_tls) -> Upgrade | None``: how to reach TLS on a port identified
  as ``service`` (the tls stage's one decision; never the port number)
- ``detect_tls(ip, port, timeout=3.0) -> bool`` (for the identification stage)
- ``ScanCommand`` / ``IMPLEMENTATIONS``: the explicit table of TLS scan commands.

Must not touch: Kafka, storage, other stages. Everything network-facing is bounded per
attempt and per probe; failures come back as data (``ProbeStatus.ERROR``), never raised.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probers.tls.commands import IMPLEMENTATIONS, ScanCommand
    from probers.tls.probe import detect_tls, probe_tls
    from probers.tls.starttls import Upgrade, route_for

__all__ = ["IMPLEMENTATIONS", "ScanCommand", "Upgrade", "detect_tls", "probe_tls", "route_for"]

# Loaded when first named (PEP 562): importing a light module of the package (starttls's
# routes, which the store's row builder reads) no longer loads OpenSSL and the prober
# (~0.17 s), which a process that only stores or reads findings never needs.
_HOMES = {"IMPLEMENTATIONS": "commands", "ScanCommand": "commands", "detect_tls": "probe",
          "probe_tls": "probe", "Upgrade": "starttls", "route_for": "starttls"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
