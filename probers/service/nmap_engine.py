"""nmap -sV in small: identify one port with the user's nmap-service-probes.

Owns: the probing loop over a :class:`~probers.nmapdata.service_probes.ProbeDB`
for one (ip, port, proto): the NULL probe (wait for a banner), then the probes
hinted for the port, then the others by rarity up to ``max_rarity``; one
connection per probe (the sslyze rule that keeps per-host politeness
enforceable); each probe bounded by its ``totalwaitms``, a per-probe cap and the
overall budget; reads capped at :data:`READ_CAP`; stop at the first hard match;
a soft match narrows the remaining probes to those that can identify that
service. Over TLS (``tls=True``, or automatically when a plain probe finds the
port speaks TLS) the same probes run inside a permissive stdlib TLS client, so
``ssl/http nginx`` is found on any port.

Failures are data: a refused connection, a reset, a stalled handshake or an
exhausted budget is reported in ``ServiceInfo.method`` with the probes that were
sent in ``tried``; an unidentified port never reads as "nothing there".

Must not touch: Kafka, storage, the nmap data files themselves (see
:mod:`probers.nmapdata`). Sends packets only to the address it is given; scope
checks are the caller's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from probers.nmapdata.service_probes import (
    DEFAULT_MATCH_BUDGET,
    Match,
    MatchOutcome,
    Probe,
    ProbeDB,
)
from probers.service.app_protocols import carries_snmp_community
from probers.service.banners import sanitize as sanitize_banner
from schemas.records import ServiceInfo

READ_CAP = 16 * 1024  # bytes kept per probe response (nmap-service-probes banners are short)
BANNER_CAP = 512  # characters of sanitized banner in ServiceInfo
MAX_MATCH_ROUNDS = 6  # re-matches while a response trickles in, per probe
MIN_PROBE_TIME = 0.05  # do not start a probe with less budget than this
DEFAULT_WAIT_CAP = 3.0  # seconds, per probe, unless the caller says otherwise
CONFIDENCE_HARD = 10
CONFIDENCE_TCPWRAPPED = 8
CONFIDENCE_SOFT = 5
# How long a probe (not the NULL probe: greetings may wait on a reverse DNS lookup) waits
# for its answer: this many connect times, at least ANSWER_FLOOR, at most the probe's own
# wait. 0 turns the adaptation off (nmap's fixed waits).
ANSWER_RTTS = 20
ANSWER_FLOOR = 0.5  # seconds


def tls_client_context() -> ssl.SSLContext:
    """A TLS client that talks to anything: no verification, every cipher, old versions.

    Identification needs the application protocol behind TLS, not a trust
    decision (that is the TLS prober's job).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    # Deprecated as a policy, still what an old server on the Internet speaks. The filter
    # goes in front of the process's list, not in a catch_warnings block: such a block
    # puts back, on exit, the list it saved, dropping a filter another thread added
    # meanwhile (the TLS prober's, around the trust bundle: its warning's raw lines
    # reached the terminal amid a scan; a review)
    warnings.filterwarnings("ignore", message=r"ssl\.TLSVersion\.TLSv1 is deprecated",
                            category=DeprecationWarning)
    with contextlib.suppress(ValueError, ssl.SSLError):
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.options |= getattr(ssl, "OP_LEGACY_SERVER_CONNECT", 0)
    return ctx


@dataclass(slots=True)
class _Exchange:
    """One probe on one connection (or one datagram)."""

    data: bytes = b""
    error: str = ""  # the connection failed before any answer
    is_closed: bool = False  # the peer closed (TCP EOF)
    elapsed: float = 0.0  # connect (and handshake) to end of reading, seconds
    outcome: MatchOutcome | None = None  # the last match on ``data`` (if matched while reading)


@dataclass(slots=True)
class _State:
    tried: list[str] = field(default_factory=list)
    soft: Match | None = None
    soft_probe: str = ""
    banner: bytes = b""
    notes: list[str] = field(default_factory=list)


class _Identifier:
    def __init__(
        self,
        ip: str,
        port: int,
        proto: str,
        db: ProbeDB,
        *,
        budget: float,
        max_rarity: int,
        probe_wait: float | None,
        null_wait: float | None,
        match_budget: float,
        only_service: str = "",
        answer_rtts: int = ANSWER_RTTS,
        allow_snmp_community: bool = False,
    ) -> None:
        self.ip = ip
        self.answer_rtts = answer_rtts
        self.allow_snmp_community = allow_snmp_community
        # Our own probe already named the service but not its product: only the
        # probes that can name an implementation of that service are worth sending.
        self.only_service = only_service
        self.port = port
        self.proto = proto.lower()
        self.db = db
        self.max_rarity = max_rarity
        self.match_budget = match_budget
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.deadline = loop.time() + budget
        # Waiting nmap's full totalwaitms (5-6 s) per probe would spend a whole
        # budget on one silent probe; by default a probe gets about a third of it,
        # between 0.5 and 3 s (answers to a probe come within an RTT or two).
        share = min(max(0.5, budget * 0.3), DEFAULT_WAIT_CAP)
        self.probe_wait = probe_wait if probe_wait is not None else share
        self.null_wait = null_wait if null_wait is not None else share
        self.state = _State()

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

    async def _match(self, probe: Probe, data: bytes) -> MatchOutcome:
        # Regex work runs off the loop, and the regex module lets go of the GIL while it
        # searches (each search bounded by the budget): a slow pattern stalls no scan.
        return await asyncio.to_thread(
            self.db.match_detailed, probe, data, budget=self.match_budget
        )

    def _matcher(self, probe: Probe) -> Callable[[bytes], Awaitable[MatchOutcome]]:
        async def match(data: bytes) -> MatchOutcome:
            return await self._match(probe, data)

        return match

    # -- transport

    async def _tcp(
        self,
        payload: bytes,
        wait: float,
        ssl_ctx: ssl.SSLContext | None,
        on_data: Callable[[bytes], Awaitable[MatchOutcome]] | None,
    ) -> _Exchange:
        started = self.loop.time()
        result = _Exchange()
        wait = max(0.0, min(wait, self.remaining()))
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.ip,
                    self.port,
                    ssl=ssl_ctx,
                    ssl_handshake_timeout=max(wait, 0.1) if ssl_ctx else None,
                ),
                timeout=max(wait, 0.1),
            )
        except TimeoutError:
            result.error = "TLS handshake timed out" if ssl_ctx else "connect timed out"
            result.elapsed = self.loop.time() - started
            return result
        except ssl.SSLError as exc:
            result.error = f"TLS handshake failed: {exc.reason or exc}"
            result.elapsed = self.loop.time() - started
            return result
        except OSError as exc:
            result.error = f"connect failed: {exc.strerror or exc}"
            result.elapsed = self.loop.time() - started
            return result
        if payload and self.answer_rtts:
            # A service that speaks the probe's protocol answers within a few round trips;
            # waiting nmap's totalwaitms on every silent probe is what made a port nmap
            # names only with its 10th probe cost tens of seconds (slapd on a free port).
            connected = self.loop.time() - started
            wait = min(wait, connected + max(ANSWER_FLOOR, self.answer_rtts * connected))
        read_deadline = started + wait
        buf = bytearray()
        rounds = 0
        matched_len = -1
        try:
            if payload:
                writer.write(payload)
                await asyncio.wait_for(writer.drain(), timeout=max(wait, 0.1))
            while len(buf) < READ_CAP:
                left = read_deadline - self.loop.time()
                if left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(reader.read(READ_CAP - len(buf)), left)
                except TimeoutError:
                    break
                if not chunk:
                    result.is_closed = True
                    break
                buf += chunk
                if on_data is not None and rounds < MAX_MATCH_ROUNDS:
                    rounds += 1
                    result.outcome = await on_data(bytes(buf))
                    matched_len = len(buf)
                    if result.outcome.match is not None and not result.outcome.match.is_soft:
                        break
        except TimeoutError:
            if not buf:
                result.error = "send timed out"
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            # A reset or a TLS alert after some data ends the answer; before any, it is the answer.
            result.is_closed = True
            if not buf and not isinstance(exc, ssl.SSLError):
                result.error = f"connection reset: {exc}"
        finally:
            writer.transport.abort()
        result.data = bytes(buf)
        if matched_len != len(buf):
            result.outcome = None  # more arrived after the last match: the caller re-matches
        result.elapsed = self.loop.time() - started
        return result

    async def _udp(self, payload: bytes, wait: float) -> _Exchange:
        started = self.loop.time()
        result = _Exchange()
        received: asyncio.Future[bytes] = self.loop.create_future()

        class _Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if not received.done():
                    received.set_result(data[:READ_CAP])

            def error_received(self, exc: Exception) -> None:
                if not received.done():
                    received.set_exception(exc)

        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                _Proto, remote_addr=(self.ip, self.port)
            )
        except OSError as exc:
            result.error = f"socket failed: {exc.strerror or exc}"
            return result
        try:
            transport.sendto(payload)
            result.data = await asyncio.wait_for(received, max(0.0, min(wait, self.remaining())))
        except TimeoutError:
            pass
        except ConnectionRefusedError:
            result.error = "port unreachable (ICMP): closed"
        except OSError as exc:
            result.error = f"receive failed: {exc.strerror or exc}"
        finally:
            transport.close()
        result.elapsed = self.loop.time() - started
        return result

    # -- the algorithm

    def _result(
        self,
        match: Match | None,
        sent_probe: str,
        *,
        tls: bool,
        method: str = "",
        data: bytes = b"",
    ) -> ServiceInfo:
        banner = sanitize_banner(data or self.state.banner)
        tried = tuple(self.state.tried)
        if match is None:
            notes = "; ".join(dict.fromkeys(self.state.notes))
            return ServiceInfo(
                is_tls=tls,
                banner=banner,
                method=method or ("nmap:no match" + (f" ({notes})" if notes else "")),
                confidence=0,
                tried=tried,
            )
        return info_of_match(match, sent_probe, tls=tls, banner=banner, tried=tried)

    def _note_outcome(self, outcome: MatchOutcome) -> None:
        if outcome.note:
            self.state.notes.append(outcome.note)

    def _take_soft(self, match: Match, probe_name: str) -> None:
        if self.state.soft is None:
            self.state.soft = match
            self.state.soft_probe = probe_name

    async def run_tcp(self, tls: bool, first_response: bytes | None) -> ServiceInfo:
        ssl_ctx = tls_client_context() if tls else None
        label = "tls:" if tls else ""
        null = self.db.null_probe()
        if null is not None and first_response is not None and not tls:
            # Discovery already holds the banner: match it instead of waiting again.
            self.state.banner = first_response[:READ_CAP]
            outcome = await self._match(null, self.state.banner)
            self._note_outcome(outcome)
            if outcome.match is not None and not outcome.match.is_soft:
                return self._result(outcome.match, "NULL", tls=tls)
            if outcome.match is not None:
                self._take_soft(outcome.match, "NULL")
        elif null is not None:
            self.state.tried.append(label + "NULL")
            wait = min(null.totalwaitms / 1000, self.null_wait)
            ex = await self._tcp(b"", wait, ssl_ctx, self._matcher(null))
            if ex.error:
                return self._result(None, "NULL", tls=tls, method=f"nmap:error: {ex.error}")
            if ex.data:
                self.state.banner = self.state.banner or ex.data
                outcome = ex.outcome or await self._match(null, ex.data)
                self._note_outcome(outcome)
                if outcome.match is not None and not outcome.match.is_soft:
                    return self._result(outcome.match, "NULL", tls=tls, data=ex.data)
                if outcome.match is not None:
                    self._take_soft(outcome.match, "NULL")
            elif ex.is_closed and ex.elapsed * 1000 < null.tcpwrappedms:
                # Accepted then closed without a word: a TCP wrapper or an access list.
                return ServiceInfo(
                    service="tcpwrapped",
                    is_tls=tls,
                    method="nmap:tcpwrapped (closed by peer before any data)",
                    confidence=CONFIDENCE_TCPWRAPPED,
                    tried=tuple(self.state.tried),
                )
        return await self._probe_loop(tls, ssl_ctx, label)

    async def _probe_loop(
        self, tls: bool, ssl_ctx: ssl.SSLContext | None, label: str
    ) -> ServiceInfo:
        candidates = self.db.probes_for_port(self.proto, self.port, tls, self.max_rarity)
        if not self.allow_snmp_community:
            # SNMPv1public asks with the "public" community: a credential guess, only
            # when the user allows it (snmp_public_community; a review)
            candidates = [p for p in candidates if not carries_snmp_community(p.payload)]
        if self.only_service:
            # A probe can name the service through its own match lines or through its
            # fallbacks' (NULL's included): xrdp is named by NULL's lines matching the
            # answer to RPCCheck, exactly as nmap -sV names it.
            candidates = [p for p in candidates if any(
                q.can_detect(self.only_service) for q in self.db.fallback_chain(p))]
        for index, probe in enumerate(candidates):
            soft = self.state.soft
            if soft is not None and not probe.can_detect(soft.service):
                continue
            if self.remaining() < MIN_PROBE_TIME:
                left = len(candidates) - index
                self.state.notes.append(f"budget exhausted, {left} probes not sent")
                break
            self.state.tried.append(label + probe.name)
            wait = min(probe.totalwaitms / 1000, self.probe_wait)
            if self.proto == "udp":
                ex = await self._udp(probe.payload, wait)
                if ex.error.startswith("port unreachable"):
                    return self._result(None, probe.name, tls=tls, method=f"nmap:error: {ex.error}")
            else:
                ex = await self._tcp(probe.payload, wait, ssl_ctx, self._matcher(probe))
            if ex.error:
                self.state.notes.append(f"{probe.name}: {ex.error}")
                continue
            if not ex.data:
                continue
            self.state.banner = self.state.banner or ex.data
            outcome = ex.outcome or await self._match(probe, ex.data)
            self._note_outcome(outcome)
            match = outcome.match
            if match is None:
                continue
            if not match.is_soft:
                return self._result(match, probe.name, tls=tls, data=ex.data)
            self._take_soft(match, probe.name)
        if self.state.soft is not None:
            return self._result(self.state.soft, self.state.soft_probe, tls=tls)
        return self._result(None, "", tls=tls)

    async def run_udp(self, first_response: bytes | None) -> ServiceInfo:
        if first_response:
            self.state.banner = first_response[:READ_CAP]
            outcome = await asyncio.to_thread(
                self.db.match_response,
                "udp",
                self.port,
                self.state.banner,
                budget=self.match_budget,
            )
            self._note_outcome(outcome)
            if outcome.match is not None and not outcome.match.is_soft:
                return self._result(outcome.match, "discovery", tls=False)
            if outcome.match is not None:
                self._take_soft(outcome.match, "discovery")
        return await self._probe_loop(False, None, "")



