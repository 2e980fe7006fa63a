"""Event records: the one definition of what travels on every arrow of DESIGN.md.

Owns: the frozen dataclasses for targets, shards, open-port events, identified
services, TLS results and findings, plus their JSON wire form (``to_dict`` /
``from_dict``) with a ``v`` schema version so Kafka consumers can refuse what
they do not understand.

Why one file: it is the contract of every arrow, read as one; its records share one
codec, and splitting them would only scatter that contract.

Must not touch: the network, storage, Kafka, or any other portwatch package
(``schemas`` imports nothing of ours).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

import msgspec

SCHEMA_VERSION = 1
_VERSION_PREFIX = b'{"v":%d,' % SCHEMA_VERSION


class RecordError(ValueError):
    """A record on the wire is malformed (missing field, wrong type, bad version)."""


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PortState(StrEnum):
    OPEN = "open"
    # UDP: no reply and no ICMP port-unreachable. Stored as such, never coloured red.
    OPEN_FILTERED = "open|filtered"


class RiskColor(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class ProbeStatus(StrEnum):
    """sslyze-style attempt status: failures are data, not missing rows."""

    COMPLETED = "completed"
    ERROR = "error"  # could not test (timeout, reset, stalled handshake)
    NOT_SCHEDULED = "not_scheduled"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(record: Any, *names: str) -> None:
    """The record's times ``names``, naive, read as UTC (as ``_ts`` reads them). msgspec's
    fast path keeps a timestamp without a zone naive: the sink compared it with an aware
    "now" and its agent crashed on a TypeError, losing the valid records of its batch
    (a review). Every time in a record is aware from here on."""
    for name in names:
        value = getattr(record, name)
        if isinstance(value, datetime) and value.tzinfo is None:
            object.__setattr__(record, name, value.replace(tzinfo=UTC))


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise RecordError(f"bad timestamp {value!r}") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise RecordError(f"bad timestamp {value!r}")


# IPv4-compatible IPv6 (RFC 4291 2.5.5.1, deprecated): ::a.b.c.d with the top 96 bits zero.
# ``::`` and ``::1`` share that shape but are IPv6's own unspecified and loopback addresses.
# Only a first octet of 1 or more is folded: ::2 or ::ffff (0.0.0.x) are IPv6 addresses
# people write (ranges like ::1-::3), and 0.0.0.0/8 is not a host network anyway.
_V4_COMPATIBLE_MIN = 1 << 24


def ipv4_inside(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped (``::ffff:a.b.c.d``) or IPv4-compatible
    (``::a.b.c.d``) IPv6 address reaches, else None.

    Why: a socket connected to ``::ffff:127.0.0.1`` reaches 127.0.0.1, so scope and
    exclusions must judge that IPv4 address, not the IPv6 spelling (issue 11, defect 2).
    """
    if addr.version != 6:
        return None
    assert isinstance(addr, ipaddress.IPv6Address)
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    value = int(addr)
    if value >> 32 == 0 and value >= _V4_COMPATIBLE_MIN:
        return ipaddress.IPv4Address(value)
    return None


def fold_mapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network
                ) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``::ffff:10.0.0.0/104`` (or ``::10.0.0.0/104``) -> ``10.0.0.0/8``: a network of
    IPv4-mapped/compatible addresses is judged as the IPv4 network it reaches."""
    if net.version != 6 or net.prefixlen < 96:
        return net
    first = ipv4_inside(net.network_address)
    if first is None:
        return net
    return ipaddress.IPv4Network(f"{first}/{net.prefixlen - 96}", strict=False)


def canonical_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an address and fold IPv4-mapped/compatible IPv6 to the IPv4 it reaches;
    ValueError when it is not an address."""
    addr = ipaddress.ip_address(text)
    return ipv4_inside(addr) or addr


