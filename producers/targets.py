"""Target parsing and scope: what the user asked to scan, turned into addresses.

Owns: parsing target expressions (IPv4/IPv6 addresses, CIDR blocks, dash ranges,
hostnames), inventory files (CSV / YAML with organization and asset name), port
specs, and the scope checks applied before anything is sent (exclusions, size
limit, optional allow-list). Must not send packets: hostname resolution is the
only lookup, through the system resolver.

Every error is a ``TargetError`` whose message is one line for the user.

Why one file: targets, inventories and the scope share one address grammar (what is an
address, a block, a range, a name) and one error type; the scope's fence
(``scope_allow_items``) and an inventory's rows are checked by the same parsers.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from producers.textfiles import FileReadError, describe, read_bounded
from schemas.bounded import is_digits
from schemas.filters import fold_controls, is_control
from schemas.records import PortRange, Target, canonical_address, fold_mapped

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger(__name__)

# A /16 is the largest block scanned without --allow-large (65,536 addresses).
MAX_ADDRESSES = 65_536
# What every refusal of more than MAX_ADDRESSES says to do (a schedule entry, which has no
# flags, says its own key instead: portwatch.alerts.scanning)
ALLOW_LARGE_HINT = "pass --allow-large if you really mean it"
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
    # Where an inventory wrote it ("assets.csv: line 3"), said with its errors; not part
    # of what the target is.
    where: str = field(default="", compare=False)
    # The host name an inventory row gave beside its address (a CMDB export's hostname
    # and ip): the address is scanned, the name kept as its hostname (never resolved)
    hostname: str = ""


# -- ports ------------------------------------------------------------------------------


def _port_number(text: str) -> int:
    """ASCII digits only: ``int()`` alone would take "8_0", "+22" and non-ASCII digits."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ValueError(text)
    return int(text)


def _short(text: str, limit: int = 60) -> str:
    """Echo user input in an error line without echoing megabytes of it."""
    return text if len(text) <= limit else text[:limit] + "..."


def _one_line(text: str) -> str:
    """Echo user input in an error line as one line: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# A port spec longer than this is not something a person typed: refuse before splitting.
MAX_PORT_SPEC_CHARS = 100_000


TOP_N_PROBLEM = "topN needs 1 <= N <= 65,535"


def top_count(text: str, *, bare: int | None = None) -> int:
    """N of a ``topN`` port profile (``text`` stripped, lowercase, starting with "top"):
    nmap's N most often open ports, 1 to 65,535; ``bare`` is what "top" alone means, when
    it means one. TargetError(TOP_N_PROBLEM) otherwise. The one check of --udp,
    PORTWATCH_UDP and a schedule's ports and udp."""
    digits = text[3:] or ("" if bare is None else str(bare))
    if not is_digits(digits, 6) or not 1 <= int(digits) <= 65_535:
        raise TargetError(TOP_N_PROBLEM)
    return int(digits)


def parse_ports(spec: str) -> tuple[PortRange, ...]:
    """``"22,80,8000-8100"``, ``"-"`` or ``"all"`` (1-65535) -> merged, sorted ranges.

    Both ends of a range are required: ``"1-"`` or ``"-5"`` are refused, not read as
    1-65535 or 1-5 (a typo must not widen a scan; issue 11, defect 9).
    """
    if len(spec) > MAX_PORT_SPEC_CHARS:
        raise TargetError(f"bad port spec: {len(spec):,} characters, more than "
                          f"{MAX_PORT_SPEC_CHARS:,}")
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
                lo = _port_number(lo_s)
                hi = _port_number(hi_s)
            else:
                lo = hi = _port_number(part)
        except ValueError:
            shown = part if len(part) <= 40 else part[:40] + "..."
            raise TargetError(f"bad port spec {_short(spec)!r}: {shown!r} is not a port or "
                              "range (both ends required, e.g. 1-1024)") from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise TargetError(f"bad port spec {_short(spec)!r}: ports are 1-65535")
        if lo > hi:
            raise TargetError(f"bad port spec {_short(spec)!r}: range {part} is backwards")
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
            f"{ALLOW_LARGE_HINT}"
        )
    if count > HARD_MAX_ADDRESSES:
        raise TargetError(f"{text} covers {count:,} addresses, more than one run expands "
                          f"({HARD_MAX_ADDRESSES:,}, a /8): split it into smaller blocks")


def planned_count(spec: TargetSpec) -> int:
    """How many addresses ``spec`` names, computed without expanding anything (a
    hostname counts 1 here; its resolved addresses are counted again after)."""
    text = spec.text.strip()
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=False).num_addresses
        except ValueError:
            raise TargetError(f"bad CIDR block {_short(text)!r}") from None
    if "-" in text:
        parsed = _parse_range(text)
        if parsed is not None:
            return parsed[0]
    return 1


@contextlib.contextmanager
def _said_where(spec: TargetSpec) -> Iterator[None]:
    """A TargetError about ``spec`` says where an inventory wrote it ("assets.csv: line 3:
    ...")."""
    try:
        yield
    except TargetError as exc:
        if not spec.where or str(exc).startswith(spec.where):
            raise
        raise TargetError(f"{spec.where}: {exc}") from None


