"""nmap-service-probes parser and matcher, on probe and match lines we wrote in its format.

The real file (NPSL) is only read where it is installed: one test loads it and
counts compiled match lines against an independent count of the file's lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probers.nmapdata import NmapDataError, NmapDataUnavailable, data_file
from probers.nmapdata.service_probes import (
    MAX_SUBJECT,
    ProbeDB,
    compile_pattern,
    cpe_escape,
    parse_match_line,
)

OWN_PROBES = rb"""# our own probes, written in nmap-service-probes format
Exclude T:9100-9102,U:53,7

Probe TCP NULL q||
totalwaitms 6000
tcpwrappedms 2500
match myproto m|^HELLO v([\d.]+)\r\n| p/Hello/ v/$1/ cpe:/a:hello:hello:$1/
softmatch myproto m|^HELLO|
match banner m=^BANNER (\w+)= p=Banner Server= v=$1= i=path a/b c=
match caseless m|^howdy|i p/Howdy/
match dotall m|^MULTI.LINE (\S+)|s p/Multi/ v/$1/
match nodotall m|^ONE.TWO| p/Never across lines/

Probe TCP Ping q|PING\r\n\0\x41\x7|
rarity 1
ports 1000-1002,1234
sslports 1443
totalwaitms 2500
fallback Extra
softmatch pong m|^PONG|
match pong m|^PONG ([\w.]+)\r\n| p/Pong/ v/$1/ o/Linux/ h/box1/ d/router/
match printable m|^PR:(.*)$|s p/$P(1)/
match subst m|^VER ([\d_]+)| p/Subst/ v/$SUBST(1,"_",".")/
match integer m|^INT(..)(..)|s p/Int/ v/$I(1,">")/ i/$I(2,"<")/
match cpes m|^CPE (.*)$|s p/Cpe/ cpe:/a:Vendor:Prod:$1/a cpe:|o:linux:linux_kernel|
match missinggroup m|^MISS (\w+)| p/Miss/ v/$3/ i/kept $1/

Probe TCP Middle q|MID|

Probe TCP Extra q|EXTRA|
rarity 8
match extra m|^EXTRA-OK| p/Extra/

Probe UDP Ping q|ping|
rarity 2
ports 1234
match udpping m|^pong| p/UDP pong/

