"""Target parsing and scope (producers/targets.py): port specs, address expressions,
hostnames (``localhost`` and ``.invalid`` only: nothing leaves the machine),
inventories, exclusions and the PORTWATCH_SCOPE_ALLOW fence."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.targets import (
    MAX_ADDRESSES,
    SCOPE_ALLOW_ENV,
    Scope,
    TargetError,
    TargetSpec,
    expand,
    parse_ports,
    read_inventory,
    resolve_hostname,
    resolve_targets,
)
from schemas.records import PortRange, canonical_address

# -- ports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("22", [(22, 22)]),
        ("22,80,443", [(22, 22), (80, 80), (443, 443)]),
        ("443,22,80", [(22, 22), (80, 80), (443, 443)]),
        ("8000-8100", [(8000, 8100)]),
        ("1-10,5-20", [(1, 20)]),  # overlapping ranges merge
        ("1-10,11-20", [(1, 20)]),  # adjacent ranges merge
        ("22,22,22", [(22, 22)]),  # duplicates collapse
        ("-", [(1, 65535)]),
        ("all", [(1, 65535)]),
        ("ALL", [(1, 65535)]),
        ("*", [(1, 65535)]),
        (" 22 , 80 - 90 ", [(22, 22), (80, 90)]),  # whitespace tolerated
        ("1,65535", [(1, 1), (65535, 65535)]),
    ],
)
def test_parse_ports_gives_merged_sorted_ranges(spec: str, expected: list[tuple[int, int]]) -> None:
    # Given a port spec, when it is parsed
    ranges = parse_ports(spec)
    # Then it becomes the sorted, merged ranges it names
    assert ranges == tuple(PortRange(lo, hi) for lo, hi in expected)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty port spec"),
        ("   ", "empty port spec"),
        ("0", "ports are 1-65535"),
        ("65536", "ports are 1-65535"),
        ("1-70000", "ports are 1-65535"),
        ("90-80", "is backwards"),
        ("http", "is not a port or range"),
        ("22,,80", "is not a port or range"),
        ("1-2-3", "is not a port or range"),
        ("22;80", "is not a port or range"),
        ("8_0", "is not a port or range"),  # int() alone would read 80
        ("+22", "is not a port or range"),
        ("\uff12\uff12", "is not a port or range"),  # full-width digits
        ("U:53", "is not a port or range"),
    ],
)
def test_bad_port_spec_is_one_line_target_error(spec: str, message: str) -> None:
    # Given a malformed port spec, when it is parsed, then a one-line TargetError says why
    with pytest.raises(TargetError, match=message) as err:
        parse_ports(spec)
    assert "\n" not in str(err.value)


# -- addresses --------------------------------------------------------------------------


def ips(spec: str, **kw: bool) -> list[str]:
    return [t.ip for t in expand(TargetSpec(spec), **kw)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("::1", ["::1"]),
        ("[::1]", ["::1"]),
        ("0:0:0:0:0:0:0:1", ["::1"]),  # canonical text form
        ("127.0.0.1/32", ["127.0.0.1"]),
        ("127.0.0.0/31", ["127.0.0.0", "127.0.0.1"]),
        ("127.0.0.5/30", ["127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"]),  # not strict
        ("127.0.0.1-3", ["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        ("127.0.0.1-127.0.0.3", ["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        ("127.0.0.255-127.0.1.1", ["127.0.0.255", "127.0.1.0", "127.0.1.1"]),
        ("127.0.0.9-9", ["127.0.0.9"]),
        ("::1-::3", ["::1", "::2", "::3"]),
        ("::1/127", ["::", "::1"]),
    ],
)
def test_expand_names_every_address(spec: str, expected: list[str]) -> None:
    # Given an address expression, when expanded, then every address it names, in order
    assert ips(spec) == expected


def test_expand_keeps_what_the_user_wrote_and_the_labels() -> None:
    # Given a range with organization and asset labels
    spec = TargetSpec("127.0.0.1-2", organization="Example Corp", asset="web")
    # When it is expanded
    targets = expand(spec)
    # Then each address carries the expression and the labels
    assert [(t.ip, t.target, t.organization, t.asset, t.hostname) for t in targets] == [
        ("127.0.0.1", "127.0.0.1-2", "Example Corp", "web", ""),
        ("127.0.0.2", "127.0.0.1-2", "Example Corp", "web", ""),
    ]


def test_a_slash_16_is_allowed_but_one_address_more_is_not() -> None:
    # Given a /16 (the limit) and a /15 (twice the limit)
    # When expanded without --allow-large
    assert len(ips("127.0.0.0/16")) == MAX_ADDRESSES
    # Then the /15 is refused with a hint at the flag
    with pytest.raises(TargetError, match="--allow-large"):
        expand(TargetSpec("127.0.0.0/15"))


def test_a_dash_range_larger_than_a_slash_16_is_refused() -> None:
    # Given a dash range of 65,537 addresses, when expanded, then it is refused
    with pytest.raises(TargetError, match="65,537 addresses"):
        expand(TargetSpec("127.0.0.0-127.1.0.0"))


def test_allow_large_lifts_the_size_limit() -> None:
    # Given a /15 and --allow-large, when expanded, then all 131,072 addresses come out
    assert len(ips("127.0.0.0/15", allow_large=True)) == 2 * MAX_ADDRESSES


def test_even_allow_large_has_a_hard_ceiling_checked_before_expansion() -> None:
    # Given an IPv6 /64 and --allow-large: listing 2**64 addresses must never start
    with pytest.raises(TargetError, match="split it into smaller blocks"):
        expand(TargetSpec("::1/64"), allow_large=True)


def test_an_ipv6_block_larger_than_a_slash_16_is_refused_before_expansion() -> None:
    # Given a /64 (2**64 addresses): refusing must not try to list them first
    with pytest.raises(TargetError, match="--allow-large"):
        expand(TargetSpec("::1/64"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty target"),
        ("   ", "empty target"),
        ("127.0.0.1/33", "bad CIDR block"),
        ("127.0.0.1/abc", "bad CIDR block"),
        ("127.0.0.300", "not an address, CIDR block, range or hostname"),
        ("999.1.1.1", "not an address, CIDR block, range or hostname"),
        ("bad target!", "not an address, CIDR block, range or hostname"),
        # inet_aton's forms: the resolver read them as 127.0.0.1 (a review, 2026-12-06)
        ("0x7f.0.0.1", "not an address, CIDR block, range or hostname"),
        ("0x7f000001", "not an address, CIDR block, range or hostname"),
        ("-leading-dash", "not an address, CIDR block, range or hostname"),
        ("a" * 64 + ".example", "not an address, CIDR block, range or hostname"),
        ("127.0.0.5-1", "the end comes before the start"),
        ("127.0.0.1-300", "bad address range"),
        ("127.0.0.1-::1", "the end comes before the start"),  # mixed families
        ("::1-5", "bad address range"),  # last-octet shorthand is IPv4 only
    ],
)
def test_malformed_target_is_one_line_target_error(spec: str, message: str) -> None:
    # Given a malformed target, when expanded, then a one-line TargetError says why
    with pytest.raises(TargetError, match=message) as err:
        expand(TargetSpec(spec))
    assert "\n" not in str(err.value)


# -- hostnames (loopback names only) -----------------------------------------------------


def test_localhost_resolves_to_loopback_ipv4_first() -> None:
    # Given the name localhost, when resolved through the system resolver
    addresses = resolve_hostname("localhost")
    # Then it names loopback addresses, IPv4 before IPv6, without duplicates
    assert addresses[0] == "127.0.0.1"
    assert set(addresses) <= {"127.0.0.1", "::1"}
    assert len(addresses) == len(set(addresses))


def test_hostname_target_keeps_the_name() -> None:
    # Given a hostname target, when expanded
    targets = expand(TargetSpec("LocalHost", organization="Org"))
    # Then the addresses carry the normalized name and the label
    assert targets[0].ip == "127.0.0.1"
    assert {(t.hostname, t.target, t.organization) for t in targets} == {
        ("localhost", "LocalHost", "Org")}


@pytest.mark.parametrize("name", ["nosuchhost.invalid", "NOSUCHHOST.INVALID.", "invalid",
                                  "invalid.", "a-b.c.invalid"])
def test_invalid_names_fail_without_a_query(name: str) -> None:
    # Given a name under .invalid (RFC 6761: never resolves), when resolved or expanded
    # Then a TargetError says so (the check comes before any resolver call)
    with pytest.raises(TargetError, match="never resolve"):
        resolve_hostname(name)
    with pytest.raises(TargetError, match="never resolve"):
        expand(TargetSpec(name))


# -- inventory --------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_inventory_with_labels_and_comments(tmp_path: Path) -> None:
    # Given a CSV with a header (any case, any column order) and a comment line
    path = write(tmp_path, "assets.csv",
                 "# owned assets\n"
                 "Organization,Target,Asset\n"
                 "Example Corp,127.0.0.1,web\n"
                 "Other Org,127.0.0.0/31,\n")
    # When it is read
    specs = read_inventory(path)
    # Then each row is one spec with its labels
    assert specs == [TargetSpec("127.0.0.1", "Example Corp", "web"),
                     TargetSpec("127.0.0.0/31", "Other Org", "")]


@pytest.mark.parametrize("column", ["target", "address", "host", "hostname", "ip", "cidr"])
def test_csv_target_column_aliases(tmp_path: Path, column: str) -> None:
    # Given a CSV whose target column uses one of the accepted names, with org/name aliases
    path = write(tmp_path, "a.csv", f"{column},org,name\n127.0.0.1,Org,db\n")
    # When read, then the target and labels are found
    assert read_inventory(path) == [TargetSpec("127.0.0.1", "Org", "db")]


def test_yaml_inventory_list_of_mappings(tmp_path: Path) -> None:
    # Given a YAML list mixing mappings, a "targets" list and a bare string
    path = write(tmp_path, "assets.yaml", """
