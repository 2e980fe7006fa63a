"""Settings: declared once, typed, each with its environment variable, default and reason.

Owns: every knob a user can set (Faust's settings module and naabu's ``default.go``
pattern, STYLE.md). Values come from CLI flags, then the environment
(``PORTWATCH_<NAME>``), then these defaults; they are validated once at start
(``BOUNDS``), then the composition root (``portwatch.assembly``) hands each component
only the narrow options it needs. ``portwatch settings`` prints this table.

Secrets are not settings: the ClickHouse password (``PORTWATCH_CLICKHOUSE_PASSWORD``)
and the web token (``PORTWATCH_WEB_TOKEN``) are read where they are used and never
printed.

Must not touch: the network, the store, any component (it only describes them).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from probers.discovery.engines import TCP_CHOICES


class SettingsError(ValueError):
    pass


_INT = re.compile(r"-?[0-9]{1,18}")
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}")
_FLOAT = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3})?|-?(nan|inf)",
                    re.IGNORECASE)


def _number(value: float) -> str:
    """10000000 -> '10,000,000'; 0.1 -> '0.1' (never '1e+07')."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,g}"


def parse_bool(raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off, any case (a setting, a schedule key); else
    ValueError."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def setting(default: Any, why: str, *, group: str) -> Any:
    return field(default=default, metadata={"why": why, "group": group})


@dataclass(frozen=True)
class Settings:
    # -- where findings live, what may be scanned
    store: str = setting("", "empty = chdb store under the user's data dir; or chdb:///path, "
                         "clickhouse://user@host:8123/db", group="store")
    scope_allow: str = setting("", "comma-separated CIDRs; when set, nothing outside them is "
                               "ever scanned (a fence for shared machines and workers)",
                               group="scope")
    ports: str = setting("1-65535", "all TCP ports: services hide on high ports", group="scope")
    udp: str = setting("top1000", "top1000 = nmap's 1,000 most often open UDP ports; none; "
                       "or a port spec", group="scope")
    # -- TCP discovery
    engine: str = setting("auto", "auto = masscan when it can run (root, Ethernet path) and "
                          "its answers can be counted, else connect", group="discovery")
    concurrency: int = setting(2000, "connect engine: sockets in flight; capped by the fd limit",
                               group="discovery")
    timeout: float = setting(1.0, "connect engine: seconds to wait for a SYN-ACK/RST before "
                             "retrying a port", group="discovery")
    retries: int = setting(1, "connect engine: timed-out ports are probed once more (a single "
                           "pass loses ports)", group="discovery")
    rate: int = setting(10_000, "masscan: packets/s (a busy link loses answers above what it "
                        "carries)", group="masscan")
    masscan_passes: int = setting(2, "masscan: passes at most; a retry pass re-sends only the "
                                  "ports left silent", group="masscan")
    masscan_binary: str = setting("masscan", "masscan: the binary (a name on PATH or a path)",
                                  group="masscan")
    masscan_adapter: str = setting("", "masscan: --adapter; empty = the route's device per "
                                   "target", group="masscan")
    masscan_adapter_ip: str = setting("", "masscan: --adapter-ip; empty = the route's own "
                                      "source address", group="masscan")
    masscan_router_mac: str = setting("", "masscan: --router-mac; empty = the next hop's MAC "
                                      "from the neighbour table", group="masscan")
    # -- UDP discovery
    udp_rate: float = setting(500.0, "UDP: datagrams/s, under Linux's ICMP rate limit so closed "
                              "ports are not taken for silent ones", group="udp")
    udp_timeout: float = setting(1.0, "UDP: seconds to wait for a reply or an ICMP error",
                                 group="udp")
    udp_retries: int = setting(1, "UDP: extra attempts for silent ports (lost datagrams)",
                               group="udp")
    udp_concurrency: int = setting(512, "UDP: probes in flight (one socket each)", group="udp")
    udp_deadline: float = setting(600.0, "UDP: seconds for a whole shard, then it stops",
                                  group="udp")
    nmap_data: str = setting("", "directory of nmap-services, nmap-service-probes and "
                             "nmap-payloads; empty = /usr/share/nmap", group="identify")
    # -- identification and TLS
    identify_concurrency: int = setting(64, "open ports identified at once", group="identify")
    per_host_connections: int = setting(4, "probe connections in flight per address: politeness",
                                        group="identify")
    banner_wait: float = setting(2.0, "seconds to wait for a first-speaker banner (SSH, SMTP...); "
                                 "a silent port still open: 3x this in all", group="identify")
    identify_budget: float = setting(10.0, "seconds per port for all identification probes "
                                     "(a silent port's late-greeting wait comes on top)",
                                     group="identify")
    snmp_public_community: bool = setting(False, "identify SNMP agents by asking with the "
                                          "'public' community (a credential guess): off "
                                          "unless you may", group="identify")
    nmap_probes: bool = setting(True, "use nmap-service-probes from nmap-common when our probes "
                                "name nothing", group="identify")
    prevalence_prior: bool = setting(True, "prevalence also counts an Internet prior from "
                                     "nmap-services (off: only your own scans count; for "
                                     "large stores)", group="identify")
    tls: bool = setting(True, "enumerate versions, suites and certificates on every TLS port",
                        group="tls")
    tls_timeout: float = setting(3.0, "seconds per TLS handshake attempt: stalled handshakes end",
                                 group="tls")
    tls_budget: float = setting(30.0, "seconds per port for the whole TLS enumeration",
                                group="tls")
    tls_trust_store: str = setting("", "CA bundle certificate chains are validated against "
                                   "(PEM); empty = the system's, so private CAs can be trusted",
                                   group="tls")
    # -- shards and the tarpit rule
    tarpit_threshold: int = setting(1000, "open ports per host beyond which it 'answers on every "
                                    "port' (or over 9 in 10 of the ports scanned, once >= 128); "
                                    "65535 turns the rule off", group="shards")
    shard_ports: int = setting(65_535, "ports per shard: a whole host sweep, so tarpits are "
                               "judged whole", group="shards")
    shard_hosts: int = setting(16, "hosts per shard: enough to keep masscan busy, small to retry",
                               group="shards")
    shard_attempts: int = setting(2, "engine runs per shard before it is recorded as failed "
                                  "(ports any attempt found are kept)", group="shards")
    # -- writing the store
    # Each insert costs the engine ~0.1 s whatever its size (every table and view it feeds
    # gets a part), so batches of 500 capped the embedded runner near 3,500 findings/s;
    # batch_seconds still bounds how long a finding waits (BENCHMARKS.md, "tenth session").
    batch_size: int = setting(5_000, "findings per store insert, at most (batch_seconds "
                              "writes a smaller batch first)", group="sink")
    batch_seconds: float = setting(1.0, "longest a finding waits before it is written",
                                   group="sink")
    # -- alerting
    alerts: str = setting("", "alert rules and channels file (alerts.yaml); empty = no alerting",
                          group="alerts")
    # -- the distributed shape
    kafka: str = setting("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated",
                         group="kafka")
    broker_wait: int = setting(30, "seconds produce, discover and process wait at start for the "
                               "Kafka broker to answer (a pod started before its broker); 0 = "
                               "fail at once", group="kafka")
    topic_prefix: str = setting("", "put before every topic and consumer group name: two "
                                "pipelines on one broker", group="kafka")
    topic_replication: int = setting(1, "replication factor of the topics portwatch creates "
                                     "(3 on a cluster of three brokers or more; existing "
                                     "topics are left as they are)", group="kafka")
    session_timeout: float = setting(10.0, "seconds before a dead worker's partitions move to "
                                     "another", group="kafka")
    max_poll_interval: float = setting(600.0, "seconds a discover worker may spend on one shard "
                                       "before Kafka evicts it; shard deadlines are fitted under "
                                       "it", group="kafka")
    commit_interval: float = setting(1.0, "seconds between the stream processors' offset commits",
                                     group="kafka")
    sink_buffer: int = setting(500, "messages per store insert in the sink (each holds up to 500 "
                               "findings of one host)", group="kafka")
    change_settle: float = setting(5.0, "seconds the sink waits after a host's last record "
                                   "before computing its changes (another shard of it may "
                                   "follow); a host missing findings goes after 600 s",
                                   group="kafka")

    @classmethod
    def env_name(cls, name: str) -> str:
        return f"PORTWATCH_{name.upper()}"

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Flags (``overrides``; None = not given), then the environment, then defaults."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}  # setting -> "PORTWATCH_X='value'", for errors
        for f in fields(cls):
            env = cls.env_name(f.name)
            raw = os.environ.get(env)
            if raw is not None and raw != "":
                shown = raw if len(raw) <= 40 else raw[:40] + "..."
                kind: type[Any] = type(f.default)
                try:
                    # int() and float() also read '٣', '1_000' and '+5': numbers as written
                    # in ASCII only (a float may be 1.5, 1e9, nan or inf: the range refuses
                    # the last two)
                    pattern = _INT if kind is int else _FLOAT if kind is float else None
                    if pattern is not None and not pattern.fullmatch(raw.strip()):
                        raise ValueError(raw)
                    # (a value of blanks stays as given, for its own check to judge: read
                    # as unset, PORTWATCH_SCOPE_ALLOW='  ' turned the fence off; a review)
                    values[f.name] = (parse_bool(raw) if kind is bool
                                      else kind(raw.strip() or raw))
                except ValueError:
                    raise SettingsError(f"{env}={shown!r} is not a valid "
                                        f"{kind.__name__}") from None
                sources[f.name] = f"{env}={shown!r}"
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        for name in given:
            sources.pop(name, None)  # a flag: named as the flag
        settings = cls(**values)
        settings.validate(sources)
        return settings

    def validate(self, sources: Mapping[str, str] | None = None) -> None:
        """SettingsError (one line) for a value outside its range. ``sources`` names where
        a value came from (``PORTWATCH_TIMEOUT='0'``); the flag (``--timeout``) otherwise."""
        for name, (low, high, _unit) in BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                ok = False
            elif isinstance(value, float) and low == 0:
                ok = 0 < value <= high  # a wait of 0 s is no wait: refused
            else:
                ok = low <= value <= high
            if not ok:
                who = (sources or {}).get(name) or f"--{name.replace('_', '-')}"
                raise SettingsError(f"{who} must be {self._range_words(name, error=True)}")
        if self.engine not in TCP_CHOICES:
            who = (sources or {}).get("engine") or "--engine"
            raise SettingsError(f"{who} must be {', '.join(TCP_CHOICES[:-1])} or "
                                f"{TCP_CHOICES[-1]}, not {self.engine!r}")
        self._validate_port_specs(sources or {})
        self._validate_files_and_fences()

    def _validate_port_specs(self, sources: Mapping[str, str]) -> None:
        """The TCP ports and the UDP choice, read by the parser ``scan`` uses
        (``producers.targets.parse_ports``), so every command (and `portwatch settings`)
        refuses PORTWATCH_PORTS=0 or PORTWATCH_UDP=top0 in one line, not only scan. A
        flag's error keeps scan's wording (``portwatch.assembly``); topN is checked for
        its range only here (its ports are read from nmap-services when scanning)."""
        from producers.targets import TOP_N_PROBLEM, TargetError, parse_ports, top_count

        who = sources.get("ports")
        try:
            parse_ports(self.ports)
        except TargetError as exc:
            raise SettingsError(f"{who}: {exc}" if who else str(exc)) from None
        who = sources.get("udp")
        text = self.udp.strip().lower()
        if text in ("none", "no", "off", ""):
            return
        if text.startswith("top"):
            try:
                top_count(text, bare=1000)
            except TargetError:
                problem = f"{TOP_N_PROBLEM} (or use none or a port spec)"
                shown = self.udp[:40] + ("..." if len(self.udp) > 40 else "")
                raise SettingsError(f"{who}: {problem}" if who
                                    else f"bad --udp {shown!r}: {problem}") from None
            return
        try:
            parse_ports(text)
        except TargetError as exc:
            raise SettingsError(f"{who or '--udp'}: {exc} (or top1000, topN, none)") from None

    def _validate_files_and_fences(self) -> None:
        """The scope fence and the TLS trust store, checked here so every command (and
        `portwatch settings`) refuses a bad value in one line before anything is sent:
        a fence of only blanks and commas failed open, and a trust store that was
        missing, a directory or not PEM was ignored, which stored "untrusted" on every
        TLS port, blaming the system bundle."""
        if self.scope_allow:
            from producers.targets import TargetError, scope_allow_items

            try:
                scope_allow_items(self.scope_allow)
            except TargetError as exc:
                message = str(exc)
                who = "PORTWATCH_SCOPE_ALLOW"
                raise SettingsError(message if message.startswith(who)
                                    else f"{who}: {message}") from None
        if self.masscan_adapter_ip:
            # masscan's own settings: a bad one failed every shard ("masscan engine
            # failed: AddressValueError", retried, exit 1) or hung masscan ("bad MAC
            # address", then idle until the deadline: a review)
            who = f"{self.env_name('masscan_adapter_ip')}={self.masscan_adapter_ip[:60]!r}"
            try:
                source = ipaddress.IPv4Address(self.masscan_adapter_ip)
            except ValueError:
                raise SettingsError(f"{who}: not an IPv4 address (the source address "
                                    "masscan sends from)") from None
            if (source.is_unspecified or source.is_multicast
                    or source == ipaddress.IPv4Address("255.255.255.255")):
                # answers to 0.0.0.0 or a group address never come back: every probe
                # "lost", every port closed, and nothing said
                raise SettingsError(f"{who}: not one host's address (the source address "
                                    "masscan sends from; answers come back to it)")
        if self.masscan_router_mac:
            who = f"{self.env_name('masscan_router_mac')}={self.masscan_router_mac[:60]!r}"
            if not _MAC.fullmatch(self.masscan_router_mac):
                raise SettingsError(f"{who}: not a MAC address (six hex pairs, e.g. "
                                    "02:00:00:00:00:01)")
            # the first octet's low bit marks a group address (ff:ff:... is broadcast):
            # masscan would flood the segment with every probe instead of one router
            if (int(self.masscan_router_mac[:2], 16) & 1
                    or int(re.sub("[:-]", "", self.masscan_router_mac), 16) == 0):
                raise SettingsError(f"{who}: not one device's MAC address (a broadcast, "
                                    "multicast or all-zero address; the next hop's own "
                                    "MAC, e.g. 02:00:00:00:00:01)")
        if self.nmap_data and not Path(self.nmap_data).is_dir():
            # a typo here silently turned nmap's service probes and the Internet prior
            # off for TCP scans (a review); only --udp topN said anything
            who = f"{self.env_name('nmap_data')}={self.nmap_data[:300]!r}"
            raise SettingsError(f"{who}: no such directory (nmap's data files, e.g. "
                                "/usr/share/nmap; unset it for that default)")
        if self.tls_trust_store:
            from probers.tls.posture import trust_store_problem

            problem = trust_store_problem(self.tls_trust_store)
            if problem:
                # the whole path (bounded), not the 40 characters other values show:
                # the point is to see the typo in it
                who = f"{self.env_name('tls_trust_store')}={self.tls_trust_store[:300]!r}"
                raise SettingsError(f"{who}: the trust store {problem} (a PEM bundle of CA "
                                    "certificates; unset it to use the system's)")

    @classmethod
    def range_of(cls, name: str) -> str:
        """The range ``validate`` holds a setting to, in words ('' when it has none), for
        ``portwatch settings``."""
        return cls._range_words(name, error=False) if name in BOUNDS else ""

    @classmethod
    def _range_words(cls, name: str, *, error: bool) -> str:
        """'1 to 100,000' (or, in an error, 'between 1 and 100,000'); 'above 0, at most
        3,600 s' for waits, where 0 is no wait. One wording for the listing and the error."""
        low, high, unit = BOUNDS[name]
        suffix = f" {unit}" if unit else ""
        default = {f.name: f.default for f in fields(cls)}[name]
        if isinstance(default, float) and low == 0:
            return f"above 0, at most {_number(high)}{suffix}"
        if high >= UNBOUNDED:
            return f"at least {_number(low)}{suffix}"
        if error:
            return f"between {_number(low)} and {_number(high)}{suffix}"
        return f"{_number(low)} to {_number(high)}{suffix}"

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, environment variable, default, why) for every setting, in order."""
        return [(f.name, cls.env_name(f.name), f.default, f.metadata["why"])
                for f in fields(cls)]

    @classmethod
    def groups(cls) -> dict[str, str]:
        """Setting name -> the component it configures."""
        return {f.name: f.metadata["group"] for f in fields(cls)}


UNBOUNDED = 10**18
# Every numeric setting's range, checked once at start: (lowest, highest, unit). A float
# whose lowest is 0 must be strictly positive. Upper bounds keep a typo (10^12 sockets)
# from reaching an allocator or a socket loop.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "concurrency": (1, 100_000, ""),
    "timeout": (0, 3600, "s"),
    "retries": (0, 10, ""),
    "rate": (1, 10_000_000, "packets/s"),
    "masscan_passes": (1, 5, ""),
    "udp_rate": (1, 1_000_000, "datagrams/s"),
    "udp_timeout": (0, 3600, "s"),
    "udp_retries": (0, 10, ""),
    "udp_concurrency": (1, 65_535, ""),
    "udp_deadline": (0, 86_400, "s"),
    "identify_concurrency": (1, 10_000, ""),
    "per_host_connections": (1, 1_000, ""),
    "banner_wait": (0, 3600, "s"),
    "identify_budget": (0, 3600, "s"),
    "tls_timeout": (0, 3600, "s"),
    "tls_budget": (0, 3600, "s"),
    "tarpit_threshold": (1, 65_535, ""),
    "shard_ports": (1, 65_535, ""),
    "shard_hosts": (1, 65_536, ""),
    "shard_attempts": (1, 10, ""),
    "batch_size": (1, 100_000, ""),
    "batch_seconds": (0, 3600, "s"),
    "broker_wait": (0, 3600, "s"),
    "topic_replication": (1, 32, ""),
    "session_timeout": (6, 300, "s"),
    "max_poll_interval": (10, 86_400, "s"),
    "commit_interval": (0.1, 60, "s"),
    "sink_buffer": (1, 100_000, ""),
    "change_settle": (0, 600, "s"),
}