def check_total(specs: Sequence[TargetSpec], *, allow_large: bool) -> int:
    """One ceiling on the TOTAL number of addresses, checked before any expansion:
    a per-target limit let 100 /9s through, and a /8 took minutes and GBs to expand
    before anything was sent (issue 11, defect 9). Returns the planned total."""
    spans: list[tuple[int, int, int]] = []  # (version, first, last) of what has addresses
    names: set[str] = set()  # host names: one address each, a name counted once
    for spec in specs:
        with _said_where(spec):
            count = planned_count(spec)
            _check_size(_short(spec.text.strip()), count, allow_large=allow_large)
            span = _span(spec) or _address_span(spec)
        if span is None:
            names.add(spec.text.strip().rstrip(".").lower())  # as it is resolved
        else:
            spans.append(span)
    # An address is counted once, however many blocks or lines name it (a shared
    # inventory that lists one /17 under two organizations was refused as two /17s, and
    # 70,000 lines of one address as 70,000 addresses: reviews)
    total = _distinct(spans) + len(names)
    if total > HARD_MAX_ADDRESSES:
        raise TargetError(
            f"the targets cover more than {HARD_MAX_ADDRESSES:,} addresses in all (the "
            "most one run expands, even with --allow-large): split the work")
    if total > MAX_ADDRESSES and not allow_large:
        raise TargetError(
            f"the targets cover {total:,} addresses in all, more than a /16 "
            f"({MAX_ADDRESSES:,}): {ALLOW_LARGE_HINT}")
    return total


def _address_span(spec: TargetSpec) -> tuple[int, int, int] | None:
    """(IP version, n, n) of an address, in the form it is scanned as ([::1] is ::1, an
    IPv4-mapped or -compatible address the IPv4 it reaches); None for anything else."""
    text = spec.text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = canonical_address(text)
    except ValueError:
        return None
    return address.version, int(address), int(address)


def _span(spec: TargetSpec) -> tuple[int, int, int] | None:
    """(IP version, first, last) of a block or a range; None for anything else."""
    block = _block_of(spec)
    if block is not None:
        return block.version, int(block.network_address), int(block.broadcast_address)
    text = spec.text.strip()
    parsed = _parse_range(text) if "-" in text and "/" not in text else None
    if parsed is None:
        return None
    count, addresses = parsed
    first = next(iter(addresses))
    return first.version, int(first), int(first) + count - 1


# IPv6 spans whose addresses are judged as the IPv4 they embed (canonical_address): never
# judged as a whole
_EMBEDDING = tuple((int(n.network_address), int(n.broadcast_address)) for n in (
    ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("::ffff:0:0/96")))


def _judged_whole(span: tuple[int, int, int]) -> bool:
    """Can a span's addresses be judged together? Not when it holds this host (0.0.0.0/8)
    or addresses judged as the IPv4 they embed."""
    version, lo, hi = span
    if version == 4:
        return lo > 0x00FFFFFF
    return not _embeds_ipv4(lo, hi)


def _embeds_ipv4(lo: int, hi: int) -> bool:
    """Does the IPv6 span [lo, hi] hold addresses judged as the IPv4 they embed?"""
    return any(lo <= end and start <= hi for start, end in _EMBEDDING)


def _addresses_of(span: tuple[int, int, int]) -> Iterator[str]:
    """A span's addresses as Target.ip writes them (an IPv4 by its octets: cheap)."""
    version, lo, hi = span
    for n in range(lo, hi + 1):
        if version == 4:
            yield f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        else:
            yield str(canonical_address(str(ipaddress.IPv6Address(n))))


def _distinct(spans: list[tuple[int, int, int]]) -> int:
    """How many addresses the spans name together (overlaps counted once)."""
    return sum(end - start + 1 for version in (4, 6)
               for start, end in zip(*_merged((lo, hi) for v, lo, hi in spans if v == version),
                                     strict=True))


def looks_like_hostname(text: str) -> bool:
    """DNS name syntax (labels of 1-63 letters, digits, '-' or '_'; 253 at most), and not
    all digits and dots: '256.0.0.1' is a bad address, not a name."""
    if not text or len(text) > 253 or text.startswith("-"):
        return False
    labels = text.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    ) and not text.replace(".", "").isdigit() and not _is_legacy_ipv4(text)


def _is_legacy_ipv4(text: str) -> bool:
    """An IPv4 address in a form ``inet_aton`` reads (0x7f.0.0.1, 0x7f000001): the
    resolver takes it for that address, so as a "name" it scanned 127.0.0.1 under a
    spelling no report would match (octal and short forms were already refused: a
    review, 2026-12-06)."""
    try:
        socket.inet_aton(text.rstrip("."))
    except (OSError, ValueError):
        return False
    return True


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
        return Target(ip=str(ip), target=text, hostname=hostname or spec.hostname,
                      organization=spec.organization, asset=spec.asset)

    _refuse_zone(text)

    if "/" in text:
        try:
            net: IPNetwork = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise TargetError(f"bad CIDR block {text!r}") from None
        _check_size(text, net.num_addresses, allow_large=allow_large)
        hosts = [net.network_address] if net.num_addresses == 1 else list(net)
        return [make(str(ip)) for ip in hosts]
    if text.startswith("[") or text.endswith("]"):
        # "[::1]" is an address in URL brackets; "[::1" or "::1]" is a typo, not a name.
        if not (text.startswith("[") and text.endswith("]")) or text.count("[") != 1 \
                or text.count("]") != 1:
            raise TargetError(f"unbalanced brackets in target {_short(text)!r}")
        try:
            return [make(ipaddress.ip_address(text[1:-1]))]
        except ValueError:
            raise TargetError(f"not an address inside brackets: {_short(text)!r}") from None
    try:
        return [make(ipaddress.ip_address(text))]
    except ValueError:
        pass
    parsed = _parse_range(text)
    if parsed is not None:
        count, addresses = parsed
        _check_size(text, count, allow_large=allow_large)
        return [make(ip) for ip in addresses]
    if looks_like_hostname(text):
        return [make(ip, hostname=text.rstrip(".").lower()) for ip in resolve_hostname(text)]
    raise TargetError(f"not an address, CIDR block, range or hostname: {text!r}")


# -- inventory --------------------------------------------------------------------------

_TARGET_KEYS = ("target", "address", "host", "hostname", "ip", "cidr")
# Every key an inventory entry (a CSV column, a YAML mapping key) may hold: the target
# (one of _TARGET_KEYS, or a 'targets' list), its organization ('org') and asset ('name').
# Anything else is refused: 'organisation' or 'assset' silently lost the label.
_LABEL_KEYS = ("organization", "org", "asset", "name")
INVENTORY_KEYS = (*_TARGET_KEYS, "targets", *_LABEL_KEYS)


