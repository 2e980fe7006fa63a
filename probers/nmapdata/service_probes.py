"""nmap-service-probes reader and matcher: nmap's version-detection knowledge, read at run time.

Owns: parsing ``nmap-service-probes`` completely (``Exclude``, ``Probe``,
``ports``, ``sslports``, ``rarity``, ``totalwaitms``, ``tcpwrappedms``,
``fallback``, ``match``, ``softmatch``), compiling every match pattern once at
load time as a Python ``re`` bytes pattern, and matching a response against a
probe's match lines with nmap's fallback rules. The probing itself (sockets,
timing) lives in :mod:`probers.service.nmap_engine`.

Why one file: it is the reader of one file format, nmap's, from its grammar to its
template language; every part follows the same specification page.

Semantics kept from nmap (see https://nmap.org/book/vscan-fileformat.html):

- Probe names repeat across TCP and UDP, so probes are keyed by (proto, name).
- A probe's fallback chain is: itself, then its ``fallback`` probes, then (TCP
  only) the NULL probe, because a banner often arrives whatever we send.
- Patterns use any delimiter after ``m``; the only per-line flags are ``i`` and
  ``s``; matching is ``re.search`` on bytes (PCRE ``pcre_exec`` is unanchored).
- Version templates use any delimiter; ``cpe:`` templates may carry a trailing
  ``a`` flag. Substitutions: ``$1``..``$9``, ``$P(n)`` (printable bytes only),
  ``$SUBST(n,"from","to")``, ``$I(n,">")`` / ``$I(n,"<")`` (unsigned integer from
  big/little-endian bytes). Substituted CPE parts are lowercased and escaped.

Bounded matching: Python's ``re`` has no match limit (PCRE has one) and a single
``search`` call cannot be interrupted from pure Python. We bound the work two
ways: the subject is capped (:data:`MAX_SUBJECT`, 16 KiB: nmap-service-probes
patterns are written for banners, and the cap keeps even a quadratic pattern in
the low milliseconds), and the clock is checked between patterns so that one
response never spends more than its matching budget; when the budget runs out
the outcome says so (``budget_exceeded``) instead of pretending nothing matched.
A truly exponential pattern on a 16 KiB subject could still stall one call;
none of the installed patterns does on the subjects we tested, and callers run
matching off the event loop (``asyncio.to_thread``) so the loop stays live.

Licence: the file is under the Nmap Public Source License; it is read from the
user's nmap installation (see :mod:`probers.nmapdata`) and never copied.

Must not touch: the network, storage, Kafka.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import regex

from probers.nmapdata import (
    NmapDataError,
    c_unescape,
    data_file,
    parse_port_list,
    read_data_file,
)
from schemas.bounded import is_digits

FILE_NAME = "nmap-service-probes"
MAX_SUBJECT = 16 * 1024
DEFAULT_MATCH_BUDGET = 1.0  # seconds of regex work per response
DEFAULT_RARITY = 5
DEFAULT_TOTALWAITMS = 5000
DEFAULT_TCPWRAPPEDMS = 3000
MAX_FIELD = 256  # nmap keeps product/version/info in 80-256 byte buffers

Proto = Literal["tcp", "udp"]


# --------------------------------------------------------------------------- regex


_POSIX_CLASSES = {
    b"alpha": b"a-zA-Z",
    b"digit": b"0-9",
    b"alnum": b"a-zA-Z0-9",
    b"upper": b"A-Z",
    b"lower": b"a-z",
    b"space": b" \\t\\n\\r\\f\\v",
    b"xdigit": b"0-9A-Fa-f",
    b"punct": b"!-/:-@\\[-`{-~",
    b"print": b" -~",
    b"graph": b"!-~",
    b"cntrl": b"\\x00-\\x1f\\x7f",
    b"blank": b" \\t",
    b"word": b"\\w",
}
# Substrings that may need rewriting; patterns without them go to re.compile untouched
# (all of the installed file today), which keeps load time low.
_NEEDS_REWRITE = (
    b"\\z",
    b"\\Z",
    b"\\h",
    b"\\H",
    b"\\e",
    b"\\Q",
    b"{,",
    b"[:",
    b"--",
    b"&&",
    b"~~",
    b"||",
)


def pcre_to_python(pattern: bytes) -> bytes:
    """Rewrite the PCRE constructs whose meaning differs in Python's ``re``.

    - ``\\z`` -> ``\\Z`` (absolute end); PCRE ``\\Z`` (end or before a final
      newline) -> ``(?=\\n?\\Z)``;
    - ``\\h``/``\\H`` (horizontal space) and ``\\e`` (escape), unknown to ``re``;
    - ``\\Q...\\E`` literal spans;
    - ``{,n}``: literal in PCRE 8, a quantifier in Python -> ``\\{,n}``;
    - POSIX classes ``[[:alpha:]]`` and doubled ``--``/``&&``/``~~``/``||`` inside a
      class (literal in PCRE, reserved set operations in Python).
    """
    if not any(tok in pattern for tok in _NEEDS_REWRITE):
        return pattern
    out = bytearray()
    i = 0
    n = len(pattern)
    in_class = False
    while i < n:
        c = pattern[i : i + 1]
        if c == b"\\":
            if i + 1 >= n:
                raise re.error("trailing backslash", pattern, i)
            e = pattern[i + 1 : i + 2]
            if e == b"Q":
                end = pattern.find(b"\\E", i + 2)
                literal = pattern[i + 2 : end if end >= 0 else n]
                out += b"".join(b"\\x%02x" % b for b in literal)
                i = end + 2 if end >= 0 else n
                continue
            if e == b"e":
                out += b"\\x1b"
            elif e == b"h":
                out += b" \\t" if in_class else b"[ \\t]"
            elif e == b"H" and not in_class:
                out += b"[^ \\t]"
            elif e == b"z" and not in_class:
                out += b"\\Z"
            elif e == b"Z" and not in_class:
                out += b"(?=\\n?\\Z)"
            else:
                out += pattern[i : i + 2]
            i += 2
            continue
        if in_class:
            if c == b"[" and pattern.startswith(b"[:", i):
                end = pattern.find(b":]", i + 2)
                name = pattern[i + 2 : end] if end >= 0 else b""
                negated = name.startswith(b"^")
                body = _POSIX_CLASSES.get(name.lstrip(b"^"))
                if body is not None and not negated:
                    out += body
                    i = end + 2
                    continue
            if c == b"[":
                out += b"\\["
            elif c == b"]":
                in_class = False
                out += c
            elif c in (b"-", b"&", b"~", b"|") and pattern[i + 1 : i + 2] == c:
                out += b"\\" + c + b"\\" + c
                i += 2
                continue
            else:
                out += c
            i += 1
            continue
        if c == b"[":
            in_class = True
            out += c
            i += 1
            if pattern[i : i + 1] == b"^":
                out += b"^"
                i += 1
            if pattern[i : i + 1] == b"]":  # a leading ] is a literal member
                out += b"\\]"
                i += 1
            continue
        if c == b"{" and pattern[i + 1 : i + 2] == b",":
            out += b"\\{"
        else:
            out += c
        i += 1
    return bytes(out)


def compile_pattern(pattern: bytes, flags: str) -> re.Pattern[bytes]:
    """Compile an nmap match pattern as a Python bytes regex (flags: only ``i``, ``s``):
    the reference syntax, checked when the file loads. Searches run on the same line
    compiled by the ``regex`` module (``search``)."""
    re_flags = 0
    for flag in flags:
        if flag == "i":
            re_flags |= re.IGNORECASE
        elif flag == "s":
            re_flags |= re.DOTALL
        else:
            raise re.error(f"unsupported pattern flag {flag!r}")
    # A FutureWarning about a "possible nested set" is about Python's future syntax, not
    # about the pattern's meaning today; do not let it escape (no catch_warnings: see
    # ``_quiet_set_syntax``)
    _quiet_set_syntax()
    return re.compile(pcre_to_python(pattern), re_flags)


def _quiet_set_syntax() -> None:
    """Ignore the re/regex FutureWarning about set syntax ("Possible nested set at
    position 3"). Put in front of the process's filters on each use, not in a
    catch_warnings block: that block restores, on exit, the list it saved at entry, so a
    compile ending in one thread dropped a filter another thread had just added (the TLS
    prober's, for the trust bundle's warning, whose raw lines then reached the terminal
    amid a scan; a review). Adding a filter that is there already only moves it."""
    warnings.filterwarnings("ignore", message="Possible ", category=FutureWarning)


# Each line as the ``regex`` module compiles it (None: a line it rejects), compiled on the
# first search of a chain that holds it: ~4x slower to compile than ``re`` (3.5 s for the
# whole file), and most scans never reach nmap's lines (our own probes name the service).
_BOUNDED: dict[tuple[bytes, int], regex.Pattern[bytes] | None] = {}
Bounded = regex.Pattern[bytes] | None


def _bounded(pattern: re.Pattern[bytes]) -> Bounded:
    key = (pattern.pattern, pattern.flags)
    try:
        return _BOUNDED[key]
    except KeyError:
        pass
    try:
        _quiet_set_syntax()
        compiled: Bounded = regex.compile(pattern.pattern,
                                          pattern.flags & (re.IGNORECASE | re.DOTALL))
    except regex.error:
        compiled = None
    _BOUNDED[key] = compiled  # (two threads may both compile it once: the same result)
    return compiled


# A match of either engine (the templates read groups alike)
MatchObject = re.Match[bytes] | regex.Match[bytes]


def search(pattern: re.Pattern[bytes], bounded: Bounded, subject: bytes,
           timeout: float) -> MatchObject | None:
    """``pattern.search(subject)`` in at most ``timeout`` seconds: raises TimeoutError
    past it. Run by ``bounded``, the line compiled by the ``regex`` module: nmap bounds
    each PCRE match (a match limit); Python's ``re`` cannot be stopped once a search
    started and holds the GIL throughout, so one hostile response against a
    backtracking line froze the whole scan for minutes, deaf to SIGTERM (a
    hostile-server review, 2026-12-05: an ordinary HTTP 404 page against lines
    14398-14399). ``regex`` searches take a timeout and release the GIL. A line
    ``regex`` rejects (3 of ~11,900 in Debian's file: a literal ``{`` it reads as a
    quantifier; ``bounded`` None) runs on ``re``: none of them can backtrack."""
    if bounded is None:
        return pattern.search(subject)
    return bounded.search(subject, timeout=max(timeout, 0.001))


# ------------------------------------------------------------------------ templates


@dataclass(frozen=True, slots=True)
class _Var:
    kind: Literal["group", "P", "SUBST", "I"]
    group: int
    args: tuple[bytes, ...] = ()


_Segment = str | _Var


class TemplateError(ValueError):
    pass


def _parse_args(text: str, start: int) -> tuple[list[bytes | int], int]:
    """Arguments of ``$CMD(...)`` from ``start`` (after the parenthesis) to the ``)``."""
    args: list[bytes | int] = []
    i = start
    n = len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ")":
            return args, i + 1
        if i < n and text[i] == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise TemplateError("unterminated string argument")
            try:
                args.append(c_unescape(text[i + 1 : j].encode("latin-1")))
            except ValueError as exc:
                raise TemplateError(str(exc)) from exc
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ",)":
                j += 1
            try:
                args.append(int(text[i:j].strip(), 0))
            except ValueError as exc:
                raise TemplateError(f"bad argument {text[i:j]!r}") from exc
            i = j
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ",":
            i += 1
        elif i < n and text[i] != ")":
            raise TemplateError("expected ',' or ')' between arguments")
    raise TemplateError("missing ')'")


def parse_template(text: str) -> tuple[_Segment, ...]:
    """Split a version template into literal text and substitution variables."""
    if "$" not in text:  # most templates: a fast path that matters for load time
        return (text,) if text else ()
    segments: list[_Segment] = []
    literal: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n and is_digits(text[i + 1]):
            if literal:
                segments.append("".join(literal))
                literal = []
            segments.append(_Var("group", int(text[i + 1])))
            i += 2
            continue
        if ch == "$" and i + 1 < n and text[i + 1].isalpha():
            paren = text.find("(", i)
            name = text[i + 1 : paren] if paren > 0 else ""
            if name in ("P", "SUBST", "I"):
                raw_args, end = _parse_args(text, paren + 1)
                if not raw_args or not isinstance(raw_args[0], int):
                    raise TemplateError(f"${name} needs a group number first")
                rest = raw_args[1:]
                if not all(isinstance(a, bytes) for a in rest):
                    raise TemplateError(f"${name}: string arguments expected after the group")
                str_args = tuple(a for a in rest if isinstance(a, bytes))
                if name == "P" and str_args:
                    raise TemplateError("$P takes one argument")
                if name == "SUBST" and len(str_args) != 2:
                    raise TemplateError("$SUBST takes a group and two strings")
                if name == "I" and str_args not in ((b">",), (b"<",)):
                    raise TemplateError('$I takes a group and ">" or "<"')
                if literal:
                    segments.append("".join(literal))
                    literal = []
                segments.append(_Var(name, raw_args[0], str_args))  # type: ignore[arg-type]
                i = end
                continue
        literal.append(ch)
        i += 1
    if literal:
        segments.append("".join(literal))
    return tuple(segments)


def _printable(raw: bytes) -> bytes:
    return bytes(b for b in raw if 0x20 <= b < 0x7F)


def _decode(raw: bytes) -> str:
    """A group's bytes as text: UTF-8 where it is, a byte that is not as ``\\xNN``, and a
    literal backslash doubled, so that the banner's own text ``1.0\\xff`` never reads
    as the byte 0xff (as ``banners.sanitize`` writes). Control characters are dropped:
    these strings end up in terminals, HTML and SQL."""
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
    return "".join(out)


# One unit of a rendered value: an escape (\xNN, a doubled backslash, a CPE's %NN) or one
# character. A value is cut between units, never inside one (a CPE ending in "%3").
_UNIT = re.compile(r"\\x[0-9a-f]{2}|\\\\|%[0-9a-f]{2}|.", re.S)


def _cut(text: str, limit: int = 0) -> str:
    """``text`` cut to at most ``limit`` (MAX_FIELD) characters, on a unit boundary."""
    limit = limit or MAX_FIELD
    if len(text) <= limit:
        return text
    end = 0
    for unit in _UNIT.finditer(text):
        if unit.end() > limit:
            break
        end = unit.end()
    return text[:end]


_CPE_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._-~")


def cpe_escape(raw: bytes) -> str:
    """Lowercase, and percent-encode anything outside CPE 2.2's unreserved set.

    A ``:`` or ``/`` taken from a banner must not become a CPE field separator.
    """
    out = []
    for b in raw.lower():
        out.append(chr(b) if b in _CPE_SAFE else f"%{b:02x}")
    return "".join(out)


def _group(m: MatchObject, n: int) -> bytes:
    if n < 1 or n > 9 or n > (m.re.groups or 0):
        raise TemplateError(f"no group ${n}")
    return m.group(n) or b""


def render(segments: Sequence[_Segment], m: MatchObject, *, is_cpe: bool = False) -> str:
    """Fill a parsed template from a match; raises TemplateError like nmap's dotmplsubst."""
    out: list[str] = []
    for seg in segments:
        if isinstance(seg, str):
            out.append(seg.lower() if is_cpe else seg)
            continue
        raw = _group(m, seg.group)
        if seg.kind == "P":
            raw = _printable(raw)
        elif seg.kind == "SUBST":
            raw = raw.replace(seg.args[0], seg.args[1]) if seg.args[0] else raw
        elif seg.kind == "I":
            if len(raw) > 8:
                raise TemplateError("$I on more than 8 bytes")
            raw = str(int.from_bytes(raw, "big" if seg.args[0] == b">" else "little")).encode()
        out.append(cpe_escape(raw) if is_cpe else _decode(raw))
    return "".join(out)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Match:
    """What one match line concluded about a response."""

    service: str
    product: str = ""
    version: str = ""
    info: str = ""
    hostname: str = ""
    os: str = ""
    device: str = ""
    cpes: tuple[str, ...] = ()
    is_soft: bool = False
    line: int = 0  # line of the match in nmap-service-probes
    probe: str = ""  # name of the probe whose match line matched (may be a fallback)