def info_of_match(match: Match, sent_probe: str, *, tls: bool, banner: str = "",
                  tried: tuple[str, ...] = ()) -> ServiceInfo:
    """What one nmap match line names, as a ``ServiceInfo`` (``sent_probe``: the probe
    whose answer it read)."""
    extra = [match.info] if match.info else []
    extra += [
        f"{label}: {value}"
        for label, value in (
            ("host", match.hostname),
            ("os", match.os),
            ("device", match.device),
        )
        if value
    ]
    via = f" via {match.probe}" if match.probe and match.probe != sent_probe else ""
    kind = "softmatch " if match.is_soft else ""
    service = match.service
    if service.startswith("ssl/"):
        # nmap names a TLS-wrapped service "ssl/<service>" (e.g. a plain request
        # answered by an HTTPS port): keep the service, flag the TLS.
        service, tls = service[4:], True
    return ServiceInfo(
        service=service,
        product=match.product,
        version=match.version,
        extra_info="; ".join(extra),
        cpe=" ".join(match.cpes),
        is_tls=tls,
        banner=banner,
        method=f"nmap:{kind}{sent_probe} line {match.line}{via}",
        confidence=CONFIDENCE_SOFT if match.is_soft else CONFIDENCE_HARD,
        tried=tried,
    )