def _row_spec(row: dict[str, object], where: str) -> list[TargetSpec]:
    lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    unknown = [k for k in lowered if k not in INVENTORY_KEYS]
    if unknown:
        raise TargetError(f"{where}: unknown key {_one_line(_short(unknown[0]))!r} (known: "
                          f"{', '.join(INVENTORY_KEYS)})")
    # One value per meaning: a row with two different addresses (target and ip), or two
    # organizations or assets, lost one of them silently. A name beside an address (a
    # CMDB export's hostname and ip) is not two targets: the address is scanned and the
    # name kept as its hostname (the first key won: the name was resolved and another
    # host scanned under the row's labels, the address never; a review)
    addresses = {k: _address_form(lowered[k]) for k in _TARGET_KEYS
                 if lowered.get(k) not in (None, "")}
    if len({n for n in addresses.values() if n is not None}) > 1:
        names = " and ".join(repr(k) for k, n in addresses.items() if n is not None)
        raise TargetError(f"{where}: {names} name different addresses: give one")
    hostname = _row_hostname(lowered, addresses, where)
    for keys in (("organization", "org"), ("asset", "name")):
        given = {k: str(lowered[k]).strip().casefold() for k in keys
                 if lowered.get(k) not in (None, "") and _is_scalar(lowered[k])}
        if len(set(given.values())) > 1:
            names = " and ".join(repr(k) for k in given)
            raise TargetError(f"{where}: {names} disagree: give one")
    organization = _label(lowered.get("organization") or lowered.get("org") or "", where)
    asset = _label(lowered.get("asset") or lowered.get("name") or "", where)
    # (0 or false is a target given wrongly, not none given: refused by _target_text)
    key = next((k for k in _TARGET_KEYS if lowered.get(k) not in (None, "")
                and (not hostname or addresses.get(k) is not None)), None)
    if key is not None and lowered.get("targets") not in (None, "", []):
        raise TargetError(f"{where}: {key!r} and 'targets' both given: give one")
    if key is None:
        targets_list = lowered.get("targets")
        if isinstance(targets_list, list) and targets_list:
            return [TargetSpec(_target_text(t, f"{where}: targets[{i}]"), organization, asset,
                               f"{where}: targets[{i}]")
                    for i, t in enumerate(targets_list)]
        if isinstance(targets_list, str) and targets_list.strip():
            # a CSV column "targets", or YAML's "targets: 10.0.0.1": one target given
            raise TargetError(f"{where}: 'targets' must be a list of targets; for one "
                              "target use 'target'")
        if targets_list is not None and not isinstance(targets_list, list):
            raise TargetError(f"{where}: 'targets' must be a list of targets")
        present = [k for k in _TARGET_KEYS if k in lowered]
        if present:  # the column is there, this row left it empty
            raise TargetError(f"{where}: empty {present[0]!r}: give the target")
        raise TargetError(f"{where}: no target column (one of {', '.join(_TARGET_KEYS)})")
    return [TargetSpec(_target_text(lowered[key], f"{where}: {key}"), organization, asset,
                       where, hostname)]


def _address_form(value: object) -> object | None:
    """An inventory cell as the addresses it names, comparable (a block folded, a range as
    its span), None for a name: a range beside an address was taken for a host name (a
    review)."""
    network = _as_network(value)
    if network is not None or not isinstance(value, str):
        return network
    if "-" not in value:
        return None
    try:
        return _span(TargetSpec(value))
    except TargetError:  # a range written wrongly: an address all the same, refused later
        return ("bad range", value.strip())


def _row_hostname(lowered: dict[str, object], addresses: dict[str, object | None],
                  where: str) -> str:
    """The host name a row gives beside an address (its non-address target cells), or ""
    when it gives no address, or no name. Two different names are refused, as two
    addresses are; a name that is not a host name is refused (it would be stored as one)."""
    if not any(n is not None for n in addresses.values()):
        return ""
    names = {k: lowered[k] for k, n in addresses.items() if n is None}
    if not names:
        return ""
    texts = {k: _target_text(v, f"{where}: {k}").rstrip(".").lower() for k, v in names.items()}
    if len(set(texts.values())) > 1:
        keys = " and ".join(repr(k) for k in texts)
        raise TargetError(f"{where}: {keys} name different hosts: give one")
    key, name = next(iter(texts.items()))
    address = next(a for a in addresses.values() if a is not None)
    if not isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network) or (
            address.num_addresses > 1):
        raise TargetError(f"{where}: {key!r} beside a block or range names no one host: give "
                          "one address, or leave the name out")
    if not looks_like_hostname(name):
        raise TargetError(f"{where}: {key}: not a host name: "
                          f"{_one_line(_short(name))!r}")
    return name


def _own_organization_dropped(org: object, entry: dict[object, object], where: str
                              ) -> dict[object, object]:
    """The entry of a YAML mapping listed under organization ``org``, without its own
    organization keys (any spelling): one naming another organization is refused, as a
    CSV row whose 'organization' and 'org' disagree is (it was stored under its own, and
    --only-org of the one it was listed under did not find it: a review); an empty one
    no longer blanks the one it is listed under."""
    kept: dict[object, object] = {}
    for key, value in entry.items():
        name = str(key).strip().lower() if key is not None else ""
        if name not in ("organization", "org"):
            kept[key] = value
        elif (value not in (None, "") and _is_scalar(value)
                and str(value).strip().casefold() != str(org).strip().casefold()):
            raise TargetError(f"{where}: listed under organization "
                              f"{_one_line(_short(str(org)))!r} but its {str(key)!r} says "
                              f"{_one_line(_short(str(value)))!r}: give one")
    return kept