_TEMPLATE_FIELDS = {
    "p": "product",
    "v": "version",
    "i": "info",
    "h": "hostname",
    "o": "os",
    "d": "device",
}


@dataclass(frozen=True, slots=True)
class MatchRule:
    """One ``match`` / ``softmatch`` line, compiled."""

    service: str
    pattern: re.Pattern[bytes]
    is_soft: bool
    line: int
    probe: str
    templates: tuple[tuple[str, tuple[_Segment, ...]], ...] = ()
    cpes: tuple[tuple[_Segment, ...], ...] = ()

    def apply(self, m: MatchObject) -> Match:
        values: dict[str, str] = {}
        for name, segments in self.templates:
            try:
                values[name] = _cut(render(segments, m))
            except TemplateError:
                values[name] = ""  # nmap drops a template it cannot fill
        cpes: list[str] = []
        for segments in self.cpes:
            try:
                cpes.append("cpe:/" + _cut(render(segments, m, is_cpe=True)))
            except TemplateError:
                continue
        return Match(
            service=self.service,
            cpes=tuple(cpes),
            is_soft=self.is_soft,
            line=self.line,
            probe=self.probe,
            **values,
        )


@dataclass(slots=True)
class Probe:
    """One ``Probe`` block."""

    proto: Proto
    name: str
    payload: bytes
    line: int
    no_payload: bool = False  # UDP probes nmap only uses to match discovery answers
    ports: frozenset[int] = frozenset()
    sslports: frozenset[int] = frozenset()
    rarity: int = DEFAULT_RARITY
    totalwaitms: int = DEFAULT_TOTALWAITMS
    tcpwrappedms: int = DEFAULT_TCPWRAPPEDMS
    fallback_names: tuple[str, ...] = ()
    matches: list[MatchRule] = field(default_factory=list)

    @property
    def is_null(self) -> bool:
        return self.name == "NULL" and self.proto == "tcp"

    @property
    def services(self) -> frozenset[str]:
        return frozenset(rule.service for rule in self.matches)

    def can_detect(self, service: str) -> bool:
        return any(rule.service == service for rule in self.matches)

    def is_hinted(self, port: int, tls: bool) -> bool:
        return port in (self.sslports if tls else self.ports)


