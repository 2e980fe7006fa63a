"""What the libraries portwatch drives may write to a user's terminal or a pod's log.

Owns: six logging filters installed on the command's log handler, and ``mask_urls``.
A Kafka broker that goes away makes aiokafka, kafka-python, Faust and mode log the same
failure many times a second (``Unable connect to node with id 1`` ~70 lines/s while the
broker is down: 9.8 MB in eleven minutes), with tracebacks for what portwatch already
reports in one line. ``OneLine`` turns a library's record with a traceback into one line
(``-v`` keeps the traceback); ``RepeatLimiter`` lets a library's message through once
per window and counts the ones it held back, so an outage reads as a line now and then,
not a flood. portwatch's own records pass untouched: each says something once, on
purpose. ``SecretsOut`` cuts every URL in a library's record to
``scheme://host:port/…`` and the path of an HTTP request line to ``/…``: at ``-vv``
apprise and urllib3 log the URLs they send to, whose path or query is often a channel's
token; it also cuts the value of a credential a library prints outside a URL (apprise's
ntfy plugin logs its ``Authorization: Bearer`` header). ``Printable`` writes the control
characters of any record, ours too, as escapes (a quoted path or banner stays text).

Must not touch: anything but the records (no handlers replaced, no levels changed).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

OURS = ("portwatch", "stream_processors", "producers", "probers", "schemas", "bench",
        "tests", "__main__")
REPEAT_WINDOW_SECONDS = 60.0
MAX_KEYS = 1024  # distinct messages remembered: a library cannot grow this without bound


def is_ours(name: str) -> bool:
    return name == "root" or name.split(".", 1)[0] in OURS


def url_display(url: str) -> str:
    """``scheme://host[:port]``, then ``/…`` when the URL goes on: what logs, errors,
    ``alerts test`` and ``alerts log`` show of any channel URL. The path and query of a
    webhook, and of apprise's json://, xml://, form:// or ntfy:// URLs, are often the
    token (``/hooks/T0/B0/XXXX``, ``?token=``), and apprise's own privacy form keeps
    them; a ``user:password@`` is dropped."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable URL>"
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    host = rest[:cut].rsplit("@", 1)[-1]
    return f"{scheme}://{host}" + ("/…" if rest[cut:] not in ("", "/") else "")


# any scheme://... in free text (an error, a library's log line), up to a blank, a quote,
# an angle bracket or a closing parenthesis, and not ending in the sentence's . , : or ;
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s)'\"<>]*[^\s)'\"<>.,:;]")
# urllib3's '"POST /hooks/T0/B0/XXXX HTTP/1.1" 200' and requests' '... Max retries
# exceeded with url: /services/T0/B0/XXXX (...)': the path alone, no scheme
_REQUEST_LINE = re.compile(r'"([A-Z]{3,7}) /[^\s"]*')
_RETRY_URL = re.compile(r"(with url: )/\S*")
# A credential a library prints outside any URL: apprise's ntfy plugin logs its request
# headers at -vv ('Authorization': 'Bearer tk_...'), others a token=/password= pair. The
# name and any scheme word (Bearer, Basic) stay; the value is cut to "…".
_CREDENTIAL = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]?key|\baccess[-_]?token"
    r"|\btoken|\bpassword|\bpasswd|\bsecret)(['\"]?\s*[:=]\s*['\"]?)"
    r"((?:bearer|basic|token)\s+)?[^\s'\",;&}]+")


def mask_urls(text: str) -> str:
    """``text`` with every URL in it cut to ``url_display`` (errors of libraries and
    receivers quote the URL they were given, token and all)."""
    return _URL_IN_TEXT.sub(lambda found: url_display(found.group(0)), text)


class SecretsOut(logging.Filter):
    """A library's record with its URLs and request paths cut (channel tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_ours(record.name):
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - a library's bad format: left as it is
                return True
            delivering = record.name.startswith(DELIVERY_LOGGERS)
            masked = _masked(text, pieces=delivering)
            if masked != text:
                record.msg, record.args = masked, None
            if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
                # the traceback quotes the same URLs: formatted here, masked, and kept
                # as the record's text (the formatter then uses it as it is)
                record.exc_text = _masked(logging.Formatter().formatException(
                    record.exc_info), pieces=delivering)
        return True


# The libraries that send alerts: only their records quote a channel URL's pieces (a
# webhook's /hooks/portwatch would otherwise cut "portwatch" out of Kafka's lines too)
DELIVERY_LOGGERS = ("apprise", "urllib3", "requests")


# Pieces of the channel URLs loaded (their path segments and query values): libraries
# quote them outside any URL (apprise's ntfy plugin: "Failed to send ntfy notification to
# topic 'topicSECRET7'", and its payload at -vv), and an ntfy topic is its password (a
# review). Bounded: a few per channel.
_URL_PIECES: set[str] = set()
MIN_PIECE = 6  # shorter pieces ("hook", "api") would cut ordinary words out of every line
MAX_PIECES = 4096


def _is_plain_word(piece: str) -> bool:
    """A plain lower-case path word ("hooks", "portwatch", "services"): a webhook's path
    names its route with them; a token has digits, capitals or length."""
    return piece.isalpha() and piece.islower() and len(piece) < 16


def keep_secret(piece: str, *, any_length: bool = False) -> None:
    """Mask ``piece`` (a token; with ``any_length``, a topic however short) wherever a
    record or an error quotes it as a word of its own."""
    if (piece and (any_length or len(piece) >= MIN_PIECE)
            and len(_URL_PIECES) < MAX_PIECES):
        _URL_PIECES.add(piece)


def keep_url_pieces_secret(url: str, *, words_too: bool = True) -> None:
    """Mask the path segments and query values of channel ``url`` wherever a record or
    an error quotes them (``mask_pieces``). ``words_too``: plain lower-case words of
    its path as well (an apprise URL's path is its topics and tokens: "mysecrettopic";
    a webhook's names its route: "/hooks/portwatch" would cut "portwatch" everywhere)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return
    for segment in parts.path.split("/"):
        piece = unquote(segment)
        if words_too or not _is_plain_word(piece):
            keep_secret(piece)
    for _key, value in parse_qsl(parts.query, keep_blank_values=False):
        keep_secret(value)


def mask_pieces(text: str) -> str:
    """``text`` with every secret URL piece (``keep_url_pieces_secret``, ``keep_secret``)
    cut to "…" where it stands as a word of its own (a topic "ops" is cut from "topic
    'ops'", not from "Oops" or "ops2")."""
    for piece in sorted((p for p in _URL_PIECES if p in text), key=len, reverse=True):
        text = re.sub(rf"(?<![\w-]){re.escape(piece)}(?![\w-])", "…", text)
    return text


def _masked(text: str, *, pieces: bool = True) -> str:
    text = _REQUEST_LINE.sub(lambda m: f'"{m.group(1)} /…', mask_urls(text))
    text = _RETRY_URL.sub(lambda m: f"{m.group(1)}/…", text)
    if pieces:
        text = mask_pieces(text)
    return _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}…", text)