def _speaks_tls(info: ServiceInfo) -> bool:
    return info.service == "ssl" and not info.is_tls


async def nmap_identify(
    ip: str,
    port: int,
    proto: str,
    db: ProbeDB,
    *,
    tls: bool = False,
    budget: float = 5.0,
    max_rarity: int = 7,
    first_response: bytes | None = None,
    probe_wait: float | None = None,
    null_wait: float | None = None,
    match_budget: float = DEFAULT_MATCH_BUDGET,
    upgrade_tls: bool = True,
    only_service: str = "",
    answer_rtts: int = ANSWER_RTTS,
    allow_snmp_community: bool = False,
) -> ServiceInfo:
    """Identify the service on ``ip:port/proto`` the way ``nmap -sV`` does, within ``budget`` s.

    ``tls``: speak TLS first (the caller knows the port is TLS). ``first_response``:
    a banner (TCP) or datagram (UDP) discovery already received. ``probe_wait`` /
    ``null_wait``: per-probe and NULL-probe wait caps (default: 30 % of the budget,
    0.5 to 3 s, never more than the probe's ``totalwaitms``). ``upgrade_tls``:
    when plain probes find TLS (service ``ssl``), repeat inside TLS with what is
    left of the budget, as nmap's SSL tunnel does. ``only_service``: the service is
    already known (our own probe named it without a product): send only the probes
    that can name that service, as nmap does after a soft match. ``answer_rtts``: a
    probe's answer is awaited for this many connect times (at least ``ANSWER_FLOOR``,
    at most its wait cap); 0 waits the full cap as nmap does. ``allow_snmp_community``:
    send the probes that ask with an SNMP community ("public": a credential guess).

    Never raises for network conditions: failures come back in ``method``.
    """
    proto = proto.lower()
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto must be tcp or udp, not {proto!r}")
    if db.is_excluded(proto, port):
        return ServiceInfo(method="nmap:not probed (Exclude directive of nmap-service-probes)")
    if only_service and not db.can_name(proto, only_service):
        # Nothing to send: the NULL probe alone would wait out its greeting window
        return ServiceInfo(method=f"nmap:not probed (no match line names {only_service})")
    ident = _Identifier(
        ip,
        port,
        proto,
        db,
        budget=budget,
        max_rarity=max_rarity,
        probe_wait=probe_wait,
        null_wait=null_wait,
        match_budget=match_budget,
        only_service=only_service,
        answer_rtts=answer_rtts,
        allow_snmp_community=allow_snmp_community,
    )
    # Every step is bounded; this outer limit only catches the sum of rounding.
    hard_limit = budget + match_budget + 2.0
    try:
        async with asyncio.timeout(hard_limit):
            if proto == "udp":
                return await ident.run_udp(first_response)
            info = await ident.run_tcp(tls, first_response)
            if upgrade_tls and _speaks_tls(info) and ident.remaining() > MIN_PROBE_TIME:
                plain_tried = info.tried
                ident.state = _State(tried=list(plain_tried))
                tls_info = await ident.run_tcp(True, None)
                if tls_info.is_identified:
                    return tls_info
                return ServiceInfo(
                    service=info.service,
                    product=info.product,
                    version=info.version,
                    extra_info=info.extra_info,
                    cpe=info.cpe,
                    is_tls=True,
                    banner=info.banner,
                    method=info.method + "; inside TLS: " + tls_info.method,
                    confidence=info.confidence,
                    tried=tls_info.tried,
                )
            return info
    except TimeoutError:
        return ServiceInfo(
            is_tls=tls,
            banner=sanitize_banner(ident.state.banner),
            method=f"nmap:error: identification exceeded {hard_limit:.1f} s",
            tried=tuple(ident.state.tried),
        )


__all__ = ["READ_CAP", "info_of_match", "nmap_identify", "sanitize_banner",
           "tls_client_context"]
