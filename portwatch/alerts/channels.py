"""Channels: render a digest of change events and send it to one channel.

Owns: the message text (title and body naming every event), portwatch's signed webhook
(JSON body; ``X-Portwatch-Timestamp`` = unix seconds and ``X-Portwatch-Signature`` =
``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with the channel's secret) and the
apprise send. A send returns a result (ok, or the error in one line); it never raises.

Must not touch: the store or delivery state (the dispatcher owns those), and never puts a
secret or a credential-bearing URL in an error message or a log line.

Outbound only to the URLs the user configured: this is delivery to their own channels,
not scanning.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from portwatch.alerts.config import (
    AppriseChannel,
    Channel,
    WebhookChannel,
    mask_urls,
    send_seconds,
)
from portwatch.log_filters import mask_pieces
from schemas.records import ChangeEvent

SIGNATURE_HEADER = "X-Portwatch-Signature"
TIMESTAMP_HEADER = "X-Portwatch-Timestamp"
DELIVERY_HEADER = "X-Portwatch-Delivery"  # same id on a retry: receivers can dedupe
REPLAY_TOLERANCE_SECONDS = 300
FIELD_CAP = 200  # characters of any network-derived text put in a message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendResult:
    is_ok: bool
    error: str = ""
    retry_after: float = 0.0  # seconds the receiver asked us to wait (429/503 Retry-After)


RETRY_AFTER_CAP = 86_400.0  # a receiver may ask for a day at most (the retry_max bounds it)


def retry_after_seconds(value: str | None, now: float) -> float:
    """A ``Retry-After`` header (delay-seconds, or an HTTP date) -> seconds from ``now``,
    in [0, RETRY_AFTER_CAP]; 0 when absent or unreadable (hostile text never raises)."""
    text = (value or "").strip()
    if not text or len(text) > 64:
        return 0.0
    if text.isascii() and text.isdigit():
        return min(float(text[:12]), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0
    if when.tzinfo is None:
        return 0.0
    return max(0.0, min(when.timestamp() - now, RETRY_AFTER_CAP))


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp_header: str, signature_header: str, body: bytes,
           now: float | None = None, tolerance: int = REPLAY_TOLERANCE_SECONDS) -> bool:
    """A receiver's check: the signature is ours and the timestamp is fresh.

    Freshness bounds a replay to ``tolerance`` seconds; a receiver that also remembers
    the ``X-Portwatch-Delivery`` ids it accepted rejects a replay within that window.
    """
    # ASCII digits only: str.isdigit() also accepts '²' or '١', which int() refuses
    # (found by the hypothesis property test_signature_check_never_raises_on_hostile_headers)
    if not (timestamp_header.isascii() and timestamp_header.isdigit()) \
            or len(timestamp_header) > 12:
        return False
    timestamp = int(timestamp_header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature_header)


def _clean(text: str) -> str:
    """Network-derived text for a message: printable, one line, bounded."""
    flat = "".join(ch if ch.isprintable() else " " for ch in text[:FIELD_CAP * 2])
    return flat[:FIELD_CAP]


def describe(event: ChangeEvent) -> str:
    """One line naming the event: kind, where, what, colour, organization."""
    t = event.target
    where = t.target if t.target == t.ip else f"{t.target} ({t.ip})"
    if event.port:
        where += f" {event.port}/{event.proto.value}"
    parts = [f"[{event.severity.value}] {event.kind.value}: {_clean(where)}"]
    if event.service:
        parts.append(_clean(event.service))
    if event.before or event.after:
        parts.append(f"{_clean(event.before) or '-'} -> {_clean(event.after) or '-'}")
    if event.risk_color:
        parts.append(f"risk {_clean(event.risk_color)}")
    if t.organization:
        parts.append(f"org {_clean(t.organization)}")
    return ", ".join(parts)


def render(rule: str, events: Sequence[ChangeEvent], *, is_test: bool = False,
           ) -> tuple[str, str]:
    """(title, body) of one message for a rule's digest."""
    if is_test:
        return ("portwatch: test message",
                f"portwatch test message for channel check (rule {rule}); no change happened.")
    kinds = sorted({e.kind.value for e in events})
    title = (f"portwatch [{rule}]: {len(events)} change(s): {', '.join(kinds)}"
             if len(events) != 1 else f"portwatch [{rule}]: {describe(events[0])}")
    body = "\n".join(describe(e) for e in events)
    return defuse(_clean(title) if len(title) > FIELD_CAP else title), defuse(body)


_ZWSP = "\u200b"


def defuse(text: str) -> str:
    """A message's text made inert where apprise leaves it live: every ``@`` followed by
    a zero-width space (a banner or an organization saying ``@everyone``, ``@here`` or
    ``@channel`` pings nobody on Discord, Mattermost, Rocket.Chat, Teams), and Markdown's
    link and image syntax broken the same way (``](`` and ``<http``: Discord and
    Mattermost get the text as it is, so ``[Reset your password](https://…)`` was a
    disguised link). Apprise escapes the rest, given the body as plain text (Slack's
    ``<!channel>``, e-mail's HTML, Rocket.Chat's Markdown: ``_apprise_notify``)."""
    return (text.replace("@", "@" + _ZWSP).replace("](", "]" + _ZWSP + "(")
            .replace("<http", "<" + _ZWSP + "http"))


