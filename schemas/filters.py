"""The report filters' one shape: what ``--target`` (CLI, web, API, Grafana) matches.

Owns: the target predicate every report's SQL carries (``target_predicate(alias)``; a
test checks each of ``schemas/reports/*.sql`` and ``schemas/web/risk_history.sql``
contains it verbatim), and ``normalize_target``, which CLI and web run on the text first.

A target filter matches a row when any of these holds (text filters ignore case, in
any script: ``lowerUTF8``):

- it equals the target as written, the hostname, or the asset name;
- it equals the address;
- it is an IPv4 address prefix of 1-3 octets (``198.18``, ``198.18.0.``): the address
  starts with it, on an octet boundary (``127.0.0`` matches 127.0.0.9, never 127.0.1.1);
- it is an IPv6 prefix ending in ``:`` (``2001:db8:``) that is not itself an address
  (``::`` and ``fe80::`` are addresses: they match only themselves);
- it is a CIDR block (``198.18.0.0/15``, ``2001:db8::/32``) holding the address (text
  with a "/" whose first part is neither an address nor a mistyped one is a name: an
  asset may be ``web/1``).

The SQL guards every branch, so any text (a Grafana variable, say) is safe: an invalid
CIDR matches nothing instead of raising. ``normalize_target`` refuses it with a reason
before, so a user learns why.

Must not touch: anything of ours (schemas/ imports nothing); the network.
"""

from __future__ import annotations

import ipaddress
import unicodedata

# {a} is the relation alias; {{target:String}} the bound parameter.
TARGET_PREDICATE = """({{target:String}} = ''
       OR lowerUTF8({a}.target) = lowerUTF8({{target:String}})
       OR lowerUTF8({a}.hostname) = lowerUTF8({{target:String}})
       OR lowerUTF8({a}.asset) = lowerUTF8({{target:String}})
       OR {a}.ip = lowerUTF8({{target:String}})
       OR (empty(replaceRegexpAll({{target:String}}, '[0-9.]', ''))
           AND NOT isIPv4String({{target:String}})
           AND startsWith({a}.ip, concat({{target:String}},
                                          if(endsWith({{target:String}}, '.'), '', '.'))))
       OR (endsWith({{target:String}}, ':')
           AND empty(replaceRegexpAll(lowerUTF8({{target:String}}), '[0-9a-f:]', ''))
           AND NOT isIPv6String({{target:String}})
           AND startsWith({a}.ip, lowerUTF8({{target:String}})))
       OR (length(splitByChar('/', {{target:String}})) = 2
           AND ((isIPv4String(splitByChar('/', {{target:String}})[1])
                 AND toUInt8OrNull(splitByChar('/', {{target:String}})[2]) <= 32)
                OR (isIPv6String(splitByChar('/', {{target:String}})[1])
                    AND toUInt8OrNull(splitByChar('/', {{target:String}})[2]) <= 128))
           AND (isIPv4String({a}.ip) OR isIPv6String({a}.ip))
           AND isIPAddressInRange(
               if(isIPv4String({a}.ip) OR isIPv6String({a}.ip), {a}.ip, '::'),
               if((isIPv4String(splitByChar('/', {{target:String}})[1])
                   AND toUInt8OrNull(splitByChar('/', {{target:String}})[2]) <= 32)
                  OR (isIPv6String(splitByChar('/', {{target:String}})[1])
                      AND toUInt8OrNull(splitByChar('/', {{target:String}})[2]) <= 128),
                  {{target:String}}, '::/128'))))"""


def target_predicate(alias: str) -> str:
    """The target filter over relation ``alias`` (columns target, hostname, asset, ip)."""
    return TARGET_PREDICATE.format(a=alias)


def host_target_predicate(alias: str) -> str:
    """The target filter over the ports of relation ``alias`` (columns target, ip): as
    ``target_predicate``, but a hostname or asset name matches the host's names now (its
    latest scan's, as the Summary shows them), never a port's own: a port last seen before
    an inventory renamed its asset is found under the new name, as its host is, and not
    under the old one. The names are looked up as a set of hosts (latest_host_scans: one
    row per host, empty without a filter), so the read of ``alias`` is still filtered
    before any join (matching a joined row's names made --target pages 20-25 % slower: a
    review). A port whose host has no scan record yet (the sink's brief lag) matches by
    its address and target only."""
    names = ("OR lowerUTF8({a}.hostname) = lowerUTF8({{target:String}})\n"
             "       OR lowerUTF8({a}.asset) = lowerUTF8({{target:String}})\n")
    assert names in TARGET_PREDICATE
    hosts = ("OR ({a}.target, {a}.ip) IN (\n"
             "           SELECT target, ip FROM latest_host_scans\n"
             "           WHERE {{target:String}} != ''\n"
             "             AND (lowerUTF8(hostname) = lowerUTF8({{target:String}})\n"
             "                  OR lowerUTF8(asset) = lowerUTF8({{target:String}})))\n")
    return TARGET_PREDICATE.replace(names, hosts).format(a=alias)