def _as_network(value: object) -> IPNetwork | None:
    """An inventory cell as the address or block it names (folded), None for a name."""
    if not isinstance(value, str):
        return None
    try:
        return fold_mapped(ipaddress.ip_network(value.strip().strip("[]"), strict=False))
    except ValueError:
        return None


def _label(value: object, where: str) -> str:
    if not _is_scalar(value):
        raise TargetError(f"{where}: organization and asset must be text")
    return label_text(str(value), where)


def label_text(text: str, where: str) -> str:
    """An organization or asset name (an inventory's, ``--org``'s, ``--asset``'s) as
    stored: stripped, its line breaks and tabs (a spreadsheet cell's, quoted in a CSV) one
    space each run, so ``report --org``, whose filters refuse control characters, can
    name it. TargetError ("WHERE: ...") when it is too long or holds another control
    character: an inventory's "Ex\\x00ample" was stored, and no report could name it."""
    text = fold_controls(text)
    if len(text) > MAX_LABEL_CHARS:
        raise TargetError(f"{where}: label longer than {MAX_LABEL_CHARS} characters")
    if any(is_control(ch) for ch in text):
        raise TargetError(f"{where}: label contains control characters")
    return text


class _Typed(str):
    """A plain YAML scalar that YAML 1.1 reads as another type, kept as written: a label
    is its text ("asset: 010" was stored "8", "1.10" "1.1", "12:30" "750", "0x1F" "31",
    and "off" or "0" blanked the label; a review), a target is told to quote it. What
    YAML would have read it as is ``kind``, as a target's error says it."""

    kind = "number"


class _TrueFalse(_Typed):
    kind = "true/false"


class _Date(_Typed):
    kind = "date; quote it"


def _not_text(value: object, where: str) -> TargetError:
    """The error for a target YAML read as something else than text: a number (an
    unquoted ``2130706437`` or ``10.0``) is told to be quoted."""
    if isinstance(value, _Typed) and value.kind == "number":
        return TargetError(f"{where}: must be text (an address, range, CIDR or hostname), "
                           "not a number; quote it")
    kind = value.kind if isinstance(value, _Typed) else {
        "dict": "mapping", "NoneType": "null"}.get(type(value).__name__,
                                                   type(value).__name__)
    return TargetError(f"{where}: a target must be text, not a {kind}")


def _target_text(value: object, where: str) -> str:
    if not isinstance(value, str) or isinstance(value, _Typed):
        raise _not_text(value, where)
    text = str(value).strip()
    if len(text) > MAX_TARGET_CHARS:
        raise TargetError(f"{where}: target longer than {MAX_TARGET_CHARS} characters")
    return text


# Inventories are read whole: bound the file and the entries before anything else.
MAX_INVENTORY_BYTES = 64 * 1024 * 1024
MAX_INVENTORY_ENTRIES = 1_000_000
# A label (organization, asset) longer than this is not a label; a target text likewise.
MAX_LABEL_CHARS = 256
MAX_TARGET_CHARS = 512


def _is_scalar(value: object) -> bool:
    """Labels may be numbers in YAML (``asset: 42``, kept as written); targets must be
    text."""
    return isinstance(value, str)


def yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """(line, problem) of a PyYAML error, line 0 when it has no mark: the first line of
    its text is only the context ("while parsing a flow sequence"). Inventories and the
    alerts and schedule files report it alike."""
    mark = exc.problem_mark or exc.context_mark
    return (mark.line + 1 if mark is not None else 0,
            exc.problem or exc.context or "invalid YAML")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The problem and its line ("line 4: expected ',' or ']'")."""
    if isinstance(exc, yaml.MarkedYAMLError):
        line, problem = yaml_problem(exc)
        return f"line {line}: {problem}" if line else problem
    return str(exc).splitlines()[0] if str(exc) else "invalid YAML"


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: the plain one
    keeps the last without a word, so a second ``Example Corp:`` block silently dropped
    the first block's targets (a review, 2026-12-06)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False
                          ) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: flattened by the base class, may be overridden
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the constructor below says so
            if repeated:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"{str(key)[:80]!r} given twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_as_written(self, node: yaml.ScalarNode) -> _Typed:
        kinds: dict[str, type[_Typed]] = {"tag:yaml.org,2002:bool": _TrueFalse,
                                          "tag:yaml.org,2002:timestamp": _Date}
        return kinds.get(node.tag, _Typed)(str(self.construct_scalar(node)))


for _tag in ("int", "float", "bool", "timestamp"):
    _UniqueKeys.add_constructor(f"tag:yaml.org,2002:{_tag}", _UniqueKeys.construct_as_written)


def _check_count(specs: list[TargetSpec], file: Path) -> None:
    if len(specs) > MAX_INVENTORY_ENTRIES:
        raise TargetError(f"inventory {str(file)!r} lists more than "
                          f"{MAX_INVENTORY_ENTRIES:,} targets: split it")


def read_inventory(path: str | os.PathLike[str]) -> list[TargetSpec]:
    """Read a CSV (header with target, organization, asset) or YAML inventory.

    YAML: a list of mappings ``{target|targets, organization, asset}``, or a
    mapping ``organization -> list of targets or of such mappings``.
    """
    file = Path(path)
    try:
        # bounded whatever the path names: a pipe's or a device's size reads 0, and
        # `--inventory /dev/zero` grew the scan until the kernel killed it (a review)
        raw = read_bounded(file, MAX_INVENTORY_BYTES)
        # utf-8-sig: Excel's "CSV UTF-8" starts the file with a BOM, which made the
        # first header 'target' read as '\ufefftarget'
        text = raw.decode("utf-8-sig")
    except FileReadError as exc:
        hint = ": split it" if exc.kind == "too large" else ""
        raise TargetError(describe(exc, f"inventory {str(file)!r}") + hint) from None
    except UnicodeDecodeError:
        raise TargetError(f"inventory {str(file)!r} is not UTF-8 text") from None
    specs: list[TargetSpec] = []
    name = _one_line(file.name)  # error lines stay one line, whatever the file is called
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            raise TargetError(f"inventory {str(file)!r} is not valid YAML: "
                              f"{_yaml_problem(exc)}") from None
        except ValueError:  # a value an explicit tag gave that PyYAML cannot convert
            raise TargetError(f"inventory {str(file)!r}: a value YAML cannot read") from None
        except RecursionError:
            raise TargetError(f"inventory {str(file)!r}: YAML nested too deeply") from None
        if isinstance(data, dict) and "targets" in data:
            # one {organization, asset, targets} entry, as inside a list (only its list
            # was read: the organization and any organization beside it were dropped; a
            # review); beside other organizations' names, refused
            others = [k for k in data if str(k).strip().lower() not in INVENTORY_KEYS]
            if others:
                raise TargetError(
                    f"{name}: 'targets' beside organization "
                    f"{_one_line(_short(str(others[0])))!r}: give one mapping of "
                    "organization -> targets, or one {organization, asset, targets} entry")
            if not isinstance(data["targets"], list):
                raise TargetError(f"{name}: 'targets' must be a list of targets")
            # alone: the list of entries itself (mappings with their own labels allowed)
            data = data["targets"] if len(data) == 1 else [data]
        if isinstance(data, dict):
            for org, entries in data.items():
                if org is None or (isinstance(org, str) and not org.strip()):
                    # (its mapped entries were stored with no organization, its plain
                    # ones refused: a review)
                    raise TargetError(f"{name}: an organization with no name (a null or "
                                      "empty key): name it, or list its targets without one")
                if isinstance(entries, str | dict):
                    entries = [entries]  # "Org: 127.0.0.1": one target, not its characters
                elif entries is None:
                    entries = []
                elif not isinstance(entries, list):
                    raise TargetError(f"{name}: {_one_line(_short(str(org)))}: expected a list "
                                      "of targets")
                for i, entry in enumerate(entries):
                    where = f"{name}: {_one_line(_short(str(org)))}[{i}]"
                    if isinstance(entry, dict):
                        row: dict[str, object] = {"organization": org}
                        row.update({str(k): v for k, v in
                                    _own_organization_dropped(org, entry, where).items()
                                    if k is not None})
                        specs.extend(_row_spec(row, where))
                    elif isinstance(entry, str):
                        specs.append(TargetSpec(_target_text(entry, where), _label(org, where),
                                                where=where))
                    else:
                        raise TargetError(f"{where} is not a target")
                    _check_count(specs, file)
        elif isinstance(data, list):
            for i, entry in enumerate(data):
                if isinstance(entry, dict):
                    specs.extend(_row_spec(entry, f"{name}: entry {i + 1}"))
                elif isinstance(entry, str):
                    specs.append(TargetSpec(_target_text(entry, f"{name}: entry {i + 1}"),
                                            where=f"{name}: entry {i + 1}"))
                else:
                    raise TargetError(f"{name}: entry {i + 1} is not a target")
                _check_count(specs, file)
        else:
            raise TargetError(f"inventory {str(file)!r}: expected a list or a mapping")
    else:
        specs = _read_csv(text, file, name)
    if not specs:
        raise TargetError(f"inventory {str(file)!r} lists no targets")
    return specs


def _csv_comments_blanked(text: str) -> str:
    """``text`` with its comment lines made blank: a line that starts with '#' outside a
    quoted field. Blank, not removed, so the reader's line numbers stay the file's. The
    quote state follows the csv module's rules (a field is quoted when its first
    character is '"'; '""' inside it is a quote), so a continuation line of a quoted
    field is data even when it starts with '#', and '5" disk' opens nothing."""
    out: list[str] = []
    quoted = False
    # every line ending the csv module reads as one (a file saved with CR alone read as
    # one line, its first a comment: "is empty"; a review), each kept as it was
    pieces = re.split(r"(\r\n|\r|\n)", text)
    for line, ending in zip(pieces[::2], [*pieces[1::2], ""], strict=True):
        if not quoted and line.startswith("#"):
            # (its quotes open nothing: it is no field) Its "\n" after a line ended by
            # "\r" alone would read as one "\r\n" with it: one line less (a property test)
            out.append("\r\n" if ending == "\n" and out and out[-1].endswith("\r")
                       else ending)
            continue
        out.append(line + ending)
        if '"' in line:
            quoted = _still_quoted(line, quoted)
    return "".join(out)


def _still_quoted(line: str, quoted: bool) -> bool:
    """Whether a quoted field is still open at the end of ``line``, given ``quoted`` at
    its start."""
    at_field_start = not quoted
    i = 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                if line[i + 1:i + 2] == '"':
                    i += 1  # an escaped quote
                else:
                    quoted = False
        elif ch == '"' and at_field_start:
            quoted = True
        at_field_start = not quoted and ch == ","
        i += 1
    return quoted


def _read_csv(text: str, file: Path, name: str) -> list[TargetSpec]:
    """A CSV inventory parsed whole (RFC 4180: a quoted field may hold commas and line
    breaks), never line by line: that cut a quoted line break out of an organization and
    accepted an unterminated quote. A repeated column, a row with more filled fields than
    the header and an unknown column are refused: each silently lost a value before. A
    blank column (a trailing comma, as spreadsheets write) holds nothing and is ignored,
    in the header and in the rows."""
    reader = csv.reader(io.StringIO(_csv_comments_blanked(text), newline=""), strict=True)
    specs: list[TargetSpec] = []
    header: list[str] = []
    try:
        for fields in reader:
            if not fields:
                continue  # a blank or comment line (blanked, so line numbers hold)
            if not header:
                header = fields
                if not any(column.strip().lower() in INVENTORY_KEYS for column in header):
                    # '127.0.0.5' on the first line: data, no header (it was taken as the
                    # header, and the file then "listed no targets")
                    raise TargetError(f"{name}: line {reader.line_num}: no header line naming "
                                      f"a target column ({', '.join(_TARGET_KEYS)}; first "
                                      f"line: {_one_line(_short(','.join(fields)))!r})")
                seen: set[str] = set()
                for column in header:
                    key = column.strip().lower()
                    if not key:
                        continue  # a blank column: ignored, as its values
                    if key in seen:
                        raise TargetError(f"{name}: line {reader.line_num}: column "
                                          f"{_one_line(_short(column))!r} appears twice in "
                                          "the header")
                    if key not in INVENTORY_KEYS:  # said on the header's line, not row 2's
                        raise TargetError(f"{name}: line {reader.line_num}: unknown column "
                                          f"{_one_line(_short(column))!r} (known: "
                                          f"{', '.join(INVENTORY_KEYS)})")
                    seen.add(key)
                continue
            where = f"{name}: line {reader.line_num}"
            if any(field.strip() for field in fields[len(header):]):
                raise TargetError(f"{where}: more fields than the header's {len(header)}")
            row: dict[str, object] = {column: field for column, field
                                      in zip(header, fields, strict=False) if column.strip()}
            specs.extend(_row_spec(row, where))
            _check_count(specs, file)
    except csv.Error as exc:
        raise TargetError(f"inventory {str(file)!r} is not valid CSV: line "
                          f"{reader.line_num}: {exc}") from None
    if not header:
        raise TargetError(f"inventory {str(file)!r} is empty")
    return specs


def scope_allow_items(text: str) -> list[str]:
    """The CIDR blocks of a PORTWATCH_SCOPE_ALLOW value, each checked (TargetError, one
    line). A value that is set but holds none (' , ', what a template renders from an
    empty list) is refused: dropping its blank items left no fence at all, so every
    target was allowed."""
    items = [a.strip() for a in text.split(",") if a.strip()]
    if text and not items:
        raise TargetError(f"{SCOPE_ALLOW_ENV}={_one_line(_short(text))!r} holds no CIDR "
                          "block: list the networks that may be scanned, or unset it")
    for item in items:
        _net(item, "allowed network")
    return items


# -- scope ------------------------------------------------------------------------------


def file_paths(paths: str | Sequence[str] | None) -> tuple[str, ...]:
    """One path, several (an option given again), or none, as a tuple; a file named
    twice is read once."""
    if not paths:
        return ()
    return (paths,) if isinstance(paths, str) else tuple(dict.fromkeys(paths))


def _exclusions(path: str) -> list[str]:
    """The addresses and blocks an exclude file lists (comments and blank lines out)."""
    try:
        raw = read_bounded(path, MAX_INVENTORY_BYTES)
    except FileReadError as exc:
        raise TargetError(describe(exc, f"exclude file {path!r}")) from None
    try:
        lines = raw.decode("utf-8-sig").splitlines()  # a BOM is no exclusion
    except UnicodeDecodeError:
        raise TargetError(f"exclude file {path!r} is not UTF-8 text") from None
    return [ln.split("#", 1)[0].strip() for ln in lines]


@dataclass(frozen=True, slots=True)
class Scope:
    """What may be scanned: exclusions always win; an allow-list, when given, is a fence."""

    exclude: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    allow_large: bool = False
    # (version -> merged, sorted ranges) of each: built once, searched per address
    _excluded: dict[int, _Ranges] = field(init=False, repr=False, compare=False)
    _allowed: dict[int, _Ranges] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_excluded", {v: _ranges(self.exclude, v) for v in (4, 6)})
        object.__setattr__(self, "_allowed", {v: _ranges(self.allow, v) for v in (4, 6)})

    @classmethod
    def build(cls, exclude: Iterable[str] = (), *,
              exclude_file: str | Sequence[str] | None = None,
              allow: Iterable[str] | None = None, allow_large: bool = False) -> Scope:
        """``exclude_file``: one file or several (``--exclude-file`` repeated: every
        file's exclusions hold; before, only the last one's did)."""
        entries = list(exclude)
        for path in file_paths(exclude_file):
            entries += _exclusions(path)
        allow_list = (list(allow) if allow is not None
                      else scope_allow_items(os.environ.get(SCOPE_ALLOW_ENV, "")))
        # An exclusion also excludes the IPv4 its mapped/compatible addresses reach; an
        # allow-list is a fence, kept as narrow as written (only a network made wholly of
        # such addresses is folded: _net)
        return cls(_with_v4_images(_net(e, "exclusion") for e in entries if e),
                   tuple(_net(a, "allowed network") for a in allow_list), allow_large)

    def permits(self, ip: str) -> bool:
        # The IPv4 an IPv4-mapped/compatible IPv6 address reaches is what is judged:
        # ``--exclude 127.0.0.0/8`` must also exclude ``::ffff:127.0.0.1``.
        addr = canonical_address(ip)
        if _is_this_host(addr):
            return False  # "this host" (0.0.0.0/8, ::): a connect reaches the scanner itself
        if _inside(self._excluded[addr.version], int(addr)):
            return False
        return self._fenced_in(addr)

    def is_allowed(self, ip: str) -> bool:
        """Inside the allow-list fence (always true without one)."""
        return not self.allow or self._fenced_in(canonical_address(ip))

    def _fenced_in(self, addr: IPAddress) -> bool:
        return not self.allow or _inside(self._allowed[addr.version], int(addr))

    def excludes_span(self, version: int, lo: int, hi: int) -> bool:
        """Every address of [lo, hi] is excluded, and inside the fence (so none of them
        would be refused as outside it): the block need not be expanded at all."""
        return (_covers(self._excluded[version], lo, hi)
                and (not self.allow or _covers(self._allowed[version], lo, hi)))


_Ranges = tuple[list[int], list[int]]


def _inside(ranges: _Ranges, value: int) -> bool:
    """Is ``value`` in one of the merged ranges? A binary search: a scan of a /16 with
    an exclude file of 4,096 lines spent 84 s testing every address against every line
    before its first packet (a review)."""
    starts, ends = ranges
    at = bisect.bisect_right(starts, value) - 1
    return at >= 0 and value <= ends[at]


def _covers(ranges: _Ranges, lo: int, hi: int) -> bool:
    """Is [lo, hi] wholly inside one of the merged ranges (merged: never across two)?"""
    starts, ends = ranges
    at = bisect.bisect_right(starts, lo) - 1
    return at >= 0 and hi <= ends[at]


def _ranges(nets: tuple[IPNetwork, ...], version: int) -> _Ranges:
    """The networks of one IP version merged into sorted, disjoint [start, end] ranges."""
    return _merged((int(n.network_address), int(n.broadcast_address))
                   for n in nets if n.version == version)


def _merged(pairs: Iterable[tuple[int, int]]) -> _Ranges:
    """[start, end] pairs merged into sorted, disjoint ranges (overlapping or adjacent:
    one range)."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(pairs):
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)  # overlapping or adjacent: one range
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _net(text: str, what: str) -> IPNetwork:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise TargetError(f"bad {what} {_one_line(_short(text))!r}: expected an address or "
                          "CIDR block") from None
    return fold_mapped(net)