@functools.lru_cache(maxsize=65_536)  # hot: every decoded Target; errors are not cached
def normalize_ip(value: str) -> str:
    """Canonical text form of an address (IPv4-mapped and IPv4-compatible IPv6 folded
    to IPv4: the one place scope, exclusions, dedup keys and engines agree on);
    raises RecordError when it is not one."""
    if not isinstance(value, str) or len(value) > _MAX_ADDRESS_TEXT:
        raise RecordError(f"not an IP address: {str(value)[:64]!r}")
    try:
        return str(canonical_address(value))
    except ValueError as exc:
        raise RecordError(f"not an IP address: {value!r}") from exc


# The longest textual IPv6 address with a zone is well under this; longer is not an address.
_MAX_ADDRESS_TEXT = 100


def _clip(text: str, limit: int = 60) -> str:
    """Quote hostile input in an error message without quoting all of it."""
    return text if len(text) <= limit else text[:limit] + "..."


def _text(value: Any) -> str:
    """A JSON scalar as text; a nested list/object is a malformed record, not a string."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return "" if value is None else str(value)
    raise RecordError(f"expected text, got {type(value).__name__}")


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise RecordError(f"expected a list of text, got {type(value).__name__}")
    return tuple(_text(v) for v in value)


def _integer(value: Any) -> int:
    """A JSON integer (floats with an integral value allowed); anything else is malformed.
    Magnitude is not bounded here: the store's row builders saturate it per column."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise RecordError(f"expected an integer, got {str(value)[:40]!r}")


def check_port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise RecordError(f"port out of range: {value!r}")
    return value


T = TypeVar("T", bound="Record")


