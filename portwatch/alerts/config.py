"""The alerts file (``alerts.yaml``): parsing and validation, with line numbers.

Owns: turning the user's file into a frozen ``AlertConfig`` (channels, rules, delivery
options) or one ``AlertConfigError`` line naming the file and the line at fault. Every
check that can fail is done here, before anything scans: unknown keys, bad durations,
unknown change kinds or severities, channels a rule names but the file does not define,
apprise URLs whose scheme apprise does not know, secrets whose environment variable or
file is missing.

Must not touch: the network, the store, or the secret values beyond reading them (a
secret is never part of an error message or a ``repr``).

Why one file: it is the grammar of one file, read node by node so every error names its
line; the schedule file reuses its mapping reader (``mapping_items``) for the same
"given twice" rule.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from portwatch.log_filters import keep_secret, keep_url_pieces_secret, mask_pieces
from portwatch.log_filters import mask_urls as _mask_urls
from portwatch.log_filters import url_display as _url_display
from producers.targets import yaml_problem
from producers.textfiles import FileReadError, read_bounded
from schemas.bounded import is_digits
from schemas.durations import parse_seconds
from schemas.records import ChangeKind, RiskColor, Severity, canonical_address, fold_mapped

ALERTS_ENV = "PORTWATCH_ALERTS"
DEFAULT_DIGEST_SECONDS = 300.0
MAX_WAIT_SECONDS = 30 * 86400.0  # digests, retries and waits: a month at most
MAX_FILE_BYTES = 1_000_000  # an alerts file is written by people: anything larger is wrong
SECRET_CAP = 4096  # bytes of a webhook secret file: a longer one is not a secret
PREVALENCE_BUCKETS = ("very common", "somewhat common", "less common", "rare")

# A rule's or a channel's name: printed by `alerts test`, `alerts log` and a scan's end
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AlertConfigError(ValueError):
    """A bad alerts file; ``str()`` is one line: ``FILE:LINE: what is wrong``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        where = f"{path}:{line}" if line > 0 else path
        super().__init__(f"{where}: {' '.join(message.split())}")  # always one line
        self.path = path
        self.line = line


@dataclass(frozen=True, slots=True)
class WebhookChannel:
    """portwatch's own HMAC-signed webhook (see ``channels.sign``)."""

    name: str
    url: str = field(repr=False)  # its path or query often holds a token
    secret: bytes = field(repr=False)
    timeout: float | None = None  # its own ``timeout:``; None: ``delivery: send_timeout``

    @property
    def kind(self) -> str:
        return "webhook"

    @property
    def display(self) -> str:
        """Where it goes without what may be a secret: the path and query of a webhook
        URL are often its token (``/hooks/T0/B0/XXXX``, ``?token=``)."""
        return url_display(self.url)


@dataclass(frozen=True, slots=True)
class AppriseChannel:
    """Any apprise URL (Slack, Teams, mailto, ntfy, json, ...)."""

    name: str
    url: str = field(repr=False)  # apprise URLs carry their credentials
    display: str = ""  # scheme://host:port/… (see url_display), for logs and `alerts log`
    timeout: float | None = None  # its own ``timeout:``; None: ``delivery: send_timeout``

    @property
    def kind(self) -> str:
        return "apprise"


Channel = WebhookChannel | AppriseChannel


def send_seconds(channel: Channel, send_timeout: float) -> float:
    """How long a send to ``channel`` may take: its own ``timeout:`` when the file gives
    one (longer or shorter: a slow receiver needs longer), else ``delivery:
    send_timeout``."""
    return send_timeout if channel.timeout is None else channel.timeout