# RFC 1122 3.2.1.3 "this network": this host, never a target; and below 1.0.0.0 no
# ::a.b.c.d is an IPv4-compatible address (records.ipv4_inside)
_THIS_NETWORK_V4 = ipaddress.IPv4Network("0.0.0.0/8")
_COMPATIBLE_BLOCK = ipaddress.IPv6Network("::/96")


def v4_images(net: IPNetwork) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks reached by the IPv4-compatible addresses of an exclusion that
    ``fold_mapped`` cannot fold: a block inside ::/96 that starts below ::1.0.0.0 (::/96,
    ::/100). ``--exclude ::/96`` excludes 1.0.0.0 up, as ``::1.2.3.4`` is 1.2.3.4 to every
    check. A wider block (::/0 "no IPv6", ::/8 of a bogon list) means IPv6: none."""
    if not isinstance(net, ipaddress.IPv6Network) or not net.subnet_of(_COMPATIBLE_BLOCK):
        return []
    image = ipaddress.IPv4Network((int(net.network_address) & 0xFFFF_FFFF,
                                   net.prefixlen - 96))
    if not image.overlaps(_THIS_NETWORK_V4):
        return [image]
    return ([] if image.subnet_of(_THIS_NETWORK_V4)
            else list(image.address_exclude(_THIS_NETWORK_V4)))


def _with_v4_images(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """``nets`` (each folded) and the IPv4 networks they reach besides (see v4_images)."""
    return tuple(n for net in nets for n in (net, *v4_images(net)))


def _is_this_host(addr: IPAddress) -> bool:
    return addr in _THIS_NETWORK_V4 or addr.is_unspecified


def is_this_host(ip: str) -> bool:
    """0.0.0.0/8 or :: (in any spelling): "this host", which no scan targets."""
    return _is_this_host(canonical_address(ip))


def _refuse_zone(text: str) -> None:
    """An IPv6 address with a zone (``::1%lo``, ``[fe80::1%eth0]``) is refused: the
    engines cannot reach it by that text, the reports never match it, and it is no other
    address than its bare form to the scope and the dedup."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if "%" not in bare:
        return
    try:
        addr = ipaddress.ip_address(bare)
    except ValueError:
        return
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise TargetError(f"target {_short(text)!r}: an address with a zone "
                          f"(%{_short(addr.scope_id)}) is not supported: give it without")


