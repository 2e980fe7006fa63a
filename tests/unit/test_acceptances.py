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


@pytest.mark.parametrize(("accepted", "named", "ends"), [
    (SSH89, SSH90, True),  # another version
    (SSH89, DROPBEAR, True),  # another product
    (SSH89, SSH89, False),  # as accepted (a rollback after an end is ended already)
    (SSH89, NONE, False),  # a scan that could not name it judges nothing
    (NONE, SSH89, False),  # nothing noted: the first name is noted, not judged
])
def test_when_a_named_port_ends_its_acceptance(accepted: tuple[str, str, str],
                                               named: tuple[str, str, str],
                                               ends: bool) -> None:
    assert ends_acceptance(accepted, named) is ends


names = st.tuples(*[st.sampled_from(["", "a", "b"])] * 3)


@given(names, names)
def test_what_a_scan_ends_is_never_in_force_and_the_reverse(
        accepted: tuple[str, str, str], named: tuple[str, str, str]) -> None:
    # the reports and alerting (is_in_force) never show as accepted what the recorder
    # ends (ends_acceptance), and never hide what it keeps, for a port named
    if any(named) and any(accepted):
        assert ends_acceptance(accepted, named) is not is_in_force(accepted, named)
    # a port not named, or an acceptance that noted nothing: in force, never ended
    if not any(named) or not any(accepted):
        assert is_in_force(accepted, named) and not ends_acceptance(accepted, named)
