"""Target parsing and scope: what the user asked to scan, turned into addresses.

Owns: parsing target expressions (IPv4/IPv6 addresses, CIDR blocks, dash ranges,
hostnames), inventory files (CSV / YAML with organization and asset name), port
specs, and the scope checks applied before anything is sent (exclusions, size
limit, optional allow-list). Must not send packets: hostname resolution is the
only lookup, through the system resolver.

Every error is a ``TargetError`` whose message is one line for the user.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from schemas.records import PortRange, Target

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A /16 is the largest block scanned without --allow-large (65,536 addresses).
MAX_ADDRESSES = 65_536
# Even with --allow-large, one run expands at most a /8 (16.7 M addresses): beyond
# that (an IPv6 /64...) the list itself would exhaust memory; split the work.
HARD_MAX_ADDRESSES = 2**24
# Safety net: when set (comma-separated CIDRs), nothing outside is ever scanned.
SCOPE_ALLOW_ENV = "PORTWATCH_SCOPE_ALLOW"


class TargetError(ValueError):
    """Bad target, port spec, inventory or scope. One line, exit code 2."""


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One target as the user wrote it, with the labels that go with it."""

    text: str
    organization: str = ""
    asset: str = ""


# -- ports ------------------------------------------------------------------------------


def _port_number(text: str) -> int:
    """ASCII digits only: ``int()`` alone would take "8_0", "+22" and non-ASCII digits."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def parse_ports(spec: str) -> tuple[PortRange, ...]:
    """``"22,80,8000-8100"``, ``"-"`` or ``"all"`` (1-65535) -> merged, sorted ranges."""
    text = spec.strip().lower()
    if text in ("-", "all", "*"):
        return (PortRange(1, 65535),)
    if not text:
        raise TargetError("empty port spec: use e.g. 22,80,443 or 1-65535")
    wanted: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo = _port_number(lo_s) if lo_s.strip() else 1
                hi = _port_number(hi_s) if hi_s.strip() else 65535
            else:
                lo = hi = _port_number(part)
        except ValueError:
            raise TargetError(f"bad port spec {spec!r}: {part!r} is not a port or range") from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise TargetError(f"bad port spec {spec!r}: ports are 1-65535")
        if lo > hi:
            raise TargetError(f"bad port spec {spec!r}: range {part} is backwards")
        wanted.append((lo, hi))
    wanted.sort()
    merged: list[list[int]] = []
    for lo, hi in wanted:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple(PortRange(lo, hi) for lo, hi in merged)


# -- addresses --------------------------------------------------------------------------


def _parse_range(text: str) -> tuple[int, Iterator[IPAddress]] | None:
    """``10.0.0.1-10.0.0.9`` or ``10.0.0.1-9`` (last octet) -> (count, addresses);
    None when the text is not a range. Nothing is expanded before the size check."""
    if "-" not in text or "/" in text:
        return None
    left, right = text.split("-", 1)
    try:
        first = ipaddress.ip_address(left.strip())
    except ValueError:
        return None
    try:
        last: IPAddress = ipaddress.ip_address(right.strip())
    except ValueError:
        if isinstance(first, ipaddress.IPv4Address) and right.strip().isdigit():
            octets = str(first).split(".")
            try:
                last = ipaddress.ip_address(".".join([*octets[:3], right.strip()]))
            except ValueError:
                raise TargetError(f"bad address range {text!r}") from None
        else:
            raise TargetError(f"bad address range {text!r}") from None
    if first.version != last.version or int(last) < int(first):
        raise TargetError(f"bad address range {text!r}: the end comes before the start")
    count = int(last) - int(first) + 1
    return count, (ipaddress.ip_address(int(first) + i) if first.version == 4
                   else ipaddress.IPv6Address(int(first) + i) for i in range(count))


def _check_size(text: str, count: int, *, allow_large: bool) -> None:
    if count > MAX_ADDRESSES and not allow_large:
        raise TargetError(
            f"{text} covers {count:,} addresses, more than a /16 ({MAX_ADDRESSES:,}): "
            "pass --allow-large if you really mean it"
        )
    if count > HARD_MAX_ADDRESSES:
        raise TargetError(f"{text} covers {count:,} addresses, more than one run expands "
                          f"({HARD_MAX_ADDRESSES:,}, a /8): split it into smaller blocks")


def _looks_like_hostname(text: str) -> bool:
    if not text or len(text) > 253 or text.startswith("-"):
        return False
    labels = text.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    ) and not text.replace(".", "").isdigit()


def resolve_hostname(name: str) -> list[str]:
    """Addresses of a hostname through the system resolver, IPv4 first.

    Names under ``.invalid`` fail at once without a query (RFC 6761 section 6.4).
    """
    bare = name.lower().rstrip(".")
    if bare == "invalid" or bare.endswith(".invalid"):
        raise TargetError(f"cannot resolve {name!r}: .invalid names never resolve (RFC 6761)")
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetError(f"cannot resolve hostname {name!r}: {exc}") from None
    seen: dict[str, int] = {}
    for family, *_rest, sockaddr in infos:
        ip = str(ipaddress.ip_address(sockaddr[0]))
        seen.setdefault(ip, 0 if family == socket.AF_INET else 1)
    return sorted(seen, key=lambda ip: (seen[ip], ipaddress.ip_address(ip).packed))


def expand(spec: TargetSpec, *, allow_large: bool = False) -> list[Target]:
    """One target expression -> the addresses it names, each kept with its labels."""
    text = spec.text.strip()
    if not text:
        raise TargetError("empty target")

    def make(ip: IPAddress | str, hostname: str = "") -> Target:
        return Target(ip=str(ip), target=text, hostname=hostname,
                      organization=spec.organization, asset=spec.asset)

    if "/" in text:
        try:
            net: IPNetwork = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise TargetError(f"bad CIDR block {text!r}") from None
        _check_size(text, net.num_addresses, allow_large=allow_large)
        hosts = [net.network_address] if net.num_addresses == 1 else list(net)
        return [make(str(ip)) for ip in hosts]
    try:
        return [make(ipaddress.ip_address(text.strip("[]")))]
    except ValueError:
        pass
    parsed = _parse_range(text)
    if parsed is not None:
        count, addresses = parsed
        _check_size(text, count, allow_large=allow_large)
        return [make(ip) for ip in addresses]
    if _looks_like_hostname(text):
        return [make(ip, hostname=text.rstrip(".").lower()) for ip in resolve_hostname(text)]
    raise TargetError(f"not an address, CIDR block, range or hostname: {text!r}")


# -- inventory --------------------------------------------------------------------------

_TARGET_KEYS = ("target", "address", "host", "hostname", "ip", "cidr")


def _row_spec(row: dict[str, object], where: str) -> list[TargetSpec]:
    lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    organization = str(lowered.get("organization") or lowered.get("org") or "").strip()
    asset = str(lowered.get("asset") or lowered.get("name") or "").strip()
    raw = next((lowered[k] for k in _TARGET_KEYS if lowered.get(k)), None)
    if raw is None:
        targets_list = lowered.get("targets")
        if isinstance(targets_list, list) and targets_list:
            return [TargetSpec(str(t).strip(), organization, asset) for t in targets_list]
        raise TargetError(f"{where}: no target column (one of {', '.join(_TARGET_KEYS)})")
    return [TargetSpec(str(raw).strip(), organization, asset)]


def read_inventory(path: str | os.PathLike[str]) -> list[TargetSpec]:
    """Read a CSV (header with target, organization, asset) or YAML inventory.

    YAML: a list of mappings ``{target|targets, organization, asset}``, or a
    mapping ``organization -> list of targets or of such mappings``.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetError(f"cannot read inventory {str(file)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TargetError(f"inventory {str(file)!r} is not UTF-8 text") from None
    specs: list[TargetSpec] = []
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TargetError(f"inventory {str(file)!r} is not valid YAML: "
                              f"{str(exc).splitlines()[0]}") from None
        if isinstance(data, dict) and "targets" in data and isinstance(data["targets"], list):
            data = data["targets"]
        if isinstance(data, dict):
            for org, entries in data.items():
                if isinstance(entries, str | dict):
                    entries = [entries]  # "Org: 127.0.0.1": one target, not its characters
                for i, entry in enumerate(entries or []):
                    where = f"{file.name}: {org}[{i}]"
                    if isinstance(entry, dict):
                        specs.extend(_row_spec({"organization": org, **entry}, where))
                    else:
                        specs.append(TargetSpec(str(entry), str(org)))
        elif isinstance(data, list):
            for i, entry in enumerate(data):
                if isinstance(entry, dict):
                    specs.extend(_row_spec(entry, f"{file.name}: entry {i + 1}"))
                elif isinstance(entry, str):
                    specs.append(TargetSpec(entry))
                else:
                    raise TargetError(f"{file.name}: entry {i + 1} is not a target")
        else:
            raise TargetError(f"inventory {str(file)!r}: expected a list or a mapping")
    else:
        reader = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
        if not reader.fieldnames:
            raise TargetError(f"inventory {str(file)!r} is empty")
        for n, row in enumerate(reader, start=2):
            specs.extend(_row_spec(dict(row), f"{file.name}: line {n}"))
    if not specs:
        raise TargetError(f"inventory {str(file)!r} lists no targets")
    return specs


# -- scope ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """What may be scanned: exclusions always win; an allow-list, when given, is a fence."""

    exclude: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    allow_large: bool = False

    @classmethod
    def build(cls, exclude: Iterable[str] = (), *, exclude_file: str | None = None,
              allow: Iterable[str] | None = None, allow_large: bool = False) -> Scope:
        entries = list(exclude)
        if exclude_file:
            try:
                lines = Path(exclude_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise TargetError(f"cannot read exclude file {exclude_file!r}: "
                                  f"{exc.strerror}") from None
            entries += [ln.split("#", 1)[0].strip() for ln in lines]
        allow_list = list(allow) if allow is not None else [
            a for a in os.environ.get(SCOPE_ALLOW_ENV, "").split(",") if a.strip()
        ]
        return cls(tuple(_net(e, "exclusion") for e in entries if e),
                   tuple(_net(a, "allowed network") for a in allow_list), allow_large)

    def permits(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if any(addr in net for net in self.exclude if net.version == addr.version):
            return False
        return not self.allow or any(addr in n for n in self.allow if n.version == addr.version)


def _net(text: str, what: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise TargetError(f"bad {what} {text!r}: expected an address or CIDR block") from None


def resolve_targets(specs: Sequence[TargetSpec], scope: Scope | None = None) -> list[Target]:
    """Expand every spec, apply the scope, de-duplicate (first label wins).

    Raises TargetError when a spec is bad or when the scope leaves nothing to scan.
    Addresses outside an allow-list are refused loudly, never silently skipped.
    """
    scope = scope or Scope.build()
    out: dict[str, Target] = {}
    excluded = 0
    total = 0
    for spec in specs:
        for target in expand(spec, allow_large=scope.allow_large):
            total += 1
            addr = ipaddress.ip_address(target.ip)
            if scope.allow and not any(addr in n for n in scope.allow if n.version == addr.version):
                raise TargetError(
                    f"{target.ip} ({spec.text}) is outside the allowed scope "
                    f"{', '.join(map(str, scope.allow))} ({SCOPE_ALLOW_ENV})"
                )
            if not scope.permits(target.ip):
                excluded += 1
                continue
            out.setdefault(target.ip, target)
    if len(out) > MAX_ADDRESSES and not scope.allow_large:
        raise TargetError(f"{len(out):,} addresses in all, more than {MAX_ADDRESSES:,}: "
                          "pass --allow-large if you really mean it")
    if not out:
        raise TargetError(f"nothing to scan: the exclusions cover all {total} target addresses")
    return list(out.values())