Probe UDP Listen q|| no-payload
rarity 9
match listened m|^beacon (\d+)| p/Beacon/ v/$1/
"""


@pytest.fixture(scope="module")
def db() -> ProbeDB:
    return ProbeDB.parse(OWN_PROBES, "own-probes")


def _line_of(needle: bytes) -> int:
    return next(i for i, line in enumerate(OWN_PROBES.split(b"\n"), 1) if needle in line)


# ----------------------------------------------------------------------------- parsing


def test_probes_are_keyed_by_protocol_and_name(db: ProbeDB) -> None:
    tcp_ping = db.probe("tcp", "Ping")
    udp_ping = db.probe("udp", "Ping")
    assert tcp_ping is not None and udp_ping is not None
    assert tcp_ping.payload == b"PING\r\n\x00A\x07"  # C escapes, incl. a one-digit \x
    assert udp_ping.payload == b"ping"
    assert tcp_ping is not udp_ping
    assert len(db) == 6


def test_probe_directives(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    null = db.null_probe()
    middle = db.probe("tcp", "Middle")
    listen = db.probe("udp", "Listen")
    assert ping is not None and null is not None and middle is not None and listen is not None
    assert ping.rarity == 1 and middle.rarity == 5  # 5 is nmap's default rarity
    assert ping.ports == frozenset({1000, 1001, 1002, 1234})
    assert ping.sslports == frozenset({1443})
    assert ping.totalwaitms == 2500 and middle.totalwaitms == 5000
    assert null.totalwaitms == 6000 and null.tcpwrappedms == 2500
    assert ping.fallback_names == ("Extra",)
    assert listen.no_payload and not ping.no_payload
    assert null.is_null and not ping.is_null


def test_exclude_directive(db: ProbeDB) -> None:
    assert db.is_excluded("tcp", 9101)
    assert not db.is_excluded("udp", 9101)
    assert db.is_excluded("udp", 53) and db.is_excluded("udp", 7)
    assert not db.is_excluded("tcp", 53)


def test_fallback_chain_is_self_then_fallbacks_then_null_for_tcp_only(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    udp_ping = db.probe("udp", "Ping")
    assert ping is not None and udp_ping is not None
    assert [p.name for p in db.fallback_chain(ping)] == ["Ping", "Extra", "NULL"]
    assert [p.name for p in db.fallback_chain(udp_ping)] == ["Ping"]


def test_probes_are_ordered_by_rarity_then_file_order(db: ProbeDB) -> None:
    assert [p.name for p in db.probes("tcp")] == ["Ping", "Middle", "Extra"]
    assert [p.name for p in db.probes("udp")] == ["Ping", "Listen"]


def test_probes_for_port_puts_hinted_first_and_filters_rarity(db: ProbeDB) -> None:
    # A hinted port: Ping first; Extra (rarity 8) is above max_rarity 7.
    assert [p.name for p in db.probes_for_port("tcp", 1234, False, 7)] == ["Ping", "Middle"]
    # Not hinted, low max_rarity: only rarity-1 Ping.
    assert [p.name for p in db.probes_for_port("tcp", 80, False, 1)] == ["Ping"]
    # Over TLS the sslports list is the hint.
    assert [p.name for p in db.probes_for_port("tcp", 1443, True, 0)] == ["Ping"]
    assert [p.name for p in db.probes_for_port("tcp", 1234, True, 0)] == []
    # A soft match keeps only probes that can identify the service.
    assert [p.name for p in db.probes_for_port("tcp", 80, False, 9, softmatched="extra")] == [
        "Extra"
    ]
    # no-payload probes are never sent.
    assert [p.name for p in db.probes_for_port("udp", 1234, False, 9)] == ["Ping"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"Probe TCP NULL q||\nbogus 1\n", "unknown directive 'bogus'"),
        (b"Probe TCP NULL q||\nmatch x m|a|g\n", "unsupported pattern flag"),
        (b"Probe TCP NULL q||\nmatch x m|abc\n", "no closing '|'"),
        (b"match x m|a|\n", "before the first Probe"),
        (b"Probe TCP NULL q||\nrarity 10\n", "rarity must be 1-9"),
        (b"Probe TCP A q|a|\nfallback Nope\n", "unknown fallback 'Nope'"),
        (b'Probe TCP NULL q||\nmatch x m|(a)| v/$I(1,"x")/\n', "bad template"),
        (b"Probe TCP NULL q||\nmatch x m|a| z/zz/\n", "unknown template 'z'"),
        (b"Probe TCP NULL q||\nExclude T:1\n", "one Exclude, before the first Probe"),
        (b"Probe SCTP X q||\n", "expected 'Probe <TCP|UDP>"),
        (b"Probe TCP X q|a| weird\n", "unknown probe option"),
        (b"Probe TCP NULL q||\nmatch x m|(unclosed| p/x/\n", "does not compile"),
    ],
)
def test_malformed_lines_name_their_line(text: bytes, message: str) -> None:
    with pytest.raises(NmapDataError, match=re.escape(message)):
        ProbeDB.parse(text, "bad")


def test_missing_file_raises_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NmapDataUnavailable, match="nmap-common"):
        ProbeDB.load(tmp_path)


# ---------------------------------------------------------------------------- matching


def test_hard_match_fills_templates_and_cpe(db: ProbeDB) -> None:
    null = db.null_probe()
    assert null is not None
    m = db.match(null, b"HELLO v1.2.3\r\n")
    assert m is not None
    assert (m.service, m.product, m.version, m.is_soft) == ("myproto", "Hello", "1.2.3", False)
    assert m.cpes == ("cpe:/a:hello:hello:1.2.3",)
    assert m.line == _line_of(b"match myproto")
    assert m.probe == "NULL"


def test_other_delimiters_in_pattern_and_templates(db: ProbeDB) -> None:
    null = db.null_probe()
    assert null is not None
    m = db.match(null, b"BANNER xyz and more")
    assert m is not None
    assert (m.service, m.product, m.version) == ("banner", "Banner Server", "xyz")
    assert m.info == "path a/b c"


def test_flags_i_and_s(db: ProbeDB) -> None:
    null = db.null_probe()
    assert null is not None
    caseless = db.match(null, b"HOWDY partner")
    assert caseless is not None and caseless.product == "Howdy"
    dotall = db.match(null, b"MULTI\nLINE v9")
    assert dotall is not None and (dotall.product, dotall.version) == ("Multi", "v9")
    assert db.match(null, b"ONE\nTWO") is None  # without s, '.' does not cross a newline


def test_hard_match_wins_over_an_earlier_softmatch(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    assert ping is not None
    hard = db.match(ping, b"PONG 2.0\r\n")
    assert hard is not None and not hard.is_soft
    assert (hard.product, hard.version, hard.os, hard.hostname, hard.device) == (
        "Pong",
        "2.0",
        "Linux",
        "box1",
        "router",
    )
    soft = db.match(ping, b"PONG?")
    assert soft is not None and soft.is_soft and soft.service == "pong"
    assert soft.line == _line_of(b"softmatch pong")


def test_softmatch_alone_is_returned_when_no_hard_match(db: ProbeDB) -> None:
    null = db.null_probe()
    assert null is not None
    m = db.match(null, b"HELLO there")
    assert m is not None and m.is_soft and m.service == "myproto" and m.product == ""


def test_response_matches_fallback_and_null_lines(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    assert ping is not None
    via_extra = db.match(ping, b"EXTRA-OK")
    via_null = db.match(ping, b"HELLO v3\r\n")
    assert via_extra is not None and via_extra.probe == "Extra"
    assert via_null is not None and via_null.probe == "NULL" and via_null.version == "3"
    udp_ping = db.probe("udp", "Ping")
    assert udp_ping is not None
    assert db.match(udp_ping, b"HELLO v3\r\n") is None  # UDP chains have no NULL probe


def test_printable_subst_and_integer_substitutions(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    assert ping is not None
    printable = db.match(ping, b"PR:ab\x01c\xffd\x7f")
    assert printable is not None and printable.product == "abcd"
    subst = db.match(ping, b"VER 2_4_1 build")
    assert subst is not None and subst.version == "2.4.1"
    integer = db.match(ping, b"INT\x01\x02\x01\x02")
    assert integer is not None and (integer.version, integer.info) == ("258", "513")


def test_cpe_is_lowercased_and_substitutions_escaped(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    assert ping is not None
    m = db.match(ping, b"CPE 1.0 Beta:x/y")
    assert m is not None
    assert m.cpes == ("cpe:/a:vendor:prod:1.0%20beta%3ax%2fy", "cpe:/o:linux:linux_kernel")
    assert cpe_escape(b"OpenSSH_9.2") == "openssh_9.2"


def test_template_with_a_missing_group_is_dropped_like_nmap(db: ProbeDB) -> None:
    ping = db.probe("tcp", "Ping")
    assert ping is not None
    m = db.match(ping, b"MISS word")
    assert m is not None and (m.product, m.version, m.info) == ("Miss", "", "kept word")


def test_match_budget_exceeded_is_reported_not_hidden(db: ProbeDB) -> None:
    null = db.null_probe()
    assert null is not None
    outcome = db.match_detailed(null, b"HELLO v1\r\n", budget=-1.0)
    assert outcome.match is None
    assert outcome.budget_exceeded
    assert "match budget exceeded" in outcome.note


def test_a_backtracking_line_against_a_hostile_response_stops_at_the_budget() -> None:
    # Given a match line that backtracks exponentially on a run of "a"s that fails at
    # the end (~1.6^n steps: hours at 60), and a line after it that would match
    hostile = ProbeDB.parse(b"Probe TCP NULL q||\n"
                            b"match evil m=^(a|aa)+$= p/Evil/\n"
                            b"match later m|a!| p/Later/\n", "hostile")
    null = hostile.null_probe()
    assert null is not None
    # When a server's banner is that run
    outcome = hostile.match_detailed(null, b"a" * 60 + b"!", budget=0.5)
    # Then the search is stopped at the budget and says so (before: Python's re cannot
    # be stopped, and held the GIL: one banner froze the whole scan for minutes)
    assert outcome.match is None and outcome.budget_exceeded
    assert "match budget exceeded" in outcome.note
    # And with a budget it does not exceed, the same lines answer as nmap's would
    assert hostile.match(null, b"aaa!").product == "Later"  # type: ignore[union-attr]


def test_the_installed_lines_that_froze_a_scan_now_answer_every_response() -> None:
    # Given Debian's nmap-service-probes and two responses a hostile-server review found
    # (2026-12-05) to freeze a whole scan under Python's re: an ordinary HTTP 404 page
    # (lines 14398-14399, "(?:[^<]+|<(?!/head>))*?<style>") and a banner of 100 "a"s
    # after "Agent Ready v" (line 11064, "([\w._]+)+")
    from probers.nmapdata import service_probes

    real = ProbeDB.shared()
    service_probes._BOUNDED.clear()  # cold: each line compiled by its chain's first search
    real._bounded_chains.clear()
    get, null = real.probe("tcp", "GetRequest"), real.null_probe()
    assert get is not None and null is not None
    body = (b"<html><head><title>Not Found</title></head><body><h1>Not Found</h1><p>The "
            b"requested URL was not found on this server.</p></body></html>")
    page = (b"HTTP/1.0 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body)) + body
    for probe, response in ((get, page), (null, b"Agent Ready v" + b"a" * 100 + b"\r\n")):
        # When it is matched, then every line of the chain is tried within the default
        # budget of 1 s (before: one search ran for minutes, and no signal could stop
        # the scan), compiling the lines (~2.6 s for this chain) outside it
        outcome = real.match_detailed(probe, response)
        every = sum(len(p.matches) for p in real.fallback_chain(probe))
        assert (outcome.match, outcome.patterns_tried, outcome.budget_exceeded) == (
            None, every, False)


def test_subject_is_capped(db: ProbeDB) -> None:
    null = db.null_probe()
    assert null is not None
    outcome = db.match_detailed(null, b"HELLO v4\r\n" + b"x" * (2 * MAX_SUBJECT))
    assert outcome.match is not None and outcome.match.version == "4"
    assert outcome.subject_truncated
    assert db.match(null, b"x" * MAX_SUBJECT + b"HELLO v4\r\n") is None  # beyond the cap


def test_unsolicited_udp_answer_matches_no_payload_probes(db: ProbeDB) -> None:
    outcome = db.match_response("udp", 5000, b"beacon 42")
    assert outcome.match is not None
    assert (outcome.match.service, outcome.match.version) == ("listened", "42")
    assert db.match_response("udp", 1234, b"pong").match is not None


def test_match_line_parses_standalone() -> None:
    rule = parse_match_line(r"match x m%^a(\d)%si p%P$1% cpe:/a:x:y/a".replace("%", "#"), 7, "P")
    m = rule.pattern.search(b"A\n1")
    assert m is None  # '^a(\d)' needs a digit right after the a
    m = rule.pattern.search(b"a1")
    assert m is not None and rule.apply(m).product == "P1"
    assert rule.pattern.flags & re.IGNORECASE and rule.pattern.flags & re.DOTALL


# ------------------------------------------------------------------ PCRE -> Python re


@pytest.mark.parametrize(
    ("pattern", "matches", "rejects"),
    [
        (rb"^abc\z", [b"abc"], [b"abc\n"]),  # \z: absolute end (unknown to Python re)
        (rb"^abc\Z", [b"abc", b"abc\n"], [b"abc\nx"]),  # PCRE \Z allows a final newline
        (rb"^a{,3}$", [b"a{,3}"], [b"aaa", b""]),  # PCRE 8: "{,3}" is literal text
        (rb"^[[:digit:]]+$", [b"123"], [b"12a"]),  # POSIX class inside a class
        (rb"^a\hb$", [b"a b", b"a\tb"], [b"a\nb"]),  # \h: horizontal space
        (rb"^\Qa.b\E$", [b"a.b"], [b"axb"]),  # \Q..\E: literal span
        (rb"^[x||]$", [b"|"], [b"y"]),  # doubled | in a class is literal in PCRE
        (rb"^x\e$", [b"x\x1b"], [b"xe"]),
    ],
)
def test_pcre_only_constructs_are_rewritten(
    pattern: bytes, matches: list[bytes], rejects: list[bytes]
) -> None:
    compiled = compile_pattern(pattern, "")
    for subject in matches:
        assert compiled.search(subject), subject
    for subject in rejects:
        assert not compiled.search(subject), subject


def test_patterns_without_pcre_only_constructs_are_untouched() -> None:
    assert compile_pattern(rb"^SSH-([\d.]+)-", "").pattern == rb"^SSH-([\d.]+)-"


# ------------------------------------------------------------------------ the real DB


def _installed() -> bool:
    try:
        data_file("nmap-service-probes", "/usr/share/nmap")
    except NmapDataUnavailable:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="nmap-common not installed (/usr/share/nmap)")
def test_installed_database_compiles_every_match_line() -> None:
    # Given the installed file and an independent count of its match lines
    path = "/usr/share/nmap/nmap-service-probes"
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    expected = sum(1 for line in lines if line.startswith((b"match ", b"softmatch ")))
    probes = sum(1 for line in lines if line.startswith(b"Probe "))
    # When we load it
    real = ProbeDB.load("/usr/share/nmap")
    # Then every match line compiled, every probe is there, and fallbacks resolve
    assert real.match_count == expected
    assert expected > 11_000
    assert len(real) == probes
    assert real.null_probe() is not None
    for proto in ("tcp", "udp"):
        for probe in real.probes(proto):
            chain = real.fallback_chain(probe)
            assert chain[0] is probe
            assert (chain[-1].is_null) == (proto == "tcp")
    # TCP and UDP probes that share a name stay distinct
    tcp_rpc, udp_rpc = real.probe("tcp", "RPCCheck"), real.probe("udp", "RPCCheck")
    assert tcp_rpc is not None and udp_rpc is not None and tcp_rpc.payload != udp_rpc.payload


@pytest.mark.skipif(not _installed(), reason="nmap-common not installed (/usr/share/nmap)")
def test_installed_database_identifies_a_banner_we_wrote() -> None:
    real = ProbeDB.shared("/usr/share/nmap")
    outcome = real.match_response("tcp", 2222, b"SSH-2.0-OpenSSH_9.9p1\r\n")
    assert outcome.match is not None
    assert (outcome.match.service, outcome.match.product, outcome.match.version) == (
        "ssh",
        "OpenSSH",
        "9.9p1",
    )
    assert "cpe:/a:openbsd:openssh:9.9p1" in outcome.match.cpes


# -- template values: escapes are whole and unambiguous -----------------------------------

def test_a_literal_backslash_cannot_fake_an_escaped_byte() -> None:
    from probers.nmapdata.service_probes import _decode

    # the byte 0xff and the banner's own four characters \xff read differently
    assert _decode(b"1.0\xff") == "1.0\\xff"
    assert _decode(b"1.0\\xff") == "1.0\\\\xff"
    assert _decode("Ünï".encode()) == "Ünï"
    assert _decode(b"a\x1b[31mb\x00") == "a[31mb"


@pytest.mark.parametrize("value", ["x" + "%3a" * 100, "a" + "\\xff" * 100, "b" + "\\\\" * 200])
def test_a_long_value_is_cut_between_escapes(value: str) -> None:
    from probers.nmapdata.service_probes import MAX_FIELD, _cut

    cut = _cut(value)
    assert len(cut) <= MAX_FIELD and value.startswith(cut)
    # before: "...%3a%3" and "...\\xf", broken escapes at the cap
    assert re.fullmatch(r"[^%\\]*(?:%[0-9a-f]{2}|\\x[0-9a-f]{2}|\\\\)*", cut), cut[-8:]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoded_and_cut_values_are_printable_whole_and_bounded(raw: bytes) -> None:
    from probers.nmapdata.service_probes import MAX_FIELD, _cut, _decode

    text = _cut(_decode(raw))
    assert len(text) <= MAX_FIELD and text.isprintable()
    # every backslash starts a whole escape: \xNN or a doubled backslash
    assert re.fullmatch(r"(?:[^\\]|\\x[0-9a-f]{2}|\\\\)*", text), text[-8:]
