"""Real alert receivers on loopback for tests: a signed-webhook endpoint and an SMTP server.

Owns: ``WebhookReceiver`` (a threaded HTTP server on 127.0.0.1 that checks the
signature the way a user's receiver would, written here from the specification and not
with portwatch's own code, and refuses a replayed delivery) and ``smtp_receiver``
(aiosmtpd's real SMTP server on 127.0.0.1). Must not touch: any address but loopback.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.servers import free_port


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass
class WebhookReceiver:
    """Accepts POSTs whose ``X-Portwatch-Signature`` is the HMAC-SHA256 of
    "<timestamp>.<body>" with ``secret`` and whose timestamp is fresh; a second POST
    with a delivery id already accepted, or a stale timestamp, is a replay (409). With
    ``take_duplicates``, an id already accepted is answered 200 and dropped into
    ``duplicates`` instead, as README tells receivers to. With ``hold`` set, each
    answer waits until that event is set (a sender can be killed after its message
    arrived and before it heard the answer). With ``signed`` False, every POST is
    taken: apprise's json:// sends no signature."""

    secret: bytes
    port: int = field(default_factory=free_port)
    tolerance_seconds: int = 300
    accepted: list[Delivery] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    take_duplicates: bool = False
    duplicates: list[Delivery] = field(default_factory=list)
    hold: threading.Event | None = None
    delay: float = 0.0  # seconds each answer waits: a slow receiver that still takes all
    signed: bool = True  # False: any POST is taken (an apprise json:// channel's)
    _seen: set[str] = field(default_factory=set)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/portwatch"

    def check(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        if not self.signed:
            return 200, "ok"
        timestamp = headers.get("x-portwatch-timestamp", "")
        signature = headers.get("x-portwatch-signature", "")
        if not timestamp.isdigit():
            return 401, "no timestamp"
        expected = "sha256=" + hmac.new(self.secret, timestamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return 401, "bad signature"
        if abs(time.time() - int(timestamp)) > self.tolerance_seconds:
            return 409, "stale timestamp (replay)"
        delivery = headers.get("x-portwatch-delivery", "")
        signed = f"{delivery}:{signature}"
        with self._lock:
            if self.take_duplicates and delivery in self._seen:
                return 208, "delivery already accepted: dropped"
            if delivery in self._seen or signed in self._seen:
                return 409, "delivery already accepted (replay)"
            self._seen.update({delivery, signed})
        return 200, "ok"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = min(int(self.headers.get("Content-Length", "0")), 10_000_000)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, reason = receiver.check(headers, body)
                if status == 200:
                    with receiver._lock:
                        receiver.accepted.append(Delivery(body, headers, json.loads(body)))
                elif status == 208:
                    status = 200
                    with receiver._lock:
                        receiver.duplicates.append(Delivery(body, headers, json.loads(body)))
                else:
                    with receiver._lock:
                        receiver.rejected.append((status, reason))
                if receiver.hold is not None:
                    receiver.hold.wait(timeout=60)
                time.sleep(receiver.delay)
                with contextlib.suppress(OSError):  # the sender may be gone (killed)
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        return [e for d in self.accepted for e in d.payload["events"]]


@contextlib.contextmanager
def webhook_receiver(secret: bytes, *, signed: bool = True) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret, signed=signed)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@dataclass
class ReceivedMail:
    subject: str
    body: str
    rcpt_tos: list[str]
    content_types: list[str] = field(default_factory=list)  # of every part


@contextlib.contextmanager
def smtp_receiver() -> Iterator[tuple[int, list[ReceivedMail]]]:
    """aiosmtpd's SMTP server on 127.0.0.1; yields (port, the messages it received)."""
    from aiosmtpd.controller import Controller

    received: list[ReceivedMail] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            part = message.get_body(preferencelist=("plain", "html"))
            text = part.get_content() if part is not None else ""
            received.append(ReceivedMail(str(message["Subject"]), str(text),
                                         list(envelope.rcpt_tos),
                                         [p.get_content_type() for p in message.walk()]))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()