@dataclass(frozen=True, slots=True)
class Record:
    """Base: JSON wire form with a schema version."""

    # A key every wire form of the record holds though its field has a default (the
    # defaults serve records built in code): ``from_json``'s fast path checks it is
    # there. b"" for none. (A JSON string's quote is escaped inside a value, so only a
    # key can hold it.)
    _WIRE_REQUIRED: ClassVar[bytes] = b""

    def _check_wire(self) -> None:
        """Bounds a record from the wire must keep beyond its types (both decoding paths
        run it; records built in code are not held to it). RecordError when not."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": SCHEMA_VERSION}
        for name in _field_names(type(self)):
            out[name] = _encode(getattr(self, name))
        return out

    def to_json(self) -> bytes:
        """Compact JSON with the schema version first: ``{"v":1,...}``.

        Encoded by msgspec (a C codec, ~10x faster than walking the dataclasses in
        Python: this runs once per finding per Kafka hop); the same JSON shape as
        ``to_dict``, timestamps in RFC 3339.
        """
        body = _ENCODER.encode(self)
        return _VERSION_PREFIX + body[1:] if body != b"{}" else _VERSION_PREFIX[:-1] + b"}"

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        """Decode a wire record; RecordError says what is wrong with a bad one.

        Fast path: what ``to_json`` wrote (it starts with the version) is decoded and
        type-checked by msgspec into the dataclasses (``__post_init__`` checks run).
        Anything else, or anything the fast path rejects, takes the lenient and
        precise path below, which accepts other timestamp forms and names the fault.
        """
        try:
            data_bytes = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        except (UnicodeError, TypeError, ValueError) as exc:
            raise RecordError(f"{cls.__name__}: not text: {exc}") from exc
        if data_bytes.startswith(_VERSION_PREFIX):
            try:
                decoded = msgspec.json.decode(data_bytes, type=cls)
            except Exception:  # noqa: BLE001 - the slow path below explains what is wrong
                pass
            else:
                # msgspec fills a missing field from its default (an observation time:
                # "now"), where the slow path refuses the record: both refuse it
                if cls._WIRE_REQUIRED in data_bytes:
                    decoded._check_wire()
                    return decoded
        try:
            data = json.loads(data_bytes)
        except RecursionError:
            # Deep nesting: the stdlib parser recurses per level (issue 11, defect 3).
            raise RecordError(f"{cls.__name__}: JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{cls.__name__}: not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RecordError(f"{cls.__name__}: expected a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping):
            raise RecordError(f"{cls.__name__}: malformed record: expected a JSON object, "
                              f"got {type(data).__name__}")
        version = data.get("v", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise RecordError(f"{cls.__name__}: unsupported schema version "
                              f"{_clip(repr(version))}")
        try:
            record = cls._decode(data)
            record._check_wire()
            return record
        except RecordError:
            raise
        except RecursionError:
            raise RecordError(f"{cls.__name__}: record nested too deeply") from None
        except KeyError as exc:  # said as what it is ("'port'" (KeyError) read as cryptic)
            raise RecordError(f"{cls.__name__}: malformed record: no "
                              f"{_clip(str(exc.args[0]) if exc.args else '?')!r} field") from exc
        except Exception as exc:  # noqa: BLE001 - documented: decoders raise RecordError only
            # KeyError, TypeError, ValueError, AttributeError and also OverflowError (a 1e20
            # timestamp, int(inf)) or OSError (platform timestamp limits): all are a bad
            # record, never a crashed consumer (issue 11, defect 3).
            raise RecordError(f"{cls.__name__}: malformed record: {str(exc)[:200]!r} "
                              f"({type(exc).__name__})") from exc

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        raise NotImplementedError


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """Field names per record class, computed once (fields() is slow on a hot path)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _encode(value: Any) -> Any:
    if value.__class__ in _PLAIN:  # the common case first: str, int, bool, float, None
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Record):
        return {name: _encode(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


_PLAIN = frozenset({str, int, bool, float, type(None)})
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Target(Record):
    """One address to scan, with what the user said about it."""

    ip: str
    target: str  # what the user wrote: hostname, CIDR, range or address
    hostname: str = ""
    organization: str = ""
    asset: str = ""

    def __post_init__(self) -> None:
        # One canonical text per address (dedup keys, partition keys, joins).
        canonical = normalize_ip(self.ip)
        if canonical != self.ip:
            object.__setattr__(self, "ip", canonical)

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            ip=normalize_ip(data["ip"]),
            target=str(data["target"]),
            hostname=str(data.get("hostname", "")),
            organization=str(data.get("organization", "")),
            asset=str(data.get("asset", "")),
        )


@dataclass(frozen=True, slots=True)
class PortRange(Record):
    first: int
    last: int

    def __post_init__(self) -> None:
        check_port(self.first)
        check_port(self.last)
        if self.first > self.last:
            raise RecordError(f"empty port range {self.first}-{self.last}")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.first, self.last + 1))

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(first=data["first"], last=data["last"])


@dataclass(frozen=True, slots=True)
class Shard(Record):
    """A unit of discovery work: some hosts x some ports of one protocol.

    ``seed`` and ``index`` place the shard in the producer's deterministic walk,
    so a checkpoint (seed, index) resumes an interrupted scan exactly.
    """

    scan_id: str
    shard_id: str
    targets: tuple[Target, ...]
    ports: tuple[PortRange, ...]
    proto: Proto = Proto.TCP
    seed: int = 0
    index: int = 0
    total: int = 1  # shards in this scan, for progress
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        _as_utc(self, "created_at")
        if not self.targets:
            raise RecordError("shard without targets")
        if not self.ports:
            raise RecordError("shard without ports")
        if self.port_count > 65_535:
            # A 7.6 KB record of 300 copies of 1-65535 took a discover worker to 840 MB
            # building its port list, and one of 900 KB would need ~80 GB: every worker
            # of the group OOM-killed in turn (a review, 2026-12-06). A protocol has
            # 65,535 ports; the producer never repeats one in a shard.
            raise RecordError(f"shard of {self.port_count:,} ports: more than a protocol "
                              "has (its ranges overlap)")

    @property
    def port_count(self) -> int:
        return sum(len(r) for r in self.ports)

    @property
    def probe_count(self) -> int:
        return self.port_count * len(self.targets)

    def port_list(self) -> list[int]:
        return [p for r in self.ports for p in r]

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            scan_id=str(data["scan_id"]),
            shard_id=str(data["shard_id"]),
            targets=tuple(Target.from_dict(t) for t in data["targets"]),
            ports=tuple(PortRange.from_dict(p) for p in data["ports"]),
            proto=Proto(data.get("proto", "tcp")),
            seed=int(data.get("seed", 0)),
            index=int(data.get("index", 0)),
            total=int(data.get("total", 1)),
            created_at=_ts(data.get("created_at", utcnow())),
        )


