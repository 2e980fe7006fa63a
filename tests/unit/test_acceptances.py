"""The one rule of when a port's identification ends its acceptance
(stream_processors/acceptances.py), which the recorder, alerting and the reports share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_processors.acceptances import ends_acceptance, is_in_force

SSH89 = ("ssh", "OpenSSH", "8.9p1")
SSH90 = ("ssh", "OpenSSH", "9.0p1")
DROPBEAR = ("ssh", "Dropbear sshd", "2020.81")
NONE = ("", "", "")


@pytest.mark.parametrize(("accepted", "before", "after", "ends"), [
    (SSH89, SSH89, SSH90, True),  # another version
    (SSH89, SSH90, SSH89, False),  # back to the one accepted (an earlier change ended it)
    (SSH89, SSH89, NONE, False),  # a scan that could not name it judges nothing
    (SSH89, NONE, DROPBEAR, True),  # named again, otherwise
    (SSH89, NONE, SSH89, False),  # named again, as accepted
    (NONE, SSH89, DROPBEAR, True),  # accepted before it was named: its first change
    (NONE, NONE, SSH89, False),  # ... and its first name is no change
    (NONE, SSH89, NONE, False),
])
def test_when_a_renamed_port_ends_its_acceptance(accepted: tuple[str, str, str],
                                                 before: tuple[str, str, str],
                                                 after: tuple[str, str, str],
                                                 ends: bool) -> None:
    assert ends_acceptance(accepted, before, after) is ends


names = st.tuples(*[st.sampled_from(["", "a", "b"])] * 3)


@given(names, names, names)
def test_a_port_whose_change_ends_an_acceptance_is_not_in_force_under_it(
        accepted: tuple[str, str, str], before: tuple[str, str, str],
        after: tuple[str, str, str]) -> None:
    # the reports (is_in_force) never show as accepted what the recorder just ended,
    # unless it was accepted before it had a name
    if ends_acceptance(accepted, before, after) and any(accepted):
        assert not is_in_force(accepted, after)
    # and a port named as accepted is never ended
    if after == accepted and any(after):
        assert not ends_acceptance(accepted, before, after)