@dataclass(frozen=True, slots=True)
class PortSpan:
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Match:
    """What a rule selects; an empty tuple (or None) means "any"."""

    kinds: frozenset[ChangeKind] = frozenset()
    severity_min: Severity | None = None
    severities: frozenset[Severity] = frozenset()
    colors: frozenset[str] = frozenset()
    organizations: frozenset[str] = frozenset()  # lower-cased
    target_names: frozenset[str] = frozenset()  # lower-cased names and addresses
    target_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ports: tuple[PortSpan, ...] = ()
    protos: frozenset[str] = frozenset()
    prevalence: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: Match
    notify: tuple[str, ...]
    digest_seconds: float
    line: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """Retry and wait policy; every value can be set under ``delivery:`` in the file."""

    retry_base_seconds: float = 30.0  # first retry after this, doubled per attempt
    retry_max_seconds: float = 3600.0  # the backoff never grows beyond this
    max_attempts: int = 12  # then the delivery is kept as failed
    wait_seconds: float = 30.0  # a one-shot scan waits at most this long to deliver
    claim_lease_seconds: float = 300.0  # a claim by a worker that vanished expires after this
    send_timeout_seconds: float = 10.0
    max_events_per_message: int = 200


@dataclass(frozen=True, slots=True)
class AlertConfig:
    path: str
    channels: Mapping[str, Channel]
    rules: tuple[Rule, ...]
    delivery: DeliveryOptions = DeliveryOptions()


# -- loading ----------------------------------------------------------------------------


def load_alerts(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                need_rules: bool = True) -> AlertConfig:
    """Read and validate an alerts file; raises AlertConfigError (one line, FILE:LINE).
    Without ``need_rules`` (`alerts test`: checking channels before writing any rule) a
    file of channels alone is read, with no rules; rules it has are still checked."""
    name = str(path)
    environ = os.environ if env is None else env
    root = compose_yaml(name, read_text_file(name, AlertConfigError))
    return _Parser(name, environ).config(root, need_rules=need_rules)


def read_text_file(name: str, error: type[AlertConfigError]) -> str:
    """A people-written file's text, bounded (MAX_FILE_BYTES) and UTF-8; ``error`` (one
    line, ``FILE:0: ...``) when it cannot be read, is too large or is not text. A FIFO
    with no writer is not waited on for good (it hung `watch` and `alerts test`; a
    review, 2026-12-06); a pipe (`--alerts <(envsubst < a.yaml)`) is read until its end
    (``producers.textfiles``)."""
    try:
        raw = read_bounded(name, MAX_FILE_BYTES)
    except FileReadError as exc:
        raise error(name, 0, str(exc)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(name, 0, f"not UTF-8 text ({exc.reason})") from None


# Values a file may hold once its aliases are expanded: a file of 500 KB whose rules
# repeat an alias of a 50,000-entry list (`ports: *p` in 3,000 rules) took minutes and
# gigabytes to read before any error (a review). Far above any real file's.
MAX_EXPANDED_NODES = 200_000


def _check_expanded_size(name: str, root: yaml.Node | None) -> None:
    """Refuse a node tree that expands (each alias counted where it is used, as the
    parser walks it) to more than ``MAX_EXPANDED_NODES``; also ends a recursive alias."""
    stack = [root] if root is not None else []
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_EXPANDED_NODES:
            raise AlertConfigError(name, node.start_mark.line + 1, (
                f"the file holds more than {MAX_EXPANDED_NODES:,} values once its YAML "
                "aliases are expanded (an alias of a long list repeated, or an alias "
                "inside itself): write the lists out, or shorter"))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)