# A later target on an address already listed is dropped with one warning line each, at
# most this many lines; then one line counts the rest.
MAX_DUPLICATE_WARNINGS = 10


def _labels(target: Target, other: Target) -> str:
    """``localhost (asset web-2)``: what the user wrote, and the labels that differ."""
    parts = [f"{name} {_one_line(_short(value))}" for name, value, theirs in (
        ("organization", target.organization, other.organization),
        ("asset", target.asset, other.asset),
        # (a name's own address carries the name: said only when it is another one)
        ("hostname", "" if target.hostname == target.target.rstrip(".").lower()
         else target.hostname, other.hostname)) if value and value != theirs]
    text = _one_line(_short(target.target))
    return f"{text} ({', '.join(parts)})" if parts else text


def _labelled(target: Target) -> tuple[str, str, str, str]:
    """What a duplicate of an address must repeat to be dropped without a word: how it
    was written and its labels (an inventory's host name among them: a second name of
    one address was dropped silently; a review)."""
    return (target.target, target.organization, target.asset, target.hostname)


def _duplicate_warning(dropped: Target, kept: Target) -> str:
    return (f"{_labels(dropped, kept)} is {dropped.ip}, already scanned as "
            f"{_labels(kept, dropped)}: scanned once, under the first")


def _refuse_a_block_outside(spec: TargetSpec, scope: Scope) -> None:
    """A CIDR block none of which is inside the allow-list fence is refused as its first
    address would be, before it is expanded (a /12 took 9 s and 300 MB to be refused,
    a /8 would take 16 times that). A block the fence covers in part is left to the
    address-by-address check."""
    # (::ffff:10.0.0.0/104 is judged as 10.0.0.0/8, as each address; IPv4 inside that
    # fold_mapped cannot fold is judged address by address)
    net = _block_of(spec) if scope.allow else None
    if net is None:
        return
    fence = [n for n in scope.allow if n.version == net.version]
    if not any(net.overlaps(n) for n in fence):
        raise _outside(str(net.network_address), spec, scope)


