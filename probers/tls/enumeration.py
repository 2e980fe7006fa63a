"""The suite-enumeration and server-order algorithms, as pure state machines.

Owns: ``SuiteEnumeration`` (nmap's method: offer up to 64 suites, record the one the
server picks, remove it, offer again; a refused offer retires every suite in it, except
that an offer the server answered by closing silently is split in halves and each
offered again (a server that picks a suite it cannot serve, a DHE suite without DH
parameters, then closes, hid every other suite of that offer: three TLS 1.2 suites nmap
finds on dovecot), at most ``MAX_SPLITS`` times, ``SPLITS_BEFORE_A_PICK`` before the
server has accepted anything of the version; once the server has accepted a suite, an
offer it closed on is made once more before its suites are retired, and a server that
closed on suites is offered those suites again at the end (each window up to
``UNION_CHECKS`` times; a version that accepted nothing, until a close),
then one it accepted before: a server that drops connections (a load balancer with a
dead backend, a rate limit) accepts what it closed on, or closes on what it accepted, and
the list is said to be incomplete, not complete with most suites missing: reviews) and
``ServerOrderProbe`` (the server's preference order, and whether it honours the client's
order instead). Each asks for the next offer and is told the outcome; neither knows how
an offer travels, so both are unit-tested against plain functions standing in for a
server's choice, and driven for real by ``commands.py``.

Server order, precisely: offer the accepted suites all at once, record the pick, remove
it, repeat; the picks come out in the server's order *if* it enforces one. Then offer the
top two in reverse: if the server still picks its first choice it enforces its own order;
if it picks our first, it follows the client's order and has no order of its own to
report. When the enumeration's own picks were each made from an offer holding every
later pick (the usual case: all accepted suites in one 64-suite window), they already are
that ordered pass and are reused, saving connections.

Must not touch: sockets, records, asyncio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from probers.tls.hello import HelloOutcome, OutcomeKind

WINDOW = 64  # suites per ClientHello, as nmap's ssl-enum-ciphers offers
MAX_SPLITS = 16  # closed offers split again per version: bounded connections
# Before the server has accepted anything of this version, only this many: a server that
# closes on every hello costs a few connections more, not one per suite
SPLITS_BEFORE_A_PICK = 4
# Offers of each window of the suites retired by a close, at the end (see
# SuiteEnumeration): a server dropping 30 % of its connections at random still passes for
# complete in ~2 of 10,000 enumerations of a small server, 9 at 50 % (from 15 and 133
# with 3 offers of the first window only: a third review's model, bench-free)
UNION_CHECKS = 5


@dataclass(frozen=True, slots=True)
class Pick:
    code: int
    offered: tuple[int, ...]
    outcome: HelloOutcome


class SuiteEnumeration:
    """Which of ``candidates`` the server accepts, one pick per connection."""

    def __init__(self, candidates: Sequence[int], window: int = WINDOW) -> None:
        self._remaining = list(dict.fromkeys(candidates))
        self._window = window
        self.picks: list[Pick] = []
        self.failure = ""  # why the enumeration could not finish ("" = it did)
        self.version_refused = ""  # set when the server will not speak this version
        self.attempts = 0
        self._splits: list[tuple[int, ...]] = []  # halves of a closed offer, next
        self._splits_left = MAX_SPLITS
        self._closed_on: set[tuple[int, ...]] = set()  # offers closed on once, made again
        self._retired_closed: list[int] = []  # suites retired because it closed on them
        # The checks at the end, after a suite was retired by a close: those suites offered
        # again (up to UNION_CHECKS times: a server that drops a share of its connections
        # at random closes twice on an offer often enough, 7 in 100 enumerations at 30 %:
        # a review), then a suite it accepted before (one that stopped answering)
        self._check_windows: list[tuple[int, ...]] | None = None  # those suites, a window each
        self._tries_left = 0  # of the first window
        self._check: tuple[int, ...] = ()  # the check in flight
        self._checked_pick = False
        # it refused an offer of this version with an alert: it speaks the version, so a
        # close there was a drop (one close on the check lost a version: a fourth review)
        self._alerted = False

    def next_offer(self) -> tuple[int, ...] | None:
        if self.failure or self.version_refused:
            return None
        while self._splits:
            offer = tuple(c for c in self._splits.pop(0) if c in self._remaining)
            if offer:
                return offer
        if self._remaining:
            return tuple(self._remaining[: self._window])
        if not self._retired_closed:
            return None
        if self._check_windows is None:
            # every window of them (the first 64 only missed suites past it), also for a
            # version that accepted nothing (one whose first dozen hellos were dropped
            # was lost: third review), there once each, and none after a close (a
            # server that closes on a version it does not speak costs one connection)
            retired, w = self._retired_closed, self._window
            self._check_windows = [tuple(retired[i:i + w]) for i in range(0, len(retired), w)]
            self._tries_left = self._tries()
        if self._check_windows:
            self._check = self._check_windows[0]
        elif self.picks and not self._checked_pick:
            self._checked_pick = True
            self._check = (self.picks[0].code,)
        else:
            return None
        return self._check

    def record(self, offered: tuple[int, ...], outcome: HelloOutcome) -> None:
        self.attempts += 1
        if self._check and offered == self._check:
            self._record_check(offered, outcome)
            return
        if outcome.kind is OutcomeKind.ACCEPTED:
            if outcome.suite not in offered or outcome.suite not in self._remaining:
                self.failure = f"server picked suite 0x{outcome.suite:04x}, not in the offer"
                return
            self.picks.append(Pick(outcome.suite, offered, outcome))
            self._remaining.remove(outcome.suite)
            if offered in self._closed_on:
                self.failure = ("the server accepted an offer it had closed the connection "
                                "on: it drops connections, so the suites it closed on are "
                                "unknown")
        elif outcome.kind is OutcomeKind.WRONG_VERSION:
            self.version_refused = outcome.detail
        elif (outcome.kind is OutcomeKind.CLOSED and len(offered) > 1
              and self._splits_left > (0 if self.picks else MAX_SPLITS - SPLITS_BEFORE_A_PICK)):
            self._splits_left -= 1
            half = len(offered) // 2
            self._splits[:0] = [offered[:half], offered[half:]]
        elif (outcome.kind is OutcomeKind.CLOSED and self.picks
              and offered not in self._closed_on):
            self._closed_on.add(offered)
            self._splits.insert(0, offered)  # once more, before its suites are retired
        elif outcome.kind.is_refusal:
            offered_set = set(offered)
            self._remaining = [code for code in self._remaining if code not in offered_set]
            self._alerted |= outcome.kind is OutcomeKind.ALERT
            if outcome.kind is OutcomeKind.CLOSED:
                self._retired_closed += [c for c in offered if c not in self._retired_closed]
        else:
            self.failure = outcome.detail or outcome.kind.value

    def _record_check(self, offered: tuple[int, ...], outcome: HelloOutcome) -> None:
        self._check = ()
        if self._checked_pick:  # a suite it accepted before
            if outcome.kind is not OutcomeKind.ACCEPTED or outcome.suite != offered[0]:
                self.failure = (f"the server no longer accepts suite 0x{offered[0]:04x} "
                                f"({outcome.detail or outcome.kind.value}): it drops "
                                "connections, so the suites it closed on are unknown")
            return
        if outcome.kind is OutcomeKind.ACCEPTED and outcome.suite in offered:
            # a suite retired as refused is served: the closes were drops, not refusals
            self.picks.append(Pick(outcome.suite, offered, outcome))
            self.failure = (f"the server accepted suite 0x{outcome.suite:04x} after closing "
                            "the connection on it: it drops connections, so the suites it "
                            "closed on are unknown")
        elif outcome.kind is OutcomeKind.CLOSED and self._tries_left > 1:
            self._tries_left -= 1  # closed again: as a refusal would be; once more
        elif outcome.kind is OutcomeKind.CLOSED and not (self.picks or self._alerted):
            self._check_windows = []  # it closes on this version: it does not speak it
        else:  # closed every time, or refused otherwise: this window is refused
            assert self._check_windows is not None
            self._check_windows.pop(0)
            self._tries_left = self._tries()

    def _tries(self) -> int:
        """Offers of each window at the end: once only for a version the server never
        answered but by closing (it may not speak it: one connection more)."""
        return UNION_CHECKS if self.picks or self._alerted else 1

    @property
    def accepted(self) -> tuple[int, ...]:
        return tuple(pick.code for pick in self.picks)

    @property
    def picks_show_server_order(self) -> bool:
        """Was every pick made from an offer that also held every later pick?"""
        return all(
            set(self.accepted[i + 1 :]) <= set(pick.offered) for i, pick in enumerate(self.picks)
        )


class ServerOrderProbe:
    """The order in which the server picks among ``accepted``, and whether it is its own."""

    def __init__(self, enumeration: SuiteEnumeration, window: int = WINDOW) -> None:
        self._window = window
        self.order: list[int] = []
        self.is_server_order: bool | None = None  # None = unknown (failure or < 2 suites)
        self.failure = ""
        self._done = len(enumeration.accepted) < 2
        if enumeration.picks_show_server_order:
            self.order = list(enumeration.accepted)
            self._remaining: list[int] = []
        else:
            self._remaining = list(enumeration.accepted)

    def next_offer(self) -> tuple[int, ...] | None:
        if self._done or self.failure:
            return None
        if len(self._remaining) > 1:
            return tuple(self._remaining[: self._window])
        if self._remaining:  # the last one left is the server's last choice
            self.order.append(self._remaining.pop())
        return (self.order[1], self.order[0])

    def record(self, offered: tuple[int, ...], outcome: HelloOutcome) -> None:
        if outcome.kind is not OutcomeKind.ACCEPTED or outcome.suite not in offered:
            self.failure = outcome.detail or outcome.kind.value
            return
        if self._remaining:
            self.order.append(outcome.suite)
            self._remaining.remove(outcome.suite)
            return
        # The reversed pair: the server kept its first choice, or it followed ours.
        self.is_server_order = outcome.suite == self.order[0]
        self._done = True


__all__ = ["WINDOW", "Pick", "ServerOrderProbe", "SuiteEnumeration"]