# Reorder what a reader sees (Trojan Source): never in a filter value
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_control(ch: str) -> bool:
    """A character no filter value holds: a C0/C1 control, a line or paragraph separator,
    a bidi embedding, override or isolate, a lone surrogate (an argument's byte that is
    not UTF-8, as Python decodes it: the store cannot take it). Other characters Python
    calls unprintable are text a stored name holds: a no-break space pasted from a
    spreadsheet ("Acme\u00a0Corp"), the zero-width joiner of an emoji; refusing them
    made such an organization impossible to filter on (a review: its own drill-down
    links answered 400)."""
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS


def fold_controls(text: str) -> str:
    """``text`` stripped, then its tabs and line breaks inside (a spreadsheet cell's, an
    unquoted "$ORG") one space each run, when it holds a control character: how a label
    is stored (``producers.targets.label_text``) and how a filter that names one is read
    (``filter_text``). One function, so the two cannot drift (a filter folded before it
    stripped, and an edge tab folded away the double space a stored name kept: a
    review). Other control characters are left for the caller to refuse."""
    text = text.strip()
    if any(is_control(ch) for ch in text):
        text = " ".join(text.split())
    return text


def check_length(name: str, value: str, cap: int) -> None:
    """ValueError, one line, when ``value`` is longer than ``cap`` characters: what the
    CLI's filters and the web API say alike."""
    if len(value) > cap:
        raise ValueError(f"{name} is too long ({len(value)} characters; at most {cap})")


def filter_text(name: str, value: str, cap: int) -> str:
    """A filter value people type (a target, an organization), stripped, its tabs and
    line breaks folded: ValueError, one line, when longer than ``cap`` or holding other
    control characters. The CLI and the web API
    refuse alike (the CLI read such a value as "no rows", the API refused it)."""
    check_length(name, value, cap)
    # folded as a label is stored: `scan --org "$ORG"` took a tab the same
    # `report --org "$ORG"` refused (a review)
    text = fold_controls(value)
    if any(is_control(ch) for ch in text) or (not text and any(map(is_control, value))):
        # (a lone tab stripped to "", which is no filter: the whole estate)
        raise ValueError(f"{name} contains control characters")
    return text


def normalize_target(text: str) -> str:
    """The target filter as the SQL should receive it: stripped; an address and a CIDR
    block in their canonical forms (zeros compressed, host bits cleared). A value is a
    block when what comes before its "/" is an address; anything else with a "/" is a
    name (an asset ``web/1``, a target written as a URL path). ValueError, one line,
    for a malformed block."""
    value = text.strip()
    address, slash, _bits = value.partition("/")
    if not slash and is_ip_address(value):
        # an address as it is stored: '2001:db8:0::5' is '2001:db8::5' (it matched
        # nothing), and '::ffff:127.0.0.1' is 127.0.0.1 (stored folded, as the scope
        # and the alert rules judge it)
        from schemas.records import normalize_ip

        return normalize_ip(value)
    if not slash or not _looks_like_address(address):
        return value
    from schemas.records import fold_mapped

    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"target {value[:60]!r} is not a CIDR block (for example "
                         "198.18.0.0/15 or 2001:db8::/32)") from None
    # an IPv4-mapped block is the IPv4 block, as a mapped address is its IPv4 address (the
    # addresses are stored folded: '::ffff:127.0.0.0/104' matched nothing)
    return str(fold_mapped(network))


def _looks_like_address(text: str) -> bool:
    """An address, or what can only be a mistyped one (``10.0.0/8``, ``10.0.0.0 /8``,
    ``2001:db8:/32``): digits and dots, or hex digits and colons. A name has letters."""
    stripped = text.strip()
    return (is_ip_address(stripped) or bool(stripped) and (
        all(ch in "0123456789." for ch in stripped)
        or (":" in stripped and all(ch in "0123456789abcdefABCDEF:." for ch in stripped))))


def is_ip_address(text: str) -> bool:
    """An IPv4 or IPv6 address literal (no CIDR, no brackets, no zone: Python takes
    'fe80::1%eth0', which no report column holds)."""
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


__all__ = ["TARGET_PREDICATE", "is_ip_address", "normalize_target", "target_predicate"]