@dataclass(frozen=True, slots=True)
class OpenPort(Record):
    """Discovery's output: a port that answered."""

    scan_id: str
    target: Target
    port: int
    proto: Proto = Proto.TCP
    state: PortState = PortState.OPEN
    engine: str = "connect"
    reason: str = ""  # syn-ack, udp-response, ...
    observed_at: datetime = field(default_factory=utcnow)
    # UDP: the payload answer discovery already holds, so identify need not ask again.
    response: str = ""
    _WIRE_REQUIRED: ClassVar[bytes] = b'"observed_at":'

    def __post_init__(self) -> None:
        check_port(self.port)
        _as_utc(self, "observed_at")

    @property
    def key(self) -> str:
        """Partition key: all events of one host land on one partition."""
        return self.target.ip

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            scan_id=str(data["scan_id"]),
            target=Target.from_dict(data["target"]),
            port=check_port(data["port"]),
            proto=Proto(data.get("proto", "tcp")),
            state=PortState(data.get("state", "open")),
            engine=str(data.get("engine", "")),
            reason=str(data.get("reason", "")),
            observed_at=_ts(data["observed_at"]),
            response=str(data.get("response", "")),
        )


@dataclass(frozen=True, slots=True)
class ServiceInfo(Record):
    """What identification concluded about one port, and how."""

    service: str = ""
    product: str = ""
    version: str = ""
    extra_info: str = ""
    cpe: str = ""
    is_tls: bool = False
    banner: str = ""  # sanitized, capped excerpt
    method: str = ""  # e.g. "banner:ssh", "http:server-header", "nmap:match NULL line 42"
    confidence: int = 0  # 0-10, nmap's scale: 10 = hard match
    tried: tuple[str, ...] = ()  # probes sent, for "unidentified ports say what was tried"
    headers: tuple[tuple[str, str], ...] = ()  # HTTP response headers (for CDN signatures)
    # What analysts pivot on (issue 15). All sanitized and capped by the prober.
    http_title: str = ""  # <title> of the page at / (after same-host redirects)
    http_redirect: str = ""  # Location of a 3xx answer to GET /, as sent (sanitized)
    http_server: str = ""  # Server header, verbatim (sanitized)
    http_powered_by: str = ""  # X-Powered-By header (sanitized)
    # Shodan's http.favicon.hash: mmh3 (signed 32-bit) of base64.encodebytes(icon); None
    # when no icon was fetched (0 is a valid hash, so it cannot mean "none").
    favicon_mmh3: int | None = None
    jarm: str = ""  # JARM TLS fingerprint (62 hex chars); "" = not a TLS port or not tested

    def __post_init__(self) -> None:
        if self.favicon_mmh3 is not None:
            _favicon_hash(self.favicon_mmh3)

    @property
    def is_identified(self) -> bool:
        return bool(self.service)

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            service=str(data.get("service", "")),
            product=str(data.get("product", "")),
            version=str(data.get("version", "")),
            extra_info=str(data.get("extra_info", "")),
            cpe=str(data.get("cpe", "")),
            is_tls=bool(data.get("is_tls", False)),
            banner=str(data.get("banner", "")),
            method=str(data.get("method", "")),
            confidence=int(data.get("confidence", 0)),
            tried=tuple(str(t) for t in data.get("tried", ())),
            headers=tuple((str(k), str(v)) for k, v in data.get("headers", ())),
            http_title=str(data.get("http_title", "")),
            http_redirect=str(data.get("http_redirect", "")),
            http_server=str(data.get("http_server", "")),
            http_powered_by=str(data.get("http_powered_by", "")),
            favicon_mmh3=_favicon_hash(data.get("favicon_mmh3")),
            jarm=str(data.get("jarm", "")),
        )


