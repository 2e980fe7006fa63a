"""The closure re-probe on real loopback sockets: what each answer means, and that a
probe the batch's deadline cut short says nothing (the rule then closes nothing)."""

from __future__ import annotations

import asyncio
import socket

from probers.reprobe import Answer, reprobe
from schemas.records import Proto
from tests.loopback import full_accept_queue
from tests.servers import free_port


def test_answers_of_a_listener_a_closed_port_and_a_dropping_one() -> None:
    with socket.socket() as listener, full_accept_queue() as dropping:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        open_port, closed = listener.getsockname()[1], free_port()
        keys = [("127.0.0.1", Proto.TCP, p) for p in (open_port, closed, dropping)]
        answers = asyncio.run(reprobe(keys, timeout=0.5, deadline=30))
    assert [answers.get(k) for k in keys] == [Answer.OPEN, Answer.REFUSED, Answer.SILENT]


def test_a_probe_the_deadline_cut_short_gives_no_answer() -> None:
    # Given a port that drops SYNs, probed with a 3 s timeout but 0.4 s left of the
    # batch's deadline (a probe late in a big batch)
    with full_accept_queue() as dropping:
        key = ("127.0.0.1", Proto.TCP, dropping)
        answers = asyncio.run(reprobe([key], timeout=3.0, deadline=0.4))
    # Then it has no answer, so the rule keeps the port open (before: SILENT, which
    # closes a TCP port, after 0.4 s, less than the kernel's ~1 s SYN retransmit)
    assert answers == {}