- {target: 127.0.0.1, organization: Example Corp, asset: web}
- organization: Other
  asset: lab
  targets: [127.0.0.2, "::1"]
- 127.0.0.3
""")
    # When read, then every target keeps its labels
    assert read_inventory(path) == [
        TargetSpec("127.0.0.1", "Example Corp", "web"),
        TargetSpec("127.0.0.2", "Other", "lab"),
        TargetSpec("::1", "Other", "lab"),
        TargetSpec("127.0.0.3", "", ""),
    ]


def test_yaml_inventory_mapping_by_organization(tmp_path: Path) -> None:
    # Given a YAML mapping organization -> targets, including a single scalar target
    path = write(tmp_path, "assets.yml", """
Example Corp:
  - 127.0.0.1
  - {target: 127.0.0.2, asset: db}
Solo Org: 127.0.0.3
""")
    # When read
    specs = read_inventory(path)
    # Then the organization labels every target (a scalar is one target, not its characters)
    assert specs == [
        TargetSpec("127.0.0.1", "Example Corp", ""),
        TargetSpec("127.0.0.2", "Example Corp", "db"),
        TargetSpec("127.0.0.3", "Solo Org", ""),
    ]


def test_yaml_entry_naming_another_organization_than_its_own_is_refused(
        tmp_path: Path) -> None:
    # Given an entry listed under Org A whose own organization says B (before: stored
    # under B, and --only-org "Org A" did not find it)
    path = write(tmp_path, "assets.yml", "Org A:\n  - {target: 127.0.0.1, organization: B}\n")
    # Then it is refused, as the CSV refuses 'organization' and 'org' that disagree
    with pytest.raises(TargetError, match=r"assets.yml: Org A\[0\]: listed under "
                                          r"organization 'Org A' but its 'organization' "
                                          r"says 'B': give one"):
        read_inventory(path)
    # (whatever the key's spelling)
    path = write(tmp_path, "caps.yml", "Org A:\n  - {target: 127.0.0.1, Organization: B}\n")
    with pytest.raises(TargetError, match="but its 'Organization' says 'B': give one"):
        read_inventory(path)
    # And one that repeats its organization, in another case, or leaves it empty, is
    # listed under the organization it is under (an empty one blanked it)
    path = write(tmp_path, "same.yml", "Org A:\n  - {target: 127.0.0.1, org: org a}\n"
                                       "  - {target: 127.0.0.2, organization: }\n")
    assert read_inventory(path) == [TargetSpec("127.0.0.1", "Org A", ""),
                                    TargetSpec("127.0.0.2", "Org A", "")]


def test_stdin_targets_may_start_with_a_bom() -> None:
    import io

    from portwatch.assembly import _expand_stdin

    # Given a target list piped from a file Windows saved with a BOM
    stream = io.StringIO("\ufeff127.0.0.1\n127.0.0.2 # db\n")
    # Then the BOM is no part of the first target (before: refused as '\ufeff127.0.0.1')
    assert _expand_stdin(["-"], stream) == ["127.0.0.1", "127.0.0.2"]


def test_yaml_inventory_under_a_targets_key(tmp_path: Path) -> None:
    path = write(tmp_path, "assets.yaml", "targets:\n  - {ip: 127.0.0.1, org: O}\n")
    assert read_inventory(path) == [TargetSpec("127.0.0.1", "O", "")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "", "is empty"),
        ("a.csv", "target,organization\n", "lists no targets"),
        ("a.csv", "organization,asset\nOrg,web\n", "line 2: no target column"),
        # the column is there and empty; one target under 'targets' (both said "no
        # target column" and "must be a list": a review)
        ("a.csv", "target,org\n,X\n", "line 2: empty 'target': give the target$"),
        ("a.csv", "targets,org\n127.0.0.1,X\n",
         "line 2: 'targets' must be a list of targets; for one target use 'target'$"),
        ("a.yaml", "[unclosed", "is not valid YAML"),
        # a key given twice dropped the first block's targets (a review, 2026-12-06)
        ("a.yaml", "Ex:\n  - 127.0.0.3\nEx:\n  - 127.0.0.4\n",
         "is not valid YAML: line 3: 'Ex' given twice$"),
        ("a.yaml", "- {target: 127.0.0.3, target: 127.0.0.5}\n",
         "is not valid YAML: line 1: 'target' given twice$"),
        ("a.yaml", "just a string", "expected a list or a mapping"),
        ("a.yaml", "[]", "lists no targets"),
        ("a.yaml", "- [42]\n", "entry 1 is not a target"),
        ("a.yaml", "- {organization: O}\n", "entry 1: no target column"),
        # an unquoted number is told to be quoted, not "not a int"
        ("a.yaml", "- target: 2130706437\n", r"^a\.yaml: entry 1: target: must be text \(an "
         r"address, range, CIDR or hostname\), not a number; quote it$"),
        ("a.yaml", "- {ip: 0}\n", "entry 1: ip: must be text .*not a number; quote it$"),
        ("a.yaml", "- {targets: [127.0.0.1, 10.5]}\n",
         r"entry 1: targets\[1\]: must be text .*not a number; quote it$"),
        ("a.yaml", "- 42\n", "entry 1: must be text .*not a number; quote it$"),
        ("a.yaml", "Org:\n  - 42\n", r"Org\[0\]: must be text .*not a number; quote it$"),
        ("a.yaml", "- {target: true}\n", "entry 1: target: a target must be text, not a "
         "true/false$"),
        # a control character in a label: stored, no `report --org` could name it again
        ("a.csv", "target,organization,asset\n127.0.0.1,Ex\x00ample,a1\n",
         r"^a\.csv: line 2: label contains control characters$"),
        ("a.yaml", "- {target: 127.0.0.1, asset: \"a\\x1b[31m\"}\n",
         r"^a\.yaml: entry 1: label contains control characters$"),
        ("a.yaml", "\"Ex\\u202eample\":\n  - 127.0.0.1\n",
         r"label contains control characters$"),
        # a CSV without its header: its first line is data, not column names
        ("a.csv", "127.0.0.5\n", r"^a\.csv: line 1: no header line naming a target column "
         r"\(target, address, host, hostname, ip, cidr; first line: '127\.0\.0\.5'\)$"),
        ("a.csv", "# assets\n127.0.0.5,Acme\n127.0.0.6,Acme\n",
         r"^a\.csv: line 2: no header line naming a target column .*first line: "
         r"'127\.0\.0\.5,Acme'\)$"),
    ],
)
def test_bad_inventory_is_one_line_target_error(tmp_path: Path, name: str, text: str,
                                                message: str) -> None:
    # Given a malformed inventory, when read, then a one-line TargetError says why
    path = write(tmp_path, name, text)
    with pytest.raises(TargetError, match=message) as err:
        read_inventory(path)
    assert "\n" not in str(err.value)


def test_missing_or_binary_inventory(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="cannot read inventory"):
        read_inventory(tmp_path / "missing.csv")
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"target\n\xff\xfe\x00\n")
    with pytest.raises(TargetError, match="is not UTF-8 text"):
        read_inventory(binary)


# -- scope ------------------------------------------------------------------------------


def test_scope_build_reads_exclusions_and_exclude_file(tmp_path: Path) -> None:
    # Given inline exclusions and a file with comments and blank lines
    exclude_file = write(tmp_path, "exclude.txt", "# never\n127.0.0.9\n\n::1 # v6 too\n")
    # When the scope is built with an explicit (empty) allow-list
    scope = Scope.build(["127.0.1.0/24"], exclude_file=str(exclude_file), allow=[])
    # Then every exclusion is a network and exclusions refuse their addresses
    assert [str(n) for n in scope.exclude] == ["127.0.1.0/24", "127.0.0.9/32", "::1/128"]
    assert scope.permits("127.0.0.1")
    assert not scope.permits("127.0.1.77")
    assert not scope.permits("127.0.0.9")
    assert not scope.permits("::1")


def test_scope_allow_list_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given PORTWATCH_SCOPE_ALLOW, when no allow-list is passed, then it is the fence
    monkeypatch.setenv(SCOPE_ALLOW_ENV, "127.0.0.0/30, ::1")
    scope = Scope.build()
    assert [str(n) for n in scope.allow] == ["127.0.0.0/30", "::1/128"]
    assert scope.permits("127.0.0.3")
    assert not scope.permits("127.0.0.4")


@pytest.mark.parametrize(("exclusion", "target"), [
    ("::/96", "::127.0.0.1"),  # an IPv4-compatible address inside the block
    ("::/96", "127.0.0.1"),  # the same address written as IPv4
    ("::/100", "::10.0.0.1"),  # part of the compatible range
    ("::ffff:0:0/96", "127.0.0.1"),  # the mapped block
])
def test_an_ipv6_exclusion_also_excludes_the_ipv4_its_mapped_addresses_reach(
        exclusion: str, target: str) -> None:
    # (a review of 2026-12-05: ::127.0.0.1 folded to 127.0.0.1 escaped --exclude ::/96)
    assert not Scope.build([exclusion], allow=[]).permits(target)


def test_ipv6_exclusions_leave_the_rest_of_ipv4_and_allow_lists_stay_narrow() -> None:
    # ::/96's compatible addresses start at ::1.0.0.0: 0.0.0.0/8 is not among them (it
    # is refused anyway: "this host")
    assert Scope.build(["::/96"], allow=[]).exclude[-1] == ipaddress.IPv4Network("1.0.0.0/8")
    assert Scope.build(["::/100"], allow=[]).permits("16.0.0.1")
    assert Scope.build(["2001:db8::/32"], allow=[]).permits("127.0.0.1")
    # and a wide IPv6 block (::/0 "no IPv6", ::/8 of a bogon list) means IPv6 only: it
    # holds the mapped block but names no IPv4 (a review of this session's first fix)
    for wide in ("::/0", "::/8", "::/64"):
        assert Scope.build([wide], allow=[]).permits("127.0.0.1"), wide
        assert not Scope.build([wide], allow=[]).permits("::1"), wide
    # and an allow-list is not widened: ::/96 allows no IPv4 target, ::1 not 0.0.0.1
    assert not Scope.build(allow=["::/96"]).permits("127.0.0.1")
    assert not Scope.build(allow=["::1/128"]).permits("0.0.0.1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exclude": ["not-a-net"]}, "bad exclusion 'not-a-net'"),
        ({"allow": ["127.0.0.0/40"]}, "bad allowed network '127.0.0.0/40'"),
        ({"exclude_file": "/nonexistent/portwatch-exclude"}, "cannot read exclude file"),
    ],
)
def test_bad_scope_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        Scope.build(**kwargs)  # type: ignore[arg-type]


def test_resolve_targets_applies_exclusions_and_deduplicates() -> None:
    # Given overlapping specs with different labels and one excluded address
    specs = [TargetSpec("127.0.0.1-3", "First"), TargetSpec("127.0.0.0/30", "Second")]
    scope = Scope.build(["127.0.0.2"], allow=[])
    # When resolved
    targets = resolve_targets(specs, scope)
    # Then each address appears once, first label wins, the excluded one is gone
    assert [(t.ip, t.organization) for t in targets] == [
        ("127.0.0.1", "First"), ("127.0.0.3", "First"), ("127.0.0.0", "Second")]


def test_resolve_targets_refuses_addresses_outside_the_fence() -> None:
    # Given an allow-list fence and a target partly outside it
    scope = Scope.build(allow=["127.0.0.0/31"])
    # When resolved, then it is refused loudly (never silently narrowed)
    with pytest.raises(TargetError, match=r"127\.0\.0\.2 \(127\.0\.0\.0/30\) is outside"):
        resolve_targets([TargetSpec("127.0.0.0/30")], scope)


def test_test_session_fence_is_in_force() -> None:
    # Given the fence conftest.py sets for every test process, when a scope is built
    # Then it allows exactly loopback and the 198.18.0.0/15 test-host range
    scope = Scope.build()
    assert [str(n) for n in scope.allow] == ["127.0.0.0/8", "::1/128", "198.18.0.0/15"]
    assert scope.permits("198.19.255.255")
    assert not scope.permits("::2")  # one past ::1/128: outside the fence


def test_resolve_targets_when_exclusions_cover_everything() -> None:
    scope = Scope.build(["127.0.0.0/8"], allow=[])
    with pytest.raises(TargetError, match="nothing to scan: the exclusions cover all 2"):
        resolve_targets([TargetSpec("127.0.0.1-2")], scope)


def test_a_block_excluded_whole_is_never_expanded(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from producers import targets

    # A SPY (not a fake: it calls the real expand) records which specs were expanded
    expanded: list[str] = []
    real = targets.expand

    def spy(spec: TargetSpec, **kwargs: bool) -> list[Any]:
        expanded.append(spec.text)
        return real(spec, **kwargs)

    monkeypatch.setattr(targets, "expand", spy)
    monkeypatch.setattr(targets, "SAY_EXPANSION_FROM", 1000)
    caplog.set_level(logging.WARNING, logger="producers.targets")
    # Given a /9 and one more address, under an exclusion of all of it
    scope = Scope.build(["127.0.0.0/8"], allow=["127.0.0.0/8"], allow_large=True)
    # When resolved, then nothing is to scan, said with the count, and the /9 was never
    # expanded (before: a /8 took 5 minutes and 4 GB to get there) nor announced
    with pytest.raises(TargetError, match="the exclusions cover all 8,388,609 target"):
        resolve_targets([TargetSpec("127.0.0.0/9"), TargetSpec("127.0.0.1")], scope)
    assert expanded == ["127.0.0.1"]
    assert "expanding" not in caplog.text
    # And so is a range excluded whole (before: only a CIDR block was spared)
    expanded.clear()
    with pytest.raises(TargetError, match="the exclusions cover all 1,048,576 target"):
        resolve_targets([TargetSpec("127.0.0.0-127.15.255.255")], scope)
    assert expanded == []
    # And a block excluded only in part is expanded, announced from 1,000 addresses on,
    # and loses exactly its excluded addresses
    kept = resolve_targets([TargetSpec("127.1.0.0/22")],
                           Scope.build(["127.1.0.0/23"], allow=["127.0.0.0/8"]))
    assert [t.ip for t in kept] == [f"127.1.{2 + i // 256}.{i % 256}" for i in range(512)]
    assert "expanding 1,024 target addresses before anything is sent" in caplog.text


def test_a_block_named_again_is_expanded_once(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from producers import targets

    # A SPY (it calls the real expand) records which specs were expanded
    expanded: list[str] = []
    real = targets.expand

    def spy(spec: TargetSpec, **kwargs: bool) -> list[Any]:
        expanded.append(f"{spec.text} {spec.organization}")
        return real(spec, **kwargs)

    monkeypatch.setattr(targets, "expand", spy)
    caplog.set_level(logging.WARNING, logger="producers.targets")
    # Given one /22 listed under 20 organizations, and the same block spelt as a range
    specs = [TargetSpec("127.4.0.0/22", f"org{i}") for i in range(20)]
    specs.append(TargetSpec("127.4.0.0-127.4.3.255", "org0"))
    scope = Scope.build(allow=["127.0.0.0/8"])
    # When resolved, then it is expanded once (before: 21 times, 21,504 addresses' work)
    kept = resolve_targets(specs, scope)
    assert expanded == ["127.4.0.0/22 org0"]
    # And each address is scanned once, under the first organization, the others said
    assert len(kept) == 1024 and {t.organization for t in kept} == {"org0"}
    assert "127.4.0.0/22 (organization org1) is 127.4.0.0, already scanned as 127.4.0.0/22 " \
           "(organization org0)" in caplog.text
    assert "more targets resolving to an address already listed" in caplog.text


def test_overlapping_blocks_are_bounded_counting_their_overlaps() -> None:
    # Given hostile input: many different ranges over the same /18 (each a new span)
    specs = [TargetSpec(f"127.5.0.{i}-127.5.63.255") for i in range(1, 30)]
    # When resolved, then refused before expanding 474,701 addresses for 16,383
    with pytest.raises(TargetError, match=r"the targets name 474,701 addresses counting "
                                          r"their overlaps, more than 262,144"):
        resolve_targets(specs, Scope.build(allow=["127.0.0.0/8"]))


@given(st.integers(0, 255), st.integers(24, 32),
       st.lists(st.tuples(st.integers(0, 255), st.integers(22, 32)), max_size=4))
def test_excluding_blocks_whole_keeps_what_the_address_rule_keeps(
        start: int, prefix: int, exclusions: list[tuple[int, int]]) -> None:
    # Given a block and exclusions (some covering it whole, some in part, some apart)
    block = f"127.3.{start}.0/{prefix}"
    excluded = [str(ipaddress.ip_network(f"127.3.{a}.0/{p}", strict=False))
                for a, p in exclusions]
    scope = Scope.build(excluded, allow=["127.0.0.0/8"])
    expected = [str(ip) for ip in ipaddress.ip_network(block, strict=False)
                if scope.permits(str(ip))]
    # When resolved, then it keeps exactly what the address-by-address rule keeps
    if expected:
        assert [t.ip for t in resolve_targets([TargetSpec(block)], scope)] == expected
    else:
        with pytest.raises(TargetError, match="nothing to scan"):
            resolve_targets([TargetSpec(block)], scope)


def test_an_address_named_by_several_blocks_counts_once_toward_the_ceiling() -> None:
    from producers.targets import check_total

    # Given one /17 listed three times (a shared inventory: once per organization) and a
    # range inside it
    specs = [TargetSpec("127.0.0.0/17", organization=org) for org in ("A", "B", "C")]
    specs.append(TargetSpec("127.0.0.1-127.0.0.9"))
    # When counted, then it is 32,768 addresses, under the /16 ceiling (before: 98,313,
    # refused without --allow-large, and said so with a false number)
    assert check_total(specs, allow_large=False) == 32_768
    # And two different /16s are still two
    with pytest.raises(TargetError, match="131,072 addresses in all"):
        check_total([TargetSpec("127.0.0.0/16"), TargetSpec("127.1.0.0/16"),
                     TargetSpec("127.1.0.0/17")], allow_large=False)


def test_an_address_or_name_listed_again_counts_once_toward_the_ceiling() -> None:
    from producers.targets import check_total

    # Given 70,000 lines of one address (a generated list, an inventory's repeats), a
    # /16 with a named host inside it under another organization, and a name twice
    # Then each address and name counts once (before: 70,000 and 65,537 addresses, both
    # refused without --allow-large, with a false number: a review)
    assert check_total([TargetSpec("127.0.0.12")] * 70_000, allow_large=False) == 1
    assert check_total([TargetSpec("127.0.0.0/16", organization="A"),
                        TargetSpec("127.0.0.12", organization="B")], allow_large=False) == 65_536
    # And an address counts once in any of the forms it is scanned as, a name with or
    # without its final dot (a second review)
    for form in ("[127.0.0.5]", "::ffff:127.0.0.5", "::ffff:7f00:5", "::127.0.0.5"):
        assert check_total([TargetSpec("127.0.0.0/16"), TargetSpec(form)],
                           allow_large=False) == 65_536, form
    assert check_total([TargetSpec("db.example.test"), TargetSpec("db.example.test.")],
                       allow_large=False) == 1
    assert check_total([TargetSpec("127.0.0.0/24"), TargetSpec(" 127.0.0.12"),
                        TargetSpec("::1"), TargetSpec("::1"), TargetSpec("db.example.test"),
                        TargetSpec("DB.example.test")], allow_large=False) == 258


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=8))
def test_distinct_counts_the_union_of_spans(spans: list[tuple[int, int]]) -> None:
    from producers.targets import _distinct

    named: set[int] = set()
    for first, width in spans:
        named |= set(range(first, first + width + 1))
    assert _distinct([(4, first, first + width) for first, width in spans]) == len(named)


def test_resolve_targets_total_size_limit_across_specs() -> None:
    # Given two /16s (each allowed alone), when resolved together, then the total is refused
    specs = [TargetSpec("127.0.0.0/16"), TargetSpec("127.1.0.0/16")]
    with pytest.raises(TargetError, match="131,072 addresses in all"):
        resolve_targets(specs, Scope.build(allow=[]))


def test_resolve_targets_with_hostname_inside_the_fence() -> None:
    targets = resolve_targets([TargetSpec("localhost", "Org", "laptop")])
    assert targets[0].ip == "127.0.0.1"
    assert targets[0].hostname == "localhost"


# -- inventory: the audit's CSV and key cases ---------------------------------------------


def test_a_bom_starts_no_header_or_exclusion(tmp_path: Path) -> None:
    # Given an inventory and an exclude file saved as Excel's "CSV UTF-8" (with a BOM)
    inventory = tmp_path / "bom.csv"
    inventory.write_bytes(b"\xef\xbb\xbftarget,organization,asset\n127.0.0.1,Org,web\n")
    excluded = tmp_path / "bom.txt"
    excluded.write_bytes(b"\xef\xbb\xbf127.0.0.2\n")
    # When read, then the BOM is not part of the first header or the first exclusion
    assert read_inventory(inventory) == [TargetSpec("127.0.0.1", "Org", "web")]
    assert [str(n) for n in Scope.build(exclude_file=str(excluded), allow=[]).exclude] == [
        "127.0.0.2/32"]


def test_a_csv_is_parsed_whole_so_quoted_line_breaks_and_hashes_are_data(
        tmp_path: Path) -> None:
    # Given quoted fields spanning lines, one continuation line starting with '#', a
    # literal quote inside an unquoted field, and comment lines outside any quote
    path = write(tmp_path, "a.csv",
                 "# owned assets\n"
                 "target,organization,asset\n"
                 '127.0.0.1,"multi\nline org",a\n'
                 '127.0.0.2,"Org","note\n# not a comment"\n'
                 "# a comment between rows\n"
                 '127.0.0.3,5" disk,b\n'
                 "# and one after\n")
    # When read, then every value is what the file holds, and only comments are skipped
    # (a label's line break is one space: a name `report --org` can be given)
    assert read_inventory(path) == [
        TargetSpec("127.0.0.1", "multi line org", "a"),
        TargetSpec("127.0.0.2", "Org", "note # not a comment"),
        TargetSpec("127.0.0.3", '5" disk', "b"),
    ]


@pytest.mark.parametrize("text", [
    # lines ended by CR alone, as old Mac spreadsheets save them
    "# a comment\rtarget,organization\r127.0.0.1,Acme\r# after\r",
    # a comment holding a quote that would open a field, were it a row
    'target,organization\n# fields: target,"organization\n# second comment\n127.0.0.1,Acme\n',
])
def test_csv_comments_are_comments_whatever_their_line_ending_or_quotes(
        tmp_path: Path, text: str) -> None:
    # (the first read "is empty", the second took its next comment for a target; a review)
    assert read_inventory(write(tmp_path, "a.csv", text)) == [TargetSpec("127.0.0.1", "Acme")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", 'target,organization\n127.0.0.1,"x\n', "is not valid CSV: line 2: "
         "unexpected end of data"),
        ("a.csv", "target,target,asset\n127.0.0.1,127.0.0.2,a\n",
         "a.csv: line 1: column 'target' appears twice in the header"),
        ("a.csv", "target,organisation\n127.0.0.1,Org\n",
         "a.csv: line 1: unknown column 'organisation' (known: target, address, host"),
        ("a.csv", "target,assset\n127.0.0.1,web\n", "line 1: unknown column 'assset'"),
        ("a.csv", "target,organization\n127.0.0.1,Example, Inc\n",
         "a.csv: line 2: more fields than the header's 2"),
        ("a.yaml", "- {target: 127.0.0.1, bogus: 1}\n", "a.yaml: entry 1: unknown key 'bogus'"),
        ("a.yaml", "Org:\n  - {target: 127.0.0.1, asst: web}\n",
         "a.yaml: Org[0]: unknown key 'asst'"),
    ],
)
def test_an_inventory_that_would_lose_a_value_is_refused(tmp_path: Path, name: str, text: str,
                                                        message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(TargetError) as err:
        read_inventory(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_documented_key_and_alias_is_accepted(tmp_path: Path) -> None:
    # README: target, organization, asset; the readers also take org, name and the
    # target aliases (test_csv_target_column_aliases) and a 'targets' list in YAML
    path = write(tmp_path, "a.yaml", "- {target: 127.0.0.1, organization: O, asset: A}\n"
                                     "- {ip: 127.0.0.2, org: P, name: B}\n"
                                     "- {targets: [127.0.0.3], org: Q}\n")
    assert read_inventory(path) == [TargetSpec("127.0.0.1", "O", "A"),
                                    TargetSpec("127.0.0.2", "P", "B"),
                                    TargetSpec("127.0.0.3", "Q", "")]


@pytest.mark.parametrize("value", [" , ", ",", "   "])
def test_a_scope_fence_of_only_blanks_and_commas_is_refused(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given PORTWATCH_SCOPE_ALLOW set to a value holding no CIDR (a template's empty list)
    monkeypatch.setenv(SCOPE_ALLOW_ENV, value)
    # When the scope is built from it, then it is refused, not read as "no fence"
    with pytest.raises(TargetError, match="holds no CIDR block"):
        Scope.build()


def test_a_csv_with_trailing_commas_is_read(tmp_path: Path) -> None:
    # Given a spreadsheet's export: a trailing comma on the header and on a row
    path = write(tmp_path, "a.csv", "target,organization,asset,\n127.0.0.1,Org,web,\n"
                                    "127.0.0.2,Org,db\n")
    # Then the blank column holds nothing and is ignored (it was refused as a key '')
    assert read_inventory(path) == [TargetSpec("127.0.0.1", "Org", "web"),
                                    TargetSpec("127.0.0.2", "Org", "db")]


@pytest.mark.parametrize(("name", "text", "words"), [
    ("assets.csv", "target,ip,organization\n127.0.0.5,127.0.0.6,A\n",
     "'target' and 'ip' name different addresses"),
    ("assets.csv", "target,organization,org\n127.0.0.5,A,B\n",
     "'organization' and 'org' disagree"),
    ("assets.yaml", "- {target: 127.0.0.1, targets: [127.0.0.2]}\n",
     "'target' and 'targets' both given"),
    ("assets.yaml", "- {target: 127.0.0.1, asset: web, name: db}\n",
     "'asset' and 'name' disagree"),
])
def test_an_inventory_row_with_two_values_for_one_thing_is_refused(
        tmp_path: Path, name: str, text: str, words: str) -> None:
    # (a review of 2026-12-05: the first was kept, the other silently dropped)
    with pytest.raises(TargetError, match=words):
        read_inventory(write(tmp_path, name, text))


def test_an_inventory_row_may_repeat_the_same_value_under_two_keys(tmp_path: Path) -> None:
    [spec] = read_inventory(write(tmp_path, "assets.csv",
                                  "target,ip,organization,org\n127.0.0.5,127.0.0.5,A,\"a \"\n"))
    assert (spec.text, spec.organization) == ("127.0.0.5", "A")


@pytest.mark.parametrize("header", ["hostname,ip,organization", "ip,hostname,organization",
                                    "target,ip,organization", "host,address,organization"])
def test_a_cmdb_row_with_a_host_name_and_its_address_scans_the_address(
        tmp_path: Path, header: str) -> None:
    # Given a CMDB export's row: a host name, the address it has there, in either order
    first, second, _ = header.split(",")
    values = {"hostname": "LocalHost.", "host": "localhost", "target": "localhost",
              "ip": "127.0.0.5", "address": "127.0.0.5"}
    row = f"{values[first]},{values[second]},Acme"
    [spec] = read_inventory(write(tmp_path, "assets.csv", f"{header}\n{row}\n"))
    # Then the address is scanned and the name kept as its hostname, never resolved (the
    # first column won: the name's DNS answer was scanned, the address never; a review)
    assert (spec.text, spec.hostname, spec.organization) == ("127.0.0.5", "localhost", "Acme")
    [target] = expand(spec)
    assert (target.ip, target.hostname, target.organization) == (
        "127.0.0.5", "localhost", "Acme")


@pytest.mark.parametrize(("row", "words"), [
    # a range beside an address is two addresses, not a host name (it scanned one of the
    # range's addresses, named after the range; a review)
    ("target,ip\n127.0.0.1-3,127.0.0.1\n",
     r"line 2: 'target' and 'ip' name different addresses: give one$"),
    ("hostname,ip\nweb1,127.0.0.1-3\n",
     r"line 2: 'hostname' beside a block or range names no one host: give one address"),
    ("hostname,ip\nweb1,127.0.0.0/30\n",
     r"line 2: 'hostname' beside a block or range names no one host"),
    ("hostname,host,ip\na.example,b.example,127.0.0.5\n",
     r"line 2: 'host' and 'hostname' name different hosts: give one$"),
    ("hostname,ip\nweb server 1,127.0.0.5\n",
     r"line 2: hostname: not a host name: 'web server 1'$")])
def test_a_row_with_two_names_or_a_bad_name_beside_its_address_is_refused(
        tmp_path: Path, row: str, words: str) -> None:
    with pytest.raises(TargetError, match=words):
        read_inventory(write(tmp_path, "assets.csv", row))


def test_a_second_host_name_of_one_address_is_said(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # Given an inventory naming one address twice, by two host names
    specs = read_inventory(write(tmp_path, "assets.csv",
                                 "hostname,ip,organization\nweb1,127.0.0.5,Acme\n"
                                 "web2,127.0.0.5,Acme\n"))
    # Then it is scanned once, under the first, and the second name is said (it was
    # dropped without a word: a review)
    with caplog.at_level("WARNING"):
        [target] = resolve_targets(specs, Scope.build(allow=["127.0.0.0/8"]))
    assert (target.ip, target.hostname) == ("127.0.0.5", "web1")
    assert [r.getMessage() for r in caplog.records] == [
        "127.0.0.5 (hostname web2) is 127.0.0.5, already scanned as 127.0.0.5 (hostname "
        "web1): scanned once, under the first"]


@pytest.mark.parametrize(("text", "expected"), [
    # one {organization, asset, targets} entry at the top (only its list was read)
    ("organization: Example Corp\nasset: web-1\ntargets:\n  - 127.0.0.1\n",
     [TargetSpec("127.0.0.1", "Example Corp", "web-1")]),
    # YAML 1.1 would read these labels as numbers, dates or false: kept as written
    ("0x1F:\n  - {target: 127.0.0.1, asset: 010}\n  - {target: 127.0.0.2, asset: 1.10}\n"
     "  - {target: 127.0.0.3, asset: 12:30}\n  - {target: 127.0.0.4, asset: off}\n"
     "  - {target: 127.0.0.5, asset: 0}\n  - {target: 127.0.0.6, asset: 2026-01-02}\n",
     [TargetSpec(f"127.0.0.{i}", "0x1F", a)
      for i, a in enumerate(["010", "1.10", "12:30", "off", "0", "2026-01-02"], 1)]),
])
def test_yaml_inventories_keep_what_was_written(tmp_path: Path, text: str,
                                                expected: list[TargetSpec]) -> None:
    assert read_inventory(write(tmp_path, "assets.yaml", text)) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("targets:\n  - 127.0.0.3\nExample Corp:\n  - 127.0.0.1\n",
     r"'targets' beside organization 'Example Corp': give one mapping"),
    ("~:\n  - {target: 127.0.0.1, asset: a}\n", "an organization with no name"),
    ("- {target: 2026-01-02}\n", "entry 1: target: a target must be text, not a date"),
])
def test_yaml_inventories_that_would_lose_targets_or_labels_are_refused(
        tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(TargetError, match=words):
        read_inventory(write(tmp_path, "assets.yaml", text))


@pytest.mark.parametrize("target", ["0.0.0.0", "::", "::ffff:0.0.0.0", "0.1.2.3", "[::]"])
def test_this_host_is_never_a_target(target: str) -> None:
    # (a review of 2026-12-05: 0.0.0.0 passed --exclude 127.0.0.0/8, and a connect to it
    # reaches the scanner's own host)
    with pytest.raises(TargetError, match="0.0.0.0/8 and :: mean this host"):
        resolve_targets([TargetSpec(target)], Scope.build(["127.0.0.0/8"], allow=[]))


def test_this_host_inside_a_block_is_left_out_and_the_rest_scanned() -> None:
    kept = resolve_targets([TargetSpec("0.0.0.0/30"), TargetSpec("127.0.0.1")],
                           Scope.build(allow=[]))
    assert [t.ip for t in kept] == ["127.0.0.1"]
    assert not Scope.build(allow=[]).permits("0.0.0.0")


def test_yaml_merge_keys_are_not_repeated_keys(tmp_path: Path) -> None:
    # `<<: *defaults` was refused by the repeated-key check (a review, 2026-12-06)
    path = write(tmp_path, "a.yaml", "- &web {target: 127.0.0.30, organization: Ex, "
                 "asset: web}\n- <<: *web\n  target: 127.0.0.31\n")
    assert read_inventory(path) == [TargetSpec("127.0.0.30", "Ex", "web"),
                                    TargetSpec("127.0.0.31", "Ex", "web")]


@pytest.mark.parametrize(("spec", "said"), [
    ("127.128.0.0/9", r"^127\.128\.0\.0 \(127\.128\.0\.0/9\) is outside "),
    # (review: the mapped form was left to the address check, and expanded in full)
    ("::ffff:127.128.0.0/105", r"^127\.128\.0\.0 \(::ffff:127\.128\.0\.0/105\) is outside "),
])
def test_a_large_block_outside_the_fence_is_refused_without_being_expanded(
        monkeypatch: pytest.MonkeyPatch, spec: str, said: str) -> None:
    import producers.targets as targets

    def no_expansion(*_args: object, **_kwargs: object) -> list[object]:
        raise AssertionError("expanded: millions of addresses before the refusal")

    monkeypatch.setattr(targets, "expand", no_expansion)
    scope = Scope.build(allow=["127.0.0.0/9"], allow_large=True)
    with pytest.raises(TargetError, match=said + r"the allowed scope 127\.0\.0\.0/9 "):
        resolve_targets([TargetSpec(spec)], scope)


@pytest.mark.parametrize(("name", "content", "where", "said"), [
    ("assets.csv", "target,organization\n127.0.0.1,Acme\n\nbogus!!,Acme\n",
     "assets.csv: line 4: ", "'bogus!!'"),
    ("assets.yaml", "Acme:\n  - 127.0.0.1\n  - bogus!!\n", "assets.yaml: Acme[1]: ",
     "'bogus!!'"),
    ("assets.yaml", "- 127.0.0.1\n- {target: 'bogus!!'}\n", "assets.yaml: entry 2: ",
     "'bogus!!'"),
    # (review: a block's and a range's errors come from the count before expansion)
    ("assets.csv", "target\n127.0.0.1\n127.0.0.0/33\n", "assets.csv: line 3: ",
     "bad CIDR block '127.0.0.0/33'"),
    ("assets.csv", "target\n127.0.0.1\n127.0.0.9-3\n", "assets.csv: line 3: ",
     "'127.0.0.9-3'"),
])
def test_a_bad_target_in_an_inventory_says_where_it_is(tmp_path: Path, name: str,
                                                       content: str, where: str,
                                                       said: str) -> None:
    inventory = tmp_path / name
    inventory.write_text(content)
    specs = read_inventory(inventory)
    # (before: "not an address, CIDR block, range or hostname: 'bogus!!'", no file or line)
    with pytest.raises(TargetError) as refused:
        resolve_targets(specs, Scope.build(allow=["127.0.0.0/8"]))
    assert str(refused.value).startswith(where), str(refused.value)
    assert said in str(refused.value)
    assert specs[0] == TargetSpec("127.0.0.1", specs[0].organization)  # where: not compared


def test_an_ipv4_mapped_block_inside_the_fence_is_not_refused_by_the_block_check() -> None:
    # (review: the check before expansion refused ::ffff:127.0.0.0/126 as outside
    # 127.0.0.0/8; address by address it is 127.0.0.0-3, inside)
    scope = Scope.build(allow=["127.0.0.0/8"])
    found = resolve_targets([TargetSpec("::ffff:127.0.0.0/126")], scope)
    assert sorted(t.ip for t in found) == ["127.0.0.0", "127.0.0.1", "127.0.0.2", "127.0.0.3"]



# -- the exclusion and allow-list lookup: merged ranges, searched (not every line tried) ----

_V4 = st.builds(lambda n, p: ipaddress.ip_network((n, p), strict=False),
                st.integers(0, 2**32 - 1), st.integers(8, 32))
_V6 = st.builds(lambda n, p: ipaddress.ip_network((n, p), strict=False),
                st.integers(0, 2**128 - 1), st.integers(16, 128))
_ADDRESSES = st.one_of(st.integers(2**24, 2**32 - 1).map(ipaddress.IPv4Address),
                       st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address))


@given(nets=st.lists(st.one_of(_V4, _V6), max_size=12), near=st.lists(_ADDRESSES, max_size=8))
def test_the_scope_lookup_agrees_with_testing_every_network(
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
        near: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    # Given networks (overlapping, nested, adjacent, either version) as exclusions, and
    # the same as a fence, and addresses at and around their edges
    excluding = Scope(exclude=tuple(nets))
    fenced = Scope(allow=tuple(nets))
    probes = list(near)
    for net in nets:
        top = 2**32 if net.version == 4 else 2**128
        for edge in (int(net.network_address), int(net.broadcast_address)):
            probes += [ipaddress.IPv4Address(v) if net.version == 4 else ipaddress.IPv6Address(v)
                       for v in (edge - 1, edge, edge + 1) if 2**24 <= v < top]
    for addr in probes:
        text = str(addr)
        if canonical_address(text) != addr:
            continue  # a mapped address: judged as the IPv4 it reaches (tested above)
        inside = any(addr in net for net in nets if net.version == addr.version)
        # Then the search answers as testing every network does
        assert excluding.permits(text) is not inside, text
        assert fenced.is_allowed(text) is (inside or not nets), text


def test_a_name_listed_again_is_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 70,000 lines of one name (the ceiling counts it once) and a resolver that
    # counts its calls (a FAKE: no name may be looked up for real here)
    import socket

    calls: list[str] = []

    def getaddrinfo(name: str, *_args: object, **_kw: object) -> list[tuple[object, ...]]:
        calls.append(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.9", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    targets = resolve_targets([TargetSpec("db.example.test", organization="A")] * 70_000)
    # Then it is looked up once (before: once per line, 85 s at 1 ms a lookup: a review)
    assert [t.ip for t in targets] == ["127.0.0.9"] and calls == ["db.example.test"]