def _block_of(spec: TargetSpec) -> IPNetwork | None:
    """The CIDR block ``spec`` names, as its addresses are judged (mapped IPv6 folded to
    IPv4); None for anything else, or a block whose IPv4 fold_mapped cannot fold."""
    text = spec.text.strip()
    if "/" not in text:
        return None
    try:
        net = fold_mapped(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None  # expand says why
    if net.version == 6 and _embeds_ipv4(int(net.network_address),
                                         int(net.broadcast_address)):
        return None
    return net


# From this many addresses in all, resolve_targets says what expanding them costs before
# it starts (measured: ~17 s and ~250 MB a million; a /8 took 5 minutes in silence)
SAY_EXPANSION_FROM = 1_000_000


def _outside(address: str, spec: TargetSpec, scope: Scope) -> TargetError:
    return TargetError(f"{address} ({spec.text}) is outside the allowed scope "
                       f"{', '.join(map(str, scope.allow))} ({SCOPE_ALLOW_ENV})")


def _first_of_each(specs: Sequence[TargetSpec]) -> list[TargetSpec]:
    """``specs`` without the identical repeats (same text and labels), in order."""
    written: set[tuple[str, str, str, str]] = set()
    out = []
    for spec in specs:
        key = (spec.text.strip(), spec.organization, spec.asset, spec.hostname)
        if key not in written:
            written.add(key)
            out.append(spec)
    return out


def resolve_targets(specs: Sequence[TargetSpec], scope: Scope | None = None) -> list[Target]:
    """Expand every spec, apply the scope, de-duplicate (first label wins).

    Raises TargetError when a spec is bad or when the scope leaves nothing to scan.
    Addresses outside an allow-list are refused loudly, never silently skipped. A later
    target on an address already listed under other labels (target, organization,
    asset) is scanned once, under the first, and said in a warning line (at most
    ``MAX_DUPLICATE_WARNINGS``, then one line counting the rest); an identical repeat
    is dropped silently.
    """
    scope = scope or Scope.build()
    check_total(specs, allow_large=scope.allow_large)
    # An identical repeat (text and labels) is dropped before anything is expanded or
    # resolved: 70,000 lines of one name, which the ceiling counts once, were resolved
    # 70,000 times (a review)
    specs = _first_of_each(specs)
    spans = [_span(s) for s in specs]
    # Blocks and ranges excluded whole: nothing of them is expanded (a /8 under --exclude
    # of itself took 5 minutes and 4 GB to say "nothing to scan": a review)
    skipped = {i for i, span in enumerate(spans)
               if span is not None and _judged_whole(span) and scope.excludes_span(*span)}
    # A block or range named again (a shared inventory lists it under each organization)
    # is expanded once: the ceiling counts it once (check_total), and 20 repeats of a /16
    # were expanded 20 times (a review)
    seen: set[tuple[int, int, int]] = set()
    repeats: set[int] = set()
    for i, span in enumerate(spans):
        if span is not None and i not in skipped:
            (repeats.add(i) if span in seen else seen.add(span))
    expanding = sum(planned_count(s) for i, s in enumerate(specs)
                    if i not in skipped and i not in repeats)
    # and blocks that overlap without repeating are bounded too (hostile input: many
    # ranges over the same addresses)
    limit = HARD_MAX_ADDRESSES if scope.allow_large else 4 * MAX_ADDRESSES
    if expanding > limit:
        raise TargetError(f"the targets name {expanding:,} addresses counting their overlaps, "
                          f"more than {limit:,}: list each address once")
    if expanding >= SAY_EXPANSION_FROM:
        log.warning("expanding %s target addresses before anything is sent (about 17 s and "
                    "250 MB a million)", f"{expanding:,}")
    out: dict[str, Target] = {}
    dropped: list[tuple[Target, Target]] = []  # the first few, for the warning lines
    dropped_count = 0
    excluded = 0
    this_host = 0  # 0.0.0.0/8 and :: among the excluded (never targets)
    total = 0
    for i, spec in enumerate(specs):
        with _said_where(spec):
            _refuse_a_block_outside(spec, scope)
            span = spans[i]
            if i in skipped or i in repeats:
                assert span is not None
                count = span[2] - span[1] + 1
                total += count
                if i in skipped:
                    excluded += count
                    continue
                # each of its addresses as if expanded: dropped, said if its labels differ
                # (looked up by its text: no Target is built but for a warning line)
                labels = (spec.text.strip(), spec.organization, spec.asset)
                for ip in _addresses_of(span):
                    kept = out.get(ip)
                    if kept is not None and (kept.target, kept.organization,
                                             kept.asset) != labels:
                        dropped_count += 1
                        if len(dropped) < MAX_DUPLICATE_WARNINGS:
                            dropped.append((Target(ip=ip, target=labels[0],
                                                   organization=spec.organization,
                                                   asset=spec.asset), kept))
                continue
            for target in expand(spec, allow_large=scope.allow_large):
                total += 1
                if not scope.is_allowed(target.ip):
                    raise _outside(target.ip, spec, scope)
                if not scope.permits(target.ip):
                    excluded += 1
                    this_host += is_this_host(target.ip)
                    continue
                kept = out.setdefault(target.ip, target)
                if kept is not target and _labelled(kept) != _labelled(target):
                    dropped_count += 1
                    if len(dropped) < MAX_DUPLICATE_WARNINGS:
                        dropped.append((target, kept))
    if len(out) > MAX_ADDRESSES and not scope.allow_large:
        raise TargetError(f"{len(out):,} addresses in all, more than {MAX_ADDRESSES:,}: "
                          f"{ALLOW_LARGE_HINT}")
    if not out and this_host == total:
        raise TargetError("nothing to scan: 0.0.0.0/8 and :: mean this host, never a target "
                          "(a connect to them reaches the scanner itself): scan 127.0.0.1 or "
                          "::1 instead")
    if not out:
        raise TargetError(f"nothing to scan: the exclusions cover all {total:,} target "
                          "addresses")
    for target, kept in dropped:
        log.warning("%s", _duplicate_warning(target, kept))
    if dropped_count > len(dropped):
        more = dropped_count - len(dropped)
        log.warning("... and %s more target%s resolving to an address already listed",
                    f"{more:,}", "" if more == 1 else "s")
    return list(out.values())
