"""Settings: declared once, typed, each with its environment variable and a reason.

Owns: every tunable of portwatch with its default (Faust's settings module and
naabu's ``default.go`` pattern, STYLE.md). Values come from CLI flags, then the
environment, then these defaults; they are validated once at start, then each
component receives only the narrow options it needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any


class SettingsError(ValueError):
    pass


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def setting(default: Any, env: str, why: str) -> Any:
    return field(default=default, metadata={"env": env, "why": why})


@dataclass(frozen=True)
class Settings:
    store: str = setting("", "PORTWATCH_STORE",
                         "empty = chdb store under the user's data dir; or chdb:///path, "
                         "clickhouse://user@host:8123/db")
    ports: str = setting("1-65535", "PORTWATCH_PORTS",
                         "all TCP ports: services hide on high ports")
    udp: str = setting("top1000", "PORTWATCH_UDP",
                       "top1000 = nmap's 1,000 most often open UDP ports; none; or a port spec")
    engine: str = setting("auto", "PORTWATCH_ENGINE",
                          "auto = masscan when it can run (root, Ethernet path), else connect")
    rate: int = setting(0, "PORTWATCH_RATE",
                        "packets/s for masscan and UDP; 0 = engine default (10,000 / 500)")
    concurrency: int = setting(2000, "PORTWATCH_CONCURRENCY",
                               "sockets in flight per discovery engine; capped by the fd limit")
    timeout: float = setting(1.0, "PORTWATCH_TIMEOUT",
                             "seconds to wait for a SYN-ACK/RST before retrying a port")
    retries: int = setting(1, "PORTWATCH_RETRIES",
                           "timed-out ports are probed once more: a single pass loses ports")
    identify_concurrency: int = setting(64, "PORTWATCH_IDENTIFY_CONCURRENCY",
                                        "open ports identified at once")
    per_host_connections: int = setting(4, "PORTWATCH_PER_HOST_CONNECTIONS",
                                        "probe connections in flight per address: politeness")
    banner_wait: float = setting(2.0, "PORTWATCH_BANNER_WAIT",
                                 "seconds to wait for a first-speaker banner (SSH, SMTP...)")
    identify_budget: float = setting(10.0, "PORTWATCH_IDENTIFY_BUDGET",
                                     "seconds per port for all identification probes")
    nmap_probes: bool = setting(True, "PORTWATCH_NMAP_PROBES",
                                "use nmap-service-probes from nmap-common when our probes "
                                "name nothing")
    tls: bool = setting(True, "PORTWATCH_TLS",
                        "enumerate versions, suites and certificates on every TLS port")
    tls_timeout: float = setting(3.0, "PORTWATCH_TLS_TIMEOUT",
                                 "seconds per TLS handshake attempt: stalled handshakes end")
    tls_budget: float = setting(30.0, "PORTWATCH_TLS_BUDGET",
                                "seconds per port for the whole TLS enumeration")
    tarpit_threshold: int = setting(1000, "PORTWATCH_TARPIT_THRESHOLD",
                                    "open ports per host beyond which it 'answers on every port'")
    shard_ports: int = setting(65_535, "PORTWATCH_SHARD_PORTS",
                               "ports per shard: a whole host sweep, so tarpits are judged whole")
    shard_hosts: int = setting(16, "PORTWATCH_SHARD_HOSTS",
                               "hosts per shard: enough to keep masscan busy, small to retry")
    batch_size: int = setting(500, "PORTWATCH_BATCH_SIZE", "findings per store insert")
    batch_seconds: float = setting(1.0, "PORTWATCH_BATCH_SECONDS",
                                   "longest a finding waits before it is written")
    kafka: str = setting("127.0.0.1:9092", "PORTWATCH_KAFKA", "bootstrap servers (distributed)")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                try:
                    kind: type[Any] = type(f.default)
                    values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
                except ValueError:
                    raise SettingsError(f"{f.metadata['env']}={raw!r} is not a valid "
                                        f"{type(f.default).__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("concurrency", "identify_concurrency", "per_host_connections", "batch_size",
                    "tarpit_threshold", "shard_ports", "shard_hosts")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("timeout", "banner_wait", "identify_budget", "batch_seconds",
                     "tls_timeout", "tls_budget"):
            if not 0 < getattr(self, name) <= 3600:
                raise SettingsError(f"--{name.replace('_', '-')} must be between 0 and 3600 s")
        if self.engine not in ("auto", "masscan", "connect"):
            raise SettingsError(f"--engine must be auto, masscan or connect, not {self.engine!r}")
        if self.rate < 0:
            raise SettingsError("--rate must be 0 (engine default) or more packets/s")
        if self.retries < 0 or self.retries > 10:
            raise SettingsError("--retries must be between 0 and 10")
        from portwatch.bounds import BoundsError, check_bounds

        try:
            check_bounds(self)  # upper bounds too (issue 11, defect 9): one table
        except BoundsError as exc:
            raise SettingsError(str(exc)) from None

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        return [(f.name, f.metadata["env"], f.default, f.metadata["why"]) for f in fields(cls)]