@dataclass(frozen=True, slots=True)
class MatchOutcome:
    """The full story of matching one response."""

    match: Match | None  # the hard match, else the first soft match, else None
    patterns_tried: int
    budget_exceeded: bool = False
    subject_truncated: bool = False

    @property
    def note(self) -> str:
        notes = []
        if self.budget_exceeded:
            notes.append(f"match budget exceeded after {self.patterns_tried} patterns")
        if self.subject_truncated:
            notes.append(f"response truncated to {MAX_SUBJECT} bytes for matching")
        return "; ".join(notes)


# --------------------------------------------------------------------------- parsing


def _split_delimited(text: str, start: int, lineno: int, source: str) -> tuple[str, int]:
    """``text[start]`` is a delimiter; return the body up to the next one and the index after."""
    if start >= len(text):
        raise NmapDataError(source, lineno, "missing delimiter")
    delim = text[start]
    end = text.find(delim, start + 1)
    if end < 0:
        raise NmapDataError(source, lineno, f"no closing {delim!r}")
    return text[start + 1 : end], end + 1


def parse_match_line(line: str, lineno: int, probe: str, source: str = FILE_NAME) -> MatchRule:
    """Parse and compile one ``match``/``softmatch`` line (text decoded as latin-1)."""
    keyword, _, rest = line.partition(" ")
    is_soft = keyword == "softmatch"
    if keyword not in ("match", "softmatch"):
        raise NmapDataError(source, lineno, "expected match or softmatch")
    rest = rest.lstrip()
    service, _, rest = rest.partition(" ")
    rest = rest.lstrip()
    if not service or not rest.startswith("m"):
        raise NmapDataError(source, lineno, "expected '<service> m<delim>pattern<delim>'")
    pattern, i = _split_delimited(rest, 1, lineno, source)
    flags_start = i
    while i < len(rest) and not rest[i].isspace():
        i += 1
    flags = rest[flags_start:i]
    try:
        compiled = compile_pattern(pattern.encode("latin-1"), flags)
    except re.error as exc:
        raise NmapDataError(source, lineno, f"pattern does not compile: {exc}") from exc
    templates: dict[str, tuple[_Segment, ...]] = {}
    cpes: list[tuple[_Segment, ...]] = []
    n = len(rest)
    while True:
        while i < n and rest[i].isspace():
            i += 1
        if i >= n:
            break
        try:
            if rest.startswith("cpe:", i):
                body, i = _split_delimited(rest, i + 4, lineno, source)
                while i < n and not rest[i].isspace():  # trailing flags: only 'a' exists
                    if rest[i] != "a":
                        raise NmapDataError(source, lineno, f"unknown cpe flag {rest[i]!r}")
                    i += 1
                cpes.append(parse_template(body))
                continue
            mode = rest[i]
            if mode not in _TEMPLATE_FIELDS:
                raise NmapDataError(source, lineno, f"unknown template {mode!r}")
            body, i = _split_delimited(rest, i + 1, lineno, source)
            # A repeated template replaces the earlier one, as in nmap.
            templates[_TEMPLATE_FIELDS[mode]] = parse_template(body)
        except TemplateError as exc:
            raise NmapDataError(source, lineno, f"bad template: {exc}") from exc
    return MatchRule(
        service=service,
        pattern=compiled,
        is_soft=is_soft,
        line=lineno,
        probe=probe,
        templates=tuple(templates.items()),
        cpes=tuple(cpes),
    )