def webhook_body(rule: str, events: Sequence[ChangeEvent], delivery_id: str,
                 *, is_test: bool = False) -> bytes:
    payload: dict[str, Any] = {
        "rule": rule,
        "delivery_id": delivery_id,
        "test": is_test,
        "events": [{"event_id": e.event_id, **e.to_dict()} for e in events],
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def delivery_id(rule: str, channel: str, event_ids: Sequence[str]) -> str:
    raw = "\x1f".join((rule, channel, *sorted(event_ids)))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def send(channel: Channel, rule: str, events: Sequence[ChangeEvent], *,
         is_test: bool = False, timeout: float = 10.0, clock: Any = time.time,
         delivery: str = "") -> SendResult:
    """Send one message (a digest of ``events``) to ``channel`` within ``timeout`` seconds
    (``delivery: send_timeout``; the channel's own ``timeout:`` wins, longer or shorter,
    as README promises a slow receiver), however slowly the receiver answers.
    ``delivery``: the message's id (a retry passes its first attempt's); by default, one
    derived from the events. Never raises; no error names more of any URL in it than
    ``scheme://host:port/…`` (a library's or a receiver's text may quote the URL)."""
    result = _send(channel, rule, events, is_test, send_seconds(channel, timeout), clock,
                   delivery)
    return result if result.is_ok else replace(result,
                                               error=mask_pieces(mask_urls(result.error)))


def _send(channel: Channel, rule: str, events: Sequence[ChangeEvent], is_test: bool,
          timeout: float, clock: Any, delivery: str) -> SendResult:
    # A test message is a new message each time (one fixed id made every test after the
    # first a replay, which a receiver de-duplicating ids drops while we print "ok")
    ident = delivery or (secrets.token_hex(16) if is_test and not events else
                         delivery_id(rule, channel.name, [e.event_id for e in events]))
    try:
        if isinstance(channel, WebhookChannel):
            return _send_webhook(channel, rule, events, ident, is_test, timeout, int(clock()))
        return _send_apprise(channel, rule, events, is_test, timeout)
    except Exception as exc:  # noqa: BLE001 - a send is data: ok or its error, never a raise
        text = str(exc).replace(channel.url, channel.display)
        return SendResult(False, f"{type(exc).__name__}: {_clean(text)}")


class _Deadline:
    """The sockets one send opens, shut down when its time is up: a receiver that
    dribbles a byte a second (each read within the socket timeout), never ends its
    headers or stalls its TLS handshake cannot hold a send, nor the delivery pass behind
    it, past ``seconds``. Each socket is tracked as it is made, through a duplicate of its
    descriptor: shutting that down ends the connection even after TLS has taken the
    original socket object over. Each connect attempt gets only the time left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._ends_at = time.monotonic() + seconds
        self._handles: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.001, self._ends_at - time.monotonic())

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for handle in self._handles:
                with contextlib.suppress(OSError):
                    handle.shutdown(socket.SHUT_RDWR)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            handle = sock.dup()
            self._handles.append(handle)
            if self.expired:
                with contextlib.suppress(OSError):
                    handle.shutdown(socket.SHUT_RDWR)

    def create_connection(self, address: tuple[str, int], timeout: Any = None,
                          source_address: Any = None) -> socket.socket:
        """``socket.create_connection``, each address tried within the time left and its
        socket tracked before it connects."""
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, where in socket.getaddrinfo(host, port, 0,
                                                                socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                self.track(sock)
                sock.settimeout(min(self.remaining(), timeout or self.seconds))
                if source_address:
                    sock.bind(source_address)
                sock.connect(where)
                sock.settimeout(timeout or self.seconds)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
                if self.expired:
                    break
        raise error or OSError(f"no address for {host}")

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is the receiver's answer, not an address to send the alert to: urllib would
    follow a 301/302 with a GET without the body, and the alert would count as sent."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib (proxies from the environment, TLS verified as urlopen does) whose
    connections report their sockets to ``deadline`` and which follows no redirect."""

    def tracked(base: type[http.client.HTTPConnection]) -> Any:
        class Tracked(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._create_connection = deadline.create_connection
        return Tracked

    plain, tls = tracked(http.client.HTTPConnection), tracked(http.client.HTTPSConnection)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(plain, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(tls, req, context=ssl.create_default_context())

    return urllib.request.build_opener(Http, Https, _NoRedirect)


def _send_webhook(channel: WebhookChannel, rule: str, events: Sequence[ChangeEvent],
                  ident: str, is_test: bool, timeout: float, timestamp: int) -> SendResult:
    body = webhook_body(rule, events, ident, is_test=is_test)
    request = urllib.request.Request(channel.url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "User-Agent": "portwatch-alerts",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(channel.secret, timestamp, body),
        DELIVERY_HEADER: ident,
    })
    where = channel.display
    with _Deadline(timeout) as deadline:
        try:
            with _opener(deadline).open(request, timeout=timeout) as response:
                # The status line and headers are the answer; the body is read (a
                # little) only to end the exchange cleanly, and cutting it changes nothing
                status = int(response.status)
                with contextlib.suppress(OSError, http.client.HTTPException):
                    response.read(4096)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response (and its socket)
            moved = " (a redirect: not followed)" if 300 <= exc.code < 400 else ""
            wait = (retry_after_seconds(exc.headers.get("Retry-After"), time.time())
                    if exc.code in (429, 503) and exc.headers is not None else 0.0)
            asked = f" (Retry-After {wait:g}s)" if wait else ""
            return SendResult(False, f"HTTP {exc.code}{moved} from {where}{asked}", wait)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                return SendResult(False, f"no whole answer from {where} within {timeout:g}s")
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            text = str(reason).replace(channel.url, where)
            return SendResult(False, f"cannot reach {where}: {_clean(text)}")
    if 200 <= status < 300:
        return SendResult(True)
    return SendResult(False, f"HTTP {status} from {where}")


_APPRISE_BUSY: set[str] = set()  # channels whose earlier send is still running
_APPRISE_LOCK = threading.Lock()


def _send_apprise(channel: AppriseChannel, rule: str, events: Sequence[ChangeEvent],
                  is_test: bool, timeout: float) -> SendResult:
    """apprise in a thread of its own, waited for ``timeout`` seconds: its plugins set
    their own socket timeouts (a dribbling receiver holds them for minutes), so a send
    past the deadline is reported as failed and left to finish (a daemon thread). While
    it runs, that channel takes no other send: a slow receiver that accepts late gets
    the message once, not once per retry (apprise messages carry no delivery id)."""
    with _APPRISE_LOCK:
        if channel.name in _APPRISE_BUSY:
            return SendResult(False, f"{channel.display}: an earlier send to it is still "
                                     "running (a slow receiver): not sent again meanwhile")
        _APPRISE_BUSY.add(channel.name)
    outcome: list[SendResult] = []

    def run() -> None:
        try:
            outcome.append(_apprise_notify(channel, rule, events, is_test, timeout))
        except Exception as exc:  # noqa: BLE001 - reported as the send's result
            outcome.append(SendResult(False, f"{channel.display}: {type(exc).__name__}"))
        finally:
            with _APPRISE_LOCK:
                _APPRISE_BUSY.discard(channel.name)

    worker = threading.Thread(target=run, name=f"apprise-{channel.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return SendResult(False, f"{channel.display}: no whole answer within {timeout:g}s")
    return outcome[0]


def _apprise_notify(channel: AppriseChannel, rule: str, events: Sequence[ChangeEvent],
                    is_test: bool, timeout: float) -> SendResult:
    import apprise as apprise_module

    apprise: Any = apprise_module  # untyped library: calls go through Any
    title, body = render(rule, events, is_test=is_test)
    # The plugin itself, called in this (daemon) thread: Apprise.notify sends from its
    # own ThreadPoolExecutor, whose threads Python joins at exit, so a receiver still
    # dribbling held portwatch's exit for as long as it dribbled (a test run hung at its
    # end). ``instantiate`` + ``notify`` is apprise's documented one-service API.
    plugin = apprise.Apprise.instantiate(channel.url, suppress_exceptions=True)
    if plugin is None:
        return SendResult(False, f"apprise refused the URL of channel {channel.name}")
    # The send's time (the channel's timeout:) is the plugin's socket's too, unless its
    # URL says rto=/cto=: apprise's own 4 s read timeout gave up on a receiver the
    # channel waited 30 s for, and each retry sent it another copy (a review)
    # (apprise's own parse says what the URL set, in any case or separator; one it could
    # not read left its default, which the channel's time then replaces)
    if "socket_read_timeout" not in vars(plugin):
        plugin.socket_read_timeout = timeout
    if "socket_connect_timeout" not in vars(plugin):
        plugin.socket_connect_timeout = timeout
    # the message alone: apprise's default format puts its own time and level first
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        # As plain text: apprise then escapes it into each service's markup (HTML for
        # e-mail, Markdown, Slack's <...>). Without it, a banner's <!channel> pinged a
        # Slack channel and its <a href> became a link in the e-mail's HTML part.
        is_ok = bool(plugin.notify(body=body, title=title,
                                   body_format=apprise.NotifyFormat.TEXT))
        lines = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
    if is_ok:
        return SendResult(True)
    reason = lines[-1] if lines else "apprise reported a failure"
    # (its error may quote the URL's path: an ntfy topic, a token; a review)
    return SendResult(False, f"{channel.display}: {_clean(mask_pieces(mask_urls(reason)))}")