class OneLine(logging.Filter):
    """A library's record with an exception: the exception's type and first line after
    the message, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not is_ours(record.name):
            exc = record.exc_info[1]
            try:
                if exc is not None:
                    first = _masked((str(exc).strip().splitlines() or [""])[0],
                                    pieces=record.name.startswith(DELIVERY_LOGGERS))[:200]
                    record.msg = f"{record.getMessage()} ({type(exc).__name__}" \
                                 f"{': ' + first if first else ''})"
                    record.args = None
            except Exception:  # noqa: BLE001 - a filter never breaks the caller's log call
                return True
            record.exc_info = None
            record.exc_text = None
        return True


class Printable(logging.Filter):
    """Every record's message with its control characters written as escapes: a path,
    host name or banner a message quotes reached the terminal raw (ESC sequences that
    retitle a window or clear the screen: a review, 2026-12-06). Multi-line messages
    keep their line breaks; tracebacks are not touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        from portwatch.console import printable

        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a filter never breaks the caller's log call
            return True
        cleaned = "\n".join(printable(line) for line in message.split("\n"))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# A library's warning that says nothing wrong: kafka-python's consumer asks for a topic's
# partitions before its first metadata answer, at every `discover` start, even with the
# topics in place (a review: it read as a fault). (logger prefix, message prefix)
KNOWN_NOISE = (("kafka", "No partition metadata for topic"),)


class KnownNoise(logging.Filter):
    """Drops the library records of ``KNOWN_NOISE``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_ours(record.name):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: the next filters say it
            return True
        return not any(record.name.startswith(logger) and message.startswith(text)
                       for logger, text in KNOWN_NOISE)


# A library's error that is a wait it retries on its own: aiokafka asks a broker just
# started for the group's coordinator before the broker has one, and logs an ERROR each
# time until it has (every `process` and `alerts` start on a new cluster: it read as a
# fault, with nothing wrong). Written as a warning that says so; a coordinator that never
# comes still shows, once a minute (RepeatLimiter). (logger prefix, message prefix, why)
RETRIED_ERRORS = (
    ("aiokafka", "Group Coordinator Request failed: [Error 15]",
     "retried: the broker has no coordinator for the consumer group yet"),
)


class Retried(logging.Filter):
    """The library ERROR records of ``RETRIED_ERRORS`` as warnings, saying they are
    retried."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or is_ours(record.name):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: the next filters say it
            return True
        for logger, text, why in RETRIED_ERRORS:
            if record.name.startswith(logger) and message.startswith(text):
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.msg, record.args = f"{message} ({why})", None
        return True


class RepeatLimiter(logging.Filter):
    """A library's message (by logger, level and format string) once per ``window``
    seconds; the next one let through says how many were held back meanwhile."""

    def __init__(self, window: float = REPEAT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if is_ours(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        if len(self._seen) >= MAX_KEYS and key not in self._seen:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            try:
                record.msg = f"{record.getMessage()} (and {held} more like it since " \
                             f"{self.window:g}s before)"
                record.args = None
            except Exception:  # noqa: BLE001 - a filter never breaks the caller's log call
                return True
        return True


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A library thread that ends on an exception (aiokafka's consumer thread stopped
    while the broker is down): one line, not Python's traceback."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    first = (str(args.exc_value).strip().splitlines() or [""])[0][:200]
    logging.getLogger("portwatch").error("%s ended on %s%s", name, args.exc_type.__name__,
                                         f": {first}" if first else "")


def install(*, verbose: bool) -> None:
    """Put the filters on every handler of the root logger, once (``-v``: tracebacks
    kept; repeats are limited either way)."""
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, RepeatLimiter) for f in handler.filters):
            continue
        handler.addFilter(SecretsOut())  # first: nothing below sees a token
        handler.addFilter(KnownNoise())
        handler.addFilter(Retried())
        handler.addFilter(Printable())
        handler.addFilter(RepeatLimiter())  # it keys on the message as logged
        if not verbose:
            handler.addFilter(OneLine())
    if not verbose:
        threading.excepthook = _thread_died