def compose_yaml(name: str, text: str) -> yaml.Node | None:
    """The YAML node tree (with line marks); a syntax error becomes one FILE:LINE line,
    and so does a tree too large once its aliases are expanded."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line, problem = yaml_problem(exc)
        raise AlertConfigError(name, line, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        raise AlertConfigError(name, line, f"invalid YAML: character {exc.character!r} is "
                                           "not allowed") from None
    except yaml.YAMLError as exc:
        raise AlertConfigError(name, 0, f"invalid YAML: {exc}") from None
    except RecursionError:  # '[[[[...' a thousand deep: the composer recurses per level
        raise AlertConfigError(name, 1, "invalid YAML: nested too deeply") from None
    _check_expanded_size(name, root)
    return root


def parse_duration(text: str) -> float:
    """``5m``, ``30s``, ``1h``, ``0``, ``250ms`` -> seconds, from 0 to 30 days (the
    grammar every command shares: schemas/durations.py; here a bare number is seconds);
    ValueError otherwise."""
    return parse_seconds(text, least=0, most=MAX_WAIT_SECONDS, bare_seconds=True)


def webhook_url_problem(url: str) -> str:
    """Why ``url`` cannot be a webhook (``""``: it can), checked when the file loads, not
    at the first send: http(s) with a host, a port in range, no blanks or control
    characters, and no ``user:password@`` (it would be printed by errors, and urllib
    reads a password holding ``:`` as a port, then resolves the rest as a host name)."""
    if not re.match(r"^https?://", url, re.IGNORECASE):
        return "must be an http:// or https:// URL"
    if any(not ch.isprintable() or ch.isspace() for ch in url):
        return "URL has a blank or a control character (encode it: %20)"
    if not url.isascii():  # every send would fail: an HTTP request line is ASCII
        return ("URL has a character that is not ASCII: percent-encode it in the path "
                "(é is %C3%A9) and write a host name in its xn-- form")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "http://[zz]/x", "http://[::1/hook": a bracketed host gone wrong
        return "is not a valid URL (check the host in brackets)"
    if "@" in parts.netloc:
        return ("URL must not carry user:password@ (put the token in ${VAR} in the path or "
                "query, or use the signing secret)")
    try:
        port = parts.port
    except ValueError:
        return "URL has a port that is not a number from 1 to 65535"
    if not parts.hostname or port == 0:
        return "URL has no host" if not parts.hostname else "URL has port 0"
    return ""


# (what logs, errors, `alerts test` and `alerts log` show of a channel URL: the log
# filters mask library records with the same two functions)
url_display = _url_display
mask_urls = _mask_urls


def mapping_items(node: yaml.Node | None, what: str,
                  fail: Callable[[yaml.Node | None, str], AlertConfigError],
                  ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping node's items by key, each with its (key, value) nodes. A key given twice
    is refused (``fail``: the caller's error, naming the line): YAML loaders keep the
    last one without a word, so a second ``schedules:`` block or a repeated ``cron:``
    would silently replace the first."""
    if not isinstance(node, yaml.MappingNode):
        raise fail(node, f"{what} must be a mapping")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise fail(key_node, f"{what}: keys must be plain names")
        key = str(key_node.value)
        if key in out:
            raise fail(key_node, f"{what}: {key!r} given twice")
        out[key] = (key_node, value_node)
    return out