def _favicon_hash(value: Any) -> int | None:
    """A signed 32-bit hash or None; anything else is a malformed record."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31:
        raise RecordError(f"ServiceInfo: favicon_mmh3 must be a signed 32-bit integer, "
                          f"not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class CipherSuite(Record):
    tls_version: str  # "SSLv3", "TLSv1.0" ... "TLSv1.3"
    iana_name: str
    openssl_name: str = ""
    strength: str = ""  # weak / medium / strong
    reason: str = ""
    kex_group: str = ""
    kex_bits: int = 0
    preference: int = 0  # 1 = the server's first choice within this version

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            tls_version=_text(data["tls_version"]),
            iana_name=_text(data["iana_name"]),
            openssl_name=_text(data.get("openssl_name", "")),
            strength=_text(data.get("strength", "")),
            reason=_text(data.get("reason", "")),
            kex_group=_text(data.get("kex_group", "")),
            kex_bits=_integer(data.get("kex_bits", 0)),
            preference=_integer(data.get("preference", 0)),
        )


@dataclass(frozen=True, slots=True)
class Certificate(Record):
    subject: str = ""
    sans: tuple[str, ...] = ()
    issuer: str = ""
    not_before: str = ""
    not_after: str = ""
    key_type: str = ""
    key_bits: int = 0
    signature_algorithm: str = ""
    is_self_signed: bool = False
    is_expired: bool = False
    is_hostname_match: bool = False
    sha256: str = ""
    chain_position: int = 0
    # Posture (issue 13). Leaf only: "match" / "mismatch" / "no name to check" (bare IP).
    name_check: str = ""
    days_to_expiry: int = 0  # whole days left; negative once expired
    expiry_warning: str = ""  # "expired" / "expires within 1 day|7|14|30 days" / ""
    weak_key: str = ""  # "RSA 1024" when under RSA/DSA 2048 or EC 224 bits, else ""
    weak_signature: str = ""  # e.g. "sha1WithRSAEncryption" (MD5 / SHA-1), else ""

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            subject=_text(data.get("subject", "")),
            sans=_texts(data.get("sans", ())),
            issuer=_text(data.get("issuer", "")),
            not_before=_text(data.get("not_before", "")),
            not_after=_text(data.get("not_after", "")),
            key_type=_text(data.get("key_type", "")),
            key_bits=_integer(data.get("key_bits", 0)),
            signature_algorithm=_text(data.get("signature_algorithm", "")),
            is_self_signed=bool(data.get("is_self_signed", False)),
            is_expired=bool(data.get("is_expired", False)),
            is_hostname_match=bool(data.get("is_hostname_match", False)),
            sha256=_text(data.get("sha256", "")),
            chain_position=_integer(data.get("chain_position", 0)),
            name_check=_text(data.get("name_check", "")),
            days_to_expiry=_integer(data.get("days_to_expiry", 0)),
            expiry_warning=_text(data.get("expiry_warning", "")),
            weak_key=_text(data.get("weak_key", "")),
            weak_signature=_text(data.get("weak_signature", "")),
        )


@dataclass(frozen=True, slots=True)
class TlsResult(Record):
    status: ProbeStatus = ProbeStatus.NOT_SCHEDULED
    error: str = ""
    versions: tuple[str, ...] = ()
    suites: tuple[CipherSuite, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    grade: str = ""  # weak / medium / strong for the port
    grade_reason: str = ""
    # How TLS was reached (issue 13): "direct", "starttls-smtp", ... ("" = not probed).
    reached_via: str = ""
    # False: a plaintext service that offers no upgrade ("no STARTTLS offered"): a
    # finding, stored with status completed and no suites, not an error.
    is_upgrade_offered: bool = True
    upgrade_note: str = ""  # the service's words when it offers no upgrade
    # Certificate posture of the served leaf and chain (what risk and change detection use).
    leaf_sha256: str = ""
    is_chain_trusted: bool = False
    trust_error: str = ""  # "self-signed", "unknown issuer: ...", "expired", ...
    days_to_expiry: int = 0  # of the leaf; meaningful only when leaf_sha256 is set
    certificate_warnings: tuple[str, ...] = ()  # "certificate expired", "weak key: leaf: RSA 1024"
    # Mozilla server-side TLS profile the port complies with: modern / intermediate /
    # old / non-compliant (guidelines version in ``profile_version``), with the reasons.
    profile: str = ""
    profile_version: str = ""
    profile_reasons: tuple[str, ...] = ()

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            status=ProbeStatus(data.get("status", "not_scheduled")),
            error=str(data.get("error", "")),
            versions=_texts(data.get("versions", ())),
            suites=tuple(CipherSuite.from_dict(s) for s in data.get("suites", ())),
            certificates=tuple(Certificate.from_dict(c) for c in data.get("certificates", ())),
            grade=str(data.get("grade", "")),
            grade_reason=str(data.get("grade_reason", "")),
            reached_via=_text(data.get("reached_via", "")),
            is_upgrade_offered=bool(data.get("is_upgrade_offered", True)),
            upgrade_note=_text(data.get("upgrade_note", "")),
            leaf_sha256=_text(data.get("leaf_sha256", "")),
            is_chain_trusted=bool(data.get("is_chain_trusted", False)),
            trust_error=_text(data.get("trust_error", "")),
            days_to_expiry=_integer(data.get("days_to_expiry", 0)),
            certificate_warnings=_texts(data.get("certificate_warnings", ())),
            profile=_text(data.get("profile", "")),
            profile_version=_text(data.get("profile_version", "")),
            profile_reasons=_texts(data.get("profile_reasons", ())),
        )


@dataclass(frozen=True, slots=True)
class CdnVerdict(Record):
    provider: str = ""
    source: str = ""  # "range:cloudflare (file date)" / "header:cf-ray"
    is_expected_port: bool = False

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            provider=str(data.get("provider", "")),
            source=str(data.get("source", "")),
            is_expected_port=bool(data.get("is_expected_port", False)),
        )


# "Nothing learnt yet", shared by every Finding that leaves a part out. The records are
# frozen and hold only str, int, enum and tuple values, so one instance serves all: a
# default_factory built (and set field by field) up to three records per finding, ~2 us
# of a stage's ~12 us (BENCHMARKS.md, "tenth session").
NO_SERVICE = ServiceInfo()
NO_TLS = TlsResult()
NO_CDN = CdnVerdict()


@dataclass(frozen=True, slots=True)
class Finding(Record):
    """An open port with everything the stages learnt about it: what the sink stores."""

    port: OpenPort
    service: ServiceInfo = NO_SERVICE
    tls: TlsResult = NO_TLS
    cdn: CdnVerdict = NO_CDN
    risk_color: RiskColor = RiskColor.YELLOW
    risk_reason: str = ""
    _WIRE_REQUIRED: ClassVar[bytes] = b'"observed_at":'  # its port's

    @property
    def key(self) -> str:
        return self.port.key

    def with_(self, **changes: Any) -> Finding:
        return replace(self, **changes)

    def to_json(self) -> bytes:
        """As ``Record.to_json``, with the parts nothing was learnt about left out: a
        missing part decodes to the shared empty one (``NO_SERVICE``, ``NO_TLS``,
        ``NO_CDN``), so the record reads back equal. Most findings were never TLS-probed
        and matched no CDN: their wire form is 36 % shorter, and the sink decodes it in
        half the time, without building an empty ``TlsResult`` and ``CdnVerdict`` per
        finding (4.5 against 9.6 us; BENCHMARKS.md, "eleventh session")."""
        body: dict[str, Any] = {"port": self.port}
        service, tls, cdn = self.service, self.tls, self.cdn
        if service is not NO_SERVICE and service != NO_SERVICE:
            body["service"] = service
        if tls is not NO_TLS and tls != NO_TLS:
            body["tls"] = tls
        if cdn is not NO_CDN and cdn != NO_CDN:
            body["cdn"] = cdn
        body["risk_color"] = self.risk_color
        body["risk_reason"] = self.risk_reason
        return _VERSION_PREFIX + _ENCODER.encode(body)[1:]

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            port=OpenPort.from_dict(data["port"]),
            service=ServiceInfo.from_dict(data.get("service", {})),
            tls=TlsResult.from_dict(data.get("tls", {})),
            cdn=CdnVerdict.from_dict(data.get("cdn", {})),
            risk_color=RiskColor(data.get("risk_color", "yellow")),
            risk_reason=str(data.get("risk_reason", "")),
        )


@dataclass(frozen=True, slots=True)
class HostScan(Record):
    """One target address scanned in one scan: lets a target with no open ports,
    an interrupted scan or a tarpit host show up in the Summary."""

    scan_id: str
    target: Target
    started_at: datetime
    finished_at: datetime
    ports_scanned: int
    open_ports: int
    status: str = "completed"  # completed / interrupted / error
    is_tarpit: bool = False  # "answers on every port"
    note: str = ""
    # The shard that scanned this host: one row per (host, shard) in the store, so a
    # host split over several shards sums its ports and a retried shard replaces its row.
    shard_id: str = ""
    # What this shard covered (protocol + port ranges), so that change detection closes
    # only ports a scan actually looked at: a scan of --ports 22,80 never closes 443.
    # Empty (a record from an older writer): covered nothing, so it closes nothing.
    proto: Proto = Proto.TCP
    ports: tuple[PortRange, ...] = ()

    def __post_init__(self) -> None:
        _as_utc(self, "started_at", "finished_at")

    def covers(self, proto: Proto, port: int) -> bool:
        """True when this shard probed (proto, port) on its host."""
        return proto == self.proto and any(r.first <= port <= r.last for r in self.ports)

    def _check_wire(self) -> None:
        # Bounded as our writers make them (a shard covers at most one protocol's 65,535
        # ports: Shard.__post_init__), refused otherwise: a forged "bogus" status became
        # the host's latest scan in the Summary, and negative counts a compared scan (a
        # review of the distributed shape; the compact form our writers use skipped the
        # check at first: a second review)
        if self.status not in HOST_SCAN_STATUSES:
            raise RecordError(f"HostScan: unknown status {_clip(repr(self.status))}")
        _port_count(self.ports_scanned, "ports_scanned")
        _port_count(self.open_ports, "open_ports")
        if sum(len(r) for r in self.ports) > 65_535:
            raise RecordError("HostScan: its port ranges cover more than a protocol has")

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            scan_id=str(data["scan_id"]),
            target=Target.from_dict(data["target"]),
            started_at=_ts(data["started_at"]),
            finished_at=_ts(data["finished_at"]),
            ports_scanned=_port_count(data["ports_scanned"], "ports_scanned"),
            open_ports=_port_count(data["open_ports"], "open_ports"),
            status=str(data.get("status", "completed")),
            is_tarpit=bool(data.get("is_tarpit", False)),
            note=str(data.get("note", "")),
            shard_id=str(data.get("shard_id", "")),
            proto=Proto(data.get("proto", "tcp")),
            ports=tuple(PortRange.from_dict(p) for p in data.get("ports", ())),
        )


# What a host-scan record's shard did: "running" is written when a shard starts (a scan
# killed outright leaves it), the others when it ends.
HOST_SCAN_STATUSES = frozenset({"completed", "interrupted", "error", "running"})


def _port_count(value: Any, name: str) -> int:
    """A count of one shard's ports, 0-65,535, from the wire (a bool is no count)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65_535:
        raise RecordError(f"HostScan: {name} out of range: {_clip(repr(value))}")
    return value