def _parse_probe_line(rest: str, lineno: int, source: str) -> Probe:
    # Probe <TCP|UDP> <name> q<delim><string><delim> [no-payload]
    parts = rest.split(None, 2)
    if len(parts) < 3 or parts[0].upper() not in ("TCP", "UDP"):
        raise NmapDataError(source, lineno, "expected 'Probe <TCP|UDP> <name> q|...|'")
    proto: Proto = "tcp" if parts[0].upper() == "TCP" else "udp"
    name, spec = parts[1], parts[2].strip()
    if not spec.startswith("q"):
        raise NmapDataError(source, lineno, "probe string must start with q")
    body, end = _split_delimited(spec, 1, lineno, source)
    options = spec[end:].split()
    unknown = [o for o in options if o != "no-payload"]
    if unknown:
        raise NmapDataError(source, lineno, f"unknown probe option {unknown[0]!r}")
    try:
        payload = c_unescape(body.encode("latin-1"))
    except ValueError as exc:
        raise NmapDataError(source, lineno, f"bad probe string: {exc}") from exc
    return Probe(proto, name, payload, lineno, no_payload="no-payload" in options)


def _parse_exclude(text: str, lineno: int, source: str) -> dict[str, frozenset[int]]:
    # Exclude T:9100-9107,U:30000-40000,53 (no prefix: both protocols), like nmap -p.
    out: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    current: tuple[str, ...] = ("tcp", "udp")
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part[:2].upper() in ("T:", "U:"):
            current = ("tcp",) if part[0].upper() == "T" else ("udp",)
            part = part[2:]
        try:
            ports = parse_port_list(part)
        except ValueError as exc:
            raise NmapDataError(source, lineno, f"bad Exclude: {exc}") from exc
        for proto in current:
            out[proto].update(ports)
    return {k: frozenset(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- the DB


class ProbeDB:
    """All probes of nmap-service-probes, compiled, with nmap's matching rules."""

    def __init__(
        self,
        probes: Iterable[Probe],
        exclude: dict[str, frozenset[int]] | None = None,
        source: str = FILE_NAME,
    ) -> None:
        self.source = source
        self.exclude = exclude or {"tcp": frozenset(), "udp": frozenset()}
        self._all: list[Probe] = list(probes)
        self._by_key: dict[tuple[str, str], Probe] = {}
        for probe in self._all:
            self._by_key.setdefault((probe.proto, probe.name), probe)
        self._chains: dict[tuple[str, str], tuple[Probe, ...]] = {}
        # a chain's lines with their ``regex`` patterns, built on its first match
        self._bounded_chains: dict[tuple[str, str], list[tuple[MatchRule, Bounded]]] = {}
        self._service_rules: dict[tuple[str, str, str], list[MatchRule]] = {}
        self._ordered: dict[str, list[Probe]] = {}
        self._names: dict[str, frozenset[str]] = {}  # services some line names, per proto
        self.load_seconds = 0.0
        for probe in self._all:
            self._chains[(probe.proto, probe.name)] = self._chain(probe)

    # -- loading

    @classmethod
    def parse(cls, text: bytes, source: str = FILE_NAME) -> ProbeDB:
        started = time.perf_counter()
        probes: list[Probe] = []
        exclude: dict[str, frozenset[int]] | None = None
        current: Probe | None = None
        for lineno, raw in enumerate(text.decode("latin-1").split("\n"), 1):
            line = raw.rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            line = line.lstrip()
            directive, _, rest = line.partition(" ")
            if directive == "Exclude":
                if probes or exclude is not None:
                    raise NmapDataError(source, lineno, "one Exclude, before the first Probe")
                exclude = _parse_exclude(rest, lineno, source)
                continue
            if directive == "Probe":
                current = _parse_probe_line(rest, lineno, source)
                probes.append(current)
                continue
            if current is None:
                raise NmapDataError(source, lineno, f"{directive!r} before the first Probe")
            value = rest.strip()
            try:
                if directive in ("match", "softmatch"):
                    current.matches.append(parse_match_line(line, lineno, current.name, source))
                elif directive == "ports":
                    current.ports = parse_port_list(value)
                elif directive == "sslports":
                    current.sslports = parse_port_list(value)
                elif directive == "rarity":
                    current.rarity = int(value)
                    if not 1 <= current.rarity <= 9:
                        raise ValueError("rarity must be 1-9")
                elif directive == "totalwaitms":
                    current.totalwaitms = int(value)
                    if not 100 <= current.totalwaitms <= 300_000:
                        raise ValueError("totalwaitms must be 100-300000")
                elif directive == "tcpwrappedms":
                    current.tcpwrappedms = int(value)
                    if not 100 <= current.tcpwrappedms <= 300_000:
                        raise ValueError("tcpwrappedms must be 100-300000")
                elif directive == "fallback":
                    names = value.replace(",", " ").split()
                    current.fallback_names = tuple(names)
                else:
                    raise NmapDataError(source, lineno, f"unknown directive {directive!r}")
            except ValueError as exc:
                if isinstance(exc, NmapDataError):
                    raise
                raise NmapDataError(source, lineno, str(exc)) from exc
        db = cls(probes, exclude, source)
        db.load_seconds = time.perf_counter() - started
        return db

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ProbeDB:
        """Read and compile nmap-service-probes (NmapDataUnavailable when not installed)."""
        resolved = data_file(FILE_NAME, path)
        return cls.parse(read_data_file(FILE_NAME, resolved), str(resolved))

    @classmethod
    def shared(cls, path: str | os.PathLike[str] | None = None) -> ProbeDB:
        """A process-wide ProbeDB, loaded and compiled once per file."""
        key = str(data_file(FILE_NAME, path))
        with _shared_lock:
            if key not in _shared:
                _shared[key] = cls.load(key)
            return _shared[key]

    # -- lookups

    def __len__(self) -> int:
        return len(self._all)

    @property
    def match_count(self) -> int:
        return sum(len(p.matches) for p in self._all)

    def probe(self, proto: str, name: str) -> Probe | None:
        return self._by_key.get((proto.lower(), name))

    def null_probe(self) -> Probe | None:
        return self._by_key.get(("tcp", "NULL"))

    def can_name(self, proto: str, service: str) -> bool:
        """Some match line of a ``proto`` probe (NULL's included) names ``service``: else
        no probe can (Kafka: nmap-service-probes has no line for it)."""
        proto = proto.lower()
        names = self._names.get(proto)
        if names is None:
            names = self._names[proto] = frozenset(
                name for p in self._all if p.proto == proto for name in p.services)
        return service in names

    def is_excluded(self, proto: str, port: int) -> bool:
        """Ports nmap never version-probes (printers print whatever they are sent)."""
        return port in self.exclude.get(proto.lower(), frozenset())

    def probes(self, proto: str) -> list[Probe]:
        """Probes of ``proto`` except NULL, by rarity, ties in file order."""
        proto = proto.lower()
        if proto not in self._ordered:
            chosen = [p for p in self._all if p.proto == proto and not p.is_null]
            chosen.sort(key=lambda p: p.rarity)
            self._ordered[proto] = chosen
        return list(self._ordered[proto])

    def probes_for_port(
        self,
        proto: str,
        port: int,
        tls: bool = False,
        max_rarity: int = 7,
        *,
        softmatched: str | None = None,
    ) -> list[Probe]:
        """The probes to send, in order, after the NULL probe.

        First the probes whose ``ports`` (or ``sslports`` over TLS) name the port,
        whatever their rarity (as nmap does); then the others up to ``max_rarity``.
        ``no-payload`` probes are never sent. After a soft match, only probes that
        can identify the soft-matched service remain.
        """
        hinted: list[Probe] = []
        others: list[Probe] = []
        for probe in self.probes(proto):
            if probe.no_payload:
                continue
            if softmatched is not None and not probe.can_detect(softmatched):
                continue
            if probe.is_hinted(port, tls):
                hinted.append(probe)
            elif probe.rarity <= max_rarity:
                others.append(probe)
        return hinted + others

    def _chain(self, probe: Probe) -> tuple[Probe, ...]:
        chain: list[Probe] = [probe]
        for name in probe.fallback_names:
            # nmap looks fallbacks up in the probe's own protocol; the TCP DNS probes
            # name their UDP twins, so fall back to any protocol rather than fail.
            target = self._by_key.get((probe.proto, name)) or next(
                (p for p in self._all if p.name == name), None
            )
            if target is None:
                raise NmapDataError(self.source, probe.line, f"unknown fallback {name!r}")
            if target not in chain:
                chain.append(target)
        null = self.null_probe()
        if probe.proto == "tcp" and null is not None and null not in chain:
            chain.append(null)
        return tuple(chain)

    def fallback_chain(self, probe: Probe) -> tuple[Probe, ...]:
        """The probes whose match lines apply to ``probe``'s response, in order."""
        return self._chains.get((probe.proto, probe.name)) or self._chain(probe)

    # -- matching

    def match(
        self, probe: Probe, response: bytes, *, budget: float = DEFAULT_MATCH_BUDGET
    ) -> Match | None:
        """Hard match for ``response`` across the fallback chain, else the first soft match."""
        return self.match_detailed(probe, response, budget=budget).match

    def warm(self) -> None:
        """Compile the NULL probe's lines, the chain every other TCP chain falls back to
        (~11,000 lines, seconds on a slow machine): done once, before a port's budget
        runs, so the first port that needs nmap is not the one that pays for it (the
        first xrdp of a process read unnamed on a slower machine)."""
        null = self.null_probe()
        if null is not None:
            self._bounded_chain(null)

    def warm_probe(self, proto: str, name: str, service: str = "") -> None:
        """Compile probe ``name``'s chain (its lines and its fallbacks'), as ``warm`` does
        NULL's: before an answer to it is matched, outside any port's budget. With
        ``service``: only its lines naming that service (``service_rules``)."""
        probe = self.probe(proto, name)
        if probe is None:
            return
        if service:
            for rule in self.service_rules(probe, service):
                _bounded(rule.pattern)
        else:
            self._bounded_chain(probe)

    def service_rules(self, probe: Probe, service: str) -> list[MatchRule]:
        """The lines of ``probe``'s chain that name ``service``: a guess of the service
        read again (an SSH greeting's software) compiles ~100 of NULL's ~4,000 lines, not
        all (2.6 s more for a scan whose one odd sshd was its only unknown: a review)."""
        key = (probe.proto, probe.name, service)
        rules = self._service_rules.get(key)
        if rules is None:
            rules = self._service_rules[key] = [
                rule for p in self.fallback_chain(probe) for rule in p.matches
                if rule.service == service]
        return rules

    def _bounded_chain(self, probe: Probe) -> list[tuple[MatchRule, Bounded]]:
        key = (probe.proto, probe.name)
        pairs = self._bounded_chains.get(key)
        if pairs is None:
            pairs = [(rule, _bounded(rule.pattern)) for p in self.fallback_chain(probe)
                     for rule in p.matches]
            self._bounded_chains[key] = pairs
        return pairs

    def match_detailed(
        self,
        probe: Probe,
        response: bytes,
        *,
        budget: float = DEFAULT_MATCH_BUDGET,
        rules: Iterable[MatchRule] | None = None,
    ) -> MatchOutcome:
        """Match with accounting: patterns tried, budget exceeded, truncation."""
        truncated = len(response) > MAX_SUBJECT
        subject = response[:MAX_SUBJECT]
        if not subject:
            return MatchOutcome(None, 0)
        # compiled before the budget starts (a chain's first search would spend it
        # compiling), once per chain
        pairs = (self._bounded_chain(probe) if rules is None
                 else [(rule, _bounded(rule.pattern)) for rule in rules])
        deadline = time.monotonic() + budget
        soft: Match | None = None
        tried = 0
        for rule, bounded in pairs:
            if time.monotonic() > deadline:
                return MatchOutcome(soft, tried, budget_exceeded=True, subject_truncated=truncated)
            if soft is not None and rule.is_soft:
                continue
            tried += 1
            try:
                m = search(rule.pattern, bounded, subject, deadline - time.monotonic())
            except TimeoutError:  # this line alone ran past the budget (backtracking)
                return MatchOutcome(soft, tried, budget_exceeded=True, subject_truncated=truncated)
            if m is None:
                continue
            if rule.is_soft:
                soft = rule.apply(m)
                continue
            return MatchOutcome(rule.apply(m), tried, subject_truncated=truncated)
        return MatchOutcome(soft, tried, subject_truncated=truncated)

    def match_response(
        self,
        proto: str,
        port: int,
        response: bytes,
        *,
        tls: bool = False,
        budget: float = DEFAULT_MATCH_BUDGET,
    ) -> MatchOutcome:
        """Match a response whose probe is unknown (a banner or a discovery answer).

        TCP: the response is what the port said unprompted, so the NULL probe's
        lines apply. UDP: the lines of the probes hinted for the port (the answer
        is to its own protocol's request) and of the no-payload probes (answers
        nobody asked for), each line at most once. Not every UDP probe's: a reply to
        a payload those probes never sent matched their loosest lines (a DNS answer
        on a high port read as "pc-duo"); the probes themselves are nmap_identify's
        next step, each answer matched against its own probe's lines.
        """
        proto = proto.lower()
        null = self.null_probe()
        if proto == "tcp":
            if null is None:
                return MatchOutcome(None, 0)
            return self.match_detailed(null, response, budget=budget)
        probes = self.probes(proto)
        ordered = ([p for p in probes if not p.no_payload and p.is_hinted(port, tls)]
                   + [p for p in probes if p.no_payload])

        def rules() -> Iterable[MatchRule]:
            seen: set[int] = set()
            for probe in ordered:
                for owner in self.fallback_chain(probe):
                    if id(owner) in seen:
                        continue
                    seen.add(id(owner))
                    yield from owner.matches

        anchor = ordered[0] if ordered else None
        if anchor is None:
            return MatchOutcome(None, 0)
        return self.match_detailed(anchor, response, budget=budget, rules=rules())


_shared: dict[str, ProbeDB] = {}
_shared_lock = threading.Lock()


__all__ = [
    "DEFAULT_MATCH_BUDGET",
    "MAX_SUBJECT",
    "Match",
    "MatchOutcome",
    "MatchRule",
    "Probe",
    "ProbeDB",
    "TemplateError",
    "compile_pattern",
    "cpe_escape",
    "parse_match_line",
    "parse_template",
    "pcre_to_python",
    "render",
]