class _Parser:
    """Walks the node tree; every error names the line of the node at fault."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.options = DeliveryOptions()

    def check_below_lease(self, node: yaml.Node, what: str, seconds: float) -> None:
        """A send must end before its claim lease does: past the lease, another worker
        (or the next pass) takes the claim over and sends the message again. A channel's
        own ``timeout:`` wins over ``delivery: send_timeout``, so both are held to it."""
        lease = self.options.claim_lease_seconds
        if seconds >= lease:
            raise self.fail(node, f"{what} ({seconds:g} s) must be below delivery "
                                  f"claim_lease ({lease:g} s): a send still running when "
                                  "its claim expires would be sent again")

    def fail(self, node: yaml.Node | None, message: str) -> AlertConfigError:
        line = node.start_mark.line + 1 if node is not None else 0
        return AlertConfigError(self.path, line, message)

    # -- node helpers -------------------------------------------------------------------

    def mapping(self, node: yaml.Node | None, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        return mapping_items(node, what, self.fail)

    def only(self, items: Mapping[str, tuple[yaml.Node, yaml.Node]], allowed: tuple[str, ...],
             what: str) -> None:
        for key, (key_node, _) in items.items():
            if key not in allowed:
                raise self.fail(key_node, f"{what}: unknown key {key!r} "
                                          f"(known: {', '.join(allowed)})")

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return str(node.value)

    def scalars(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        """A list of scalars, or one scalar (``kinds: opened`` = ``kinds: [opened]``). An
        empty entry (``null``, ``~`` or nothing) is refused: read as text it became a
        target or organization named 'null' that nothing matches."""
        if isinstance(node, yaml.ScalarNode):
            return [(node, self.not_null(node, what))]
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        out = []
        for item in node.value:
            self.scalar(item, f"{what} entries")  # one value each, not a list or mapping
            out.append((item, self.not_null(item, what)))
        return out

    def not_null(self, node: yaml.Node, what: str) -> str:
        """A scalar ``node``'s text; an error naming its line when YAML reads it as null."""
        if node.tag == "tag:yaml.org,2002:null":
            shown = str(node.value) or "nothing"
            raise self.fail(node, f"{what}: an empty entry ({shown}); remove it or give a "
                                  "value (quote it if it is meant as text)")
        return str(node.value)

    # -- the file -----------------------------------------------------------------------

    def config(self, root: yaml.Node | None, *, need_rules: bool = True) -> AlertConfig:
        if root is None:
            raise AlertConfigError(self.path, 0, "empty file: needs channels: and rules:"
                                   if need_rules else "empty file: needs channels:")
        top = self.mapping(root, "the file")
        self.only(top, ("channels", "rules", "delivery"), "the file")
        if "channels" not in top:
            raise self.fail(root, "no channels: section")
        if "rules" not in top and need_rules:
            raise self.fail(root, "no rules: section")
        # delivery first: a channel's timeout is checked against its claim_lease
        self.options = self.delivery(top["delivery"][1]) if "delivery" in top \
            else DeliveryOptions()
        channels = self.channels(top["channels"][1])
        rules = self.rules(top["rules"][1], channels) if "rules" in top else ()
        return AlertConfig(self.path, channels, rules, self.options)

    def channels(self, node: yaml.Node) -> dict[str, Channel]:
        out: dict[str, Channel] = {}
        for name, (key_node, value_node) in self.mapping(node, "channels").items():
            out[name] = self.channel(name, key_node, value_node)
        if not out:
            raise self.fail(node, "channels: define at least one channel")
        return out

    def channel(self, name: str, key_node: yaml.Node, node: yaml.Node) -> Channel:
        if not NAME.fullmatch(name):
            # as a rule's: printed by `alerts test`, `alerts log` and the scan's end
            # (control characters reached the terminal raw: a review)
            raise self.fail(key_node, f"channel name {name[:60]!r}: use "
                                      "letters, digits, - _ . : (at most 100)")
        what = f"channel {name!r}"
        items = self.mapping(node, what)
        self.only(items, ("webhook", "secret_env", "secret_file", "apprise", "timeout"), what)
        if ("webhook" in items) == ("apprise" in items):
            raise self.fail(node, f"{what}: give exactly one of webhook: URL or apprise: URL")
        timeout: float | None = None  # the delivery's send_timeout
        if "timeout" in items:
            timeout = self.duration(items["timeout"][1], f"{what} timeout")
            if timeout <= 0:
                raise self.fail(items["timeout"][1], f"{what} timeout: must be above 0")
            self.check_below_lease(items["timeout"][1], f"{what} timeout", timeout)
        if "webhook" in items:
            url_node = items["webhook"][1]
            url = self.expand_env(self.scalar(url_node, f"{what} webhook"), url_node, what)
            keep_url_pieces_secret(url, words_too=False)
            problem = webhook_url_problem(url)
            if problem:
                raise self.fail(url_node, f"{what}: webhook {problem}")
            secret = self.secret(items, node, what)
            return WebhookChannel(name, url, secret, timeout)
        url_node = items["apprise"][1]
        url = self.expand_env(self.scalar(url_node, f"{what} apprise"), url_node, what)
        keep_url_pieces_secret(url)
        display = mask_pieces(check_apprise_url(
            url, lambda message: self.fail(url_node, f"{what}: {message}")))
        return AppriseChannel(name, url, display, timeout)

    def secret(self, items: Mapping[str, tuple[yaml.Node, yaml.Node]], node: yaml.Node,
               what: str) -> bytes:
        if ("secret_env" in items) == ("secret_file" in items):
            raise self.fail(node, f"{what}: a webhook needs exactly one of secret_env: VAR "
                                  "or secret_file: PATH")
        if "secret_env" in items:
            var_node = items["secret_env"][1]
            var = self.scalar(var_node, f"{what} secret_env")
            value = self.env.get(var, "")
            if not value:
                raise self.fail(var_node, f"{what}: environment variable {var} is not set "
                                          "(it holds the webhook secret)")
            return value.encode()
        file_node = items["secret_file"][1]
        written = self.scalar(file_node, f"{what} secret_file")
        if "\0" in written:
            raise self.fail(file_node, f"{what}: secret_file has a NUL character")
        try:
            secret_path = Path(written).expanduser()
        except RuntimeError:  # "~nosuchuser/x": no such user's home
            raise self.fail(file_node, f"{what}: secret_file {written!r}: no such user's "
                                       "home directory") from None
        if not secret_path.is_absolute():
            secret_path = Path(self.path).parent / secret_path
        try:
            # a regular file, and at most SECRET_CAP bytes of it read: /dev/zero, a FIFO
            # or a huge file is refused or cut, never read whole into memory
            # (opened without blocking: a FIFO with no writer would hang the open)
            with os.fdopen(os.open(secret_path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise self.fail(file_node, f"{what}: secret file {secret_path} is not a "
                                               "regular file")
                data = handle.read(SECRET_CAP + 1)
        except OSError as exc:
            raise self.fail(file_node, f"{what}: cannot read secret file {secret_path}: "
                                       f"{exc.strerror or exc}") from None
        if len(data) > SECRET_CAP:
            raise self.fail(file_node, f"{what}: secret file {secret_path} is longer than "
                                       f"{SECRET_CAP} bytes: not a secret")
        data = data.strip()
        if not data:
            raise self.fail(file_node, f"{what}: secret file {secret_path} is empty")
        return data

    def expand_env(self, text: str, node: yaml.Node, what: str) -> str:
        """``${VAR}`` in a channel's URL comes from the environment (keeps tokens out of the
        file); a missing variable is an error, never an empty string in an URL."""

        def value(found: re.Match[str]) -> str:
            var = found.group(1)
            if var not in self.env or not self.env[var]:
                raise self.fail(node, f"{what}: environment variable {var} is not set")
            return self.env[var]

        return _ENV_REFERENCE.sub(value, text)

    def duration(self, node: yaml.Node, what: str) -> float:
        text = self.scalar(node, what)
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise self.fail(node, f"{what}: {exc}") from None

    def delivery(self, node: yaml.Node) -> DeliveryOptions:
        items = self.mapping(node, "delivery")
        names = {"retry_base": "retry_base_seconds", "retry_max": "retry_max_seconds",
                 "wait": "wait_seconds", "claim_lease": "claim_lease_seconds",
                 "send_timeout": "send_timeout_seconds"}
        self.only(items, (*names, "max_attempts", "max_events_per_message"), "delivery")
        values: dict[str, Any] = {}
        for key, attr in names.items():
            if key in items:
                values[attr] = self.duration(items[key][1], f"delivery {key}")
                # Only wait may be 0 (deliver what is ready, do not wait): a 0 s send
                # timeout, lease or retry never works
                if key != "wait" and values[attr] <= 0:
                    raise self.fail(items[key][1], f"delivery {key}: must be above 0")
        defaults = DeliveryOptions()
        base = values.get("retry_base_seconds", defaults.retry_base_seconds)
        top = values.get("retry_max_seconds", defaults.retry_max_seconds)
        if base > top:
            node_at = items.get("retry_max", items.get("retry_base"))
            raise self.fail(node_at[1] if node_at else node,
                            f"delivery retry_max ({top:g} s) is below retry_base ({base:g} s)")
        self.options = replace(defaults, **values)  # what the channels are checked against
        at = items.get("send_timeout", items.get("claim_lease"))
        self.check_below_lease(at[1] if at else node, "delivery send_timeout",
                               self.options.send_timeout_seconds)
        for key in ("max_attempts", "max_events_per_message"):
            if key in items:
                text = self.scalar(items[key][1], f"delivery {key}")
                if not is_digits(text) or not 1 <= int(text) <= 10_000:
                    raise self.fail(items[key][1], f"delivery {key}: a number from 1 to 10000")
                values[key] = int(text)
        return DeliveryOptions(**values)

    def rules(self, node: yaml.Node, channels: Mapping[str, Channel]) -> tuple[Rule, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "rules must be a list of rules (- name: ...)")
        out: list[Rule] = []
        seen: set[str] = set()
        for item in node.value:
            rule = self.rule(item, channels)
            if rule.name in seen:
                raise self.fail(item, f"rule name {rule.name!r} used twice")
            seen.add(rule.name)
            out.append(rule)
        if not out:
            raise self.fail(node, "rules: define at least one rule")
        return tuple(out)

    def rule(self, node: yaml.Node, channels: Mapping[str, Channel]) -> Rule:
        items = self.mapping(node, "a rule")
        self.only(items, ("name", "when", "notify", "digest"), "rule")
        if "name" not in items:
            raise self.fail(node, "rule without a name:")
        name = self.scalar(items["name"][1], "rule name").strip()
        if not NAME.fullmatch(name):
            raise self.fail(items["name"][1], f"rule name {name!r}: use letters, digits, "
                                              "- _ . : (at most 100)")
        what = f"rule {name!r}"
        if "notify" not in items:
            raise self.fail(node, f"{what}: no notify: channels")
        notify: list[str] = []
        for item_node, channel in self.scalars(items["notify"][1], f"{what} notify"):
            if channel not in channels:
                raise self.fail(item_node, f"{what}: unknown channel {channel!r} "
                                           f"(defined: {', '.join(sorted(channels))})")
            if channel not in notify:
                notify.append(channel)
        if not notify:
            raise self.fail(items["notify"][1], f"{what}: notify: names no channel")
        digest = DEFAULT_DIGEST_SECONDS
        if "digest" in items:
            digest = self.duration(items["digest"][1], f"{what} digest")
        match = self.match(items["when"][1], what) if "when" in items else Match()
        return Rule(name, match, tuple(notify), digest, node.start_mark.line + 1)

    def match(self, node: yaml.Node, what: str) -> Match:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
            return Match()
        items = self.mapping(node, f"{what} when")
        self.only(items, ("kinds", "severity", "colors", "organizations", "targets", "ports",
                          "protos", "prevalence"), f"{what} when")
        for key, (_, value) in items.items():
            # from a template, say: an empty list is neither "any" nor "none" for sure
            if isinstance(value, yaml.SequenceNode) and not value.value:
                raise self.fail(value, f"{what} {key}: an empty list; leave the key out "
                                       "to match any")
        values: dict[str, Any] = {}
        if "kinds" in items:
            values["kinds"] = frozenset(self.enum_values(items["kinds"][1], ChangeKind,
                                                         f"{what} kinds"))
        if "severity" in items:
            sev_node = items["severity"][1]
            if isinstance(sev_node, yaml.SequenceNode):
                values["severities"] = frozenset(self.enum_values(sev_node, Severity,
                                                                  f"{what} severity"))
            else:
                text = self.scalar(sev_node, f"{what} severity").strip().lower()
                minimum = text.removeprefix(">=").strip()
                try:
                    values["severity_min"] = Severity(minimum)
                except ValueError:
                    raise self.fail(sev_node, f"{what}: unknown severity {text!r} (use one of "
                                              f"{', '.join(Severity)}, a minimum, or a "
                                              "list)") from None
        if "colors" in items:
            values["colors"] = frozenset(
                str(c) for c in self.enum_values(items["colors"][1], RiskColor,
                                                 f"{what} colors"))
        if "organizations" in items:
            values["organizations"] = frozenset(
                text.strip().lower() for _, text in
                self.scalars(items["organizations"][1], f"{what} organizations"))
        if "targets" in items:
            names, networks = self.targets(items["targets"][1], what)
            values["target_names"], values["target_networks"] = names, networks
        if "ports" in items:
            values["ports"] = self.ports(items["ports"][1], what)
        if "protos" in items:
            protos = set()
            for item_node, text in self.scalars(items["protos"][1], f"{what} protos"):
                if text.lower() not in ("tcp", "udp"):
                    raise self.fail(item_node, f"{what}: proto {text!r}: use tcp or udp")
                protos.add(text.lower())
            values["protos"] = frozenset(protos)
        if "prevalence" in items:
            buckets = set()
            for item_node, text in self.scalars(items["prevalence"][1], f"{what} prevalence"):
                bucket = text.strip().lower().replace("_", " ")
                if bucket not in PREVALENCE_BUCKETS:
                    raise self.fail(item_node, f"{what}: prevalence {text!r}: use one of "
                                               f"{', '.join(PREVALENCE_BUCKETS)}")
                buckets.add(bucket)
            values["prevalence"] = frozenset(buckets)
        return Match(**values)

    def enum_values(self, node: yaml.Node, enum: Any, what: str) -> list[Any]:
        out = []
        for item_node, text in self.scalars(node, what):
            try:
                out.append(enum(text.strip().lower()))
            except ValueError:
                raise self.fail(item_node, f"{what}: unknown value {text!r} (known: "
                                           f"{', '.join(str(v) for v in enum)})") from None
        return out

    def targets(self, node: yaml.Node, what: str) -> tuple[
            frozenset[str], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
        names: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item_node, text in self.scalars(node, f"{what} targets"):
            text = text.strip()
            if not text or len(text) > 253:
                raise self.fail(item_node, f"{what}: empty or overlong target")
            if "/" in text:
                try:  # ::ffff:10.0.0.0/104 is 10.0.0.0/8, as the scan's scope reads it
                    networks.append(fold_mapped(ipaddress.ip_network(text, strict=False)))
                except ValueError:
                    raise self.fail(item_node, f"{what}: bad CIDR block {text!r}") from None
            else:
                bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
                try:  # events carry the canonical address (::ffff:a.b.c.d is a.b.c.d)
                    names.add(str(canonical_address(bare)))
                except ValueError:
                    # a name, or an asset's: one that can never be an event's target
                    # or asset ("10.0.0.5:8080") is refused, not kept to match nothing
                    # (a review, 2026-12-06)
                    if ":" in text or not text.isprintable():
                        raise self.fail(item_node, f"{what}: {text[:60]!r} is not an "
                                                   "address, CIDR block, hostname or asset "
                                                   "name") from None
                    names.add(text.lower())
        return frozenset(names), tuple(networks)

    def ports(self, node: yaml.Node, what: str) -> tuple[PortSpan, ...]:
        spans: list[PortSpan] = []
        for item_node, text in self.scalars(node, f"{what} ports"):
            for part in text.split(","):
                part = part.strip()
                first, dash, last = part.partition("-")
                first, last = first.strip(), last.strip()  # "8000 - 8100"
                if not is_digits(first, 5) or (dash and not is_digits(last, 5)):
                    # int() would take '٣', ' 1_000' or '+5'
                    raise self.fail(item_node, f"{what}: bad port {part[:40]!r}")
                low = int(first)
                high = int(last) if dash else low
                if high > 65535 or low > 65535:
                    raise self.fail(item_node, f"{what}: port {part!r} out of 0-65535")
                if low > high:
                    raise self.fail(item_node, f"{what}: bad port range {part!r}: the first "
                                               "port is above the last")
                spans.append(PortSpan(low, high))
        return tuple(spans)


def check_apprise_url(url: str, fail: Any) -> str:
    """Refuse an URL apprise cannot use (unknown scheme, bad form) without sending; return
    how it is shown: apprise's privacy form (credentials masked) cut to
    ``scheme://host:port/…``, as a webhook is (that form keeps the path and query)."""
    import apprise as apprise_module  # lazy: it loads its ~190 plugins (~0.2 s)

    apprise: Any = apprise_module  # untyped library: calls go through Any

    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if not scheme:
        raise fail("apprise URL has no scheme:// (e.g. mailto://, slack://, json://)")
    if scheme not in apprise.NotificationManager().schemas():
        raise fail(f"unknown apprise scheme {scheme + '://'!r}")
    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if plugin is None:
        raise fail(f"apprise cannot use this {scheme}:// URL (check its form)")
    # the topics apprise will send to, however the URL spells them (ntfy://TOPIC's host
    # is its topic, and a topic is its password: a review)
    for topic in getattr(plugin, "topics", None) or ():
        if isinstance(topic, str):
            keep_secret(topic, any_length=True)  # ("ops" is a topic too: a review)
    try:  # apprise's privacy form masks a token in the host part (slack://T...7/...)
        return url_display(str(plugin.url(privacy=True)))
    except Exception:  # noqa: BLE001 - display only; never let it leak the URL instead
        return url_display(url)


def alerts_path_from_env(option: str | None) -> str | None:
    """``--alerts FILE`` wins over ``PORTWATCH_ALERTS``; empty means no alerting."""
    return option or os.environ.get(ALERTS_ENV) or None