class ChangeKind(StrEnum):
    """What changed on a port (or a host) between two completed scans of it."""

    OPENED = "opened"  # never seen open on this address before
    REOPENED = "reopened"  # seen before, closed since
    CLOSED = "closed"  # covered by a completed scan, and a direct re-probe failed too
    SERVICE_CHANGED = "service_changed"
    PRODUCT_CHANGED = "product_changed"
    VERSION_CHANGED = "version_changed"
    RISK_RAISED = "risk_raised"
    RISK_LOWERED = "risk_lowered"
    TLS_CHANGED = "tls_changed"
    CERT_CHANGED = "cert_changed"
    CERT_EXPIRING = "cert_expiring"
    CERT_EXPIRED = "cert_expired"
    HOST_UNREACHABLE = "host_unreachable"
    HOST_BACK = "host_back"


class Severity(StrEnum):
    """Ordered from least to most urgent (``SEVERITY_ORDER``)."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITY_ORDER: tuple[Severity, ...] = tuple(Severity)


@dataclass(frozen=True, slots=True)
class ChangeEvent(Record):
    """One change on one port (``port`` 0 for host events) between a host's previous
    completed scan and this one: what the ``changes`` table stores, what the What-changed
    report lists and what alert rules select.

    ``event_id`` is stable for (target, ip, proto, port, kind, scan_id, after): recomputing
    a scan's changes, or replaying its records, yields the same ids (dedup key of the
    table and of alert delivery).
    """

    kind: ChangeKind
    severity: Severity
    target: Target
    scan_id: str
    previous_scan_id: str = ""
    proto: Proto = Proto.TCP
    port: int = 0
    before: str = ""
    after: str = ""
    risk_color: str = ""  # the port's colour the event is about (after; before for closed)
    service: str = ""  # the port's service name, for people reading an alert
    observed_at: datetime = field(default_factory=utcnow)
    _WIRE_REQUIRED: ClassVar[bytes] = b'"observed_at":'

    def __post_init__(self) -> None:
        if self.port != 0:
            check_port(self.port)
        _as_utc(self, "observed_at")

    @property
    def key(self) -> str:
        return self.target.ip

    @property
    def event_id(self) -> str:
        import hashlib

        raw = "\x1f".join((self.target.target, self.target.ip, self.proto.value,
                            str(self.port), self.kind.value, self.scan_id, self.after))
        return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    @classmethod
    def _decode(cls, data: Mapping[str, Any]) -> Self:
        port = data.get("port", 0)
        return cls(
            kind=ChangeKind(data["kind"]),
            severity=Severity(data["severity"]),
            target=Target.from_dict(data["target"]),
            scan_id=str(data["scan_id"]),
            previous_scan_id=str(data.get("previous_scan_id", "")),
            proto=Proto(data.get("proto", "tcp")),
            port=port if port == 0 else check_port(port),
            before=str(data.get("before", "")),
            after=str(data.get("after", "")),
            risk_color=str(data.get("risk_color", "")),
            service=str(data.get("service", "")),
            observed_at=_ts(data["observed_at"]),
        )


__all__ = [
    "SCHEMA_VERSION",
    "SEVERITY_ORDER",
    "CdnVerdict",
    "ChangeEvent",
    "ChangeKind",
    "Certificate",
    "CipherSuite",
    "Finding",
    "HostScan",
    "OpenPort",
    "PortRange",
    "PortState",
    "ProbeStatus",
    "Proto",
    "Record",
    "RecordError",
    "RiskColor",
    "ServiceInfo",
    "Severity",
    "Shard",
    "Target",
    "TlsResult",
    "utcnow",
]
