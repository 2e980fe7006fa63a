"""The harness's socket fence (tests/netfence.py): loopback and namespace hosts only, in
this process and in the Python processes it starts. A call outside the fence is raised
here as its audit event only (``sys.audit``, what CPython raises before the call), so no
socket call is ever made to an address but loopback, even if the fence failed."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests import netfence


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1", True), ("127.18.3.4", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.1", False), ("8.8.8.8", False), ("10.0.0.1", False), ("fd00::1", False),
    ("2001:db8::1", False), ("::ffff:192.0.2.1", False),
    # the namespace range, with no namespace routing it here: the default route
    ("198.18.0.5", False), ("198.19.255.254", False),
])
def test_the_fence_lets_through_loopback_only_without_a_namespace(host: str,
                                                                  allowed: bool) -> None:
    assert netfence.is_allowed(host) is allowed


def test_a_connect_outside_the_fence_is_refused_before_the_call() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(netfence.FenceError, match="192.0.2.123"):
            sys.audit("socket.connect", s, ("192.0.2.123", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(netfence.FenceError, match="198.18.0.77"):
            sys.audit("socket.connect", s, ("198.18.0.77", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", 9))  # loopback: let through
        assert s.getpeername() == ("127.0.0.1", 9)


def test_a_python_child_of_the_tests_is_fenced_too() -> None:
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.connect(('127.0.0.1', 9))\n"
            "print('loopback ok')\n"
            "sys.audit('socket.connect', s, ('192.0.2.123', 9))\n"
            "print('not fenced')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.stdout.split() == ["loopback", "ok"]
    assert run.returncode == 1
    assert "FenceError: netfence: socket.connect to 192.0.2.123 refused" in run.stderr


def test_a_refusal_the_caller_swallows_still_shows_on_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Given code that treats any OSError as "no answer", as the probers do
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            sys.audit("socket.connect", s, ("192.0.2.124", 161))
        except OSError:
            pass
    # Then the attempt is on stderr all the same
    assert ("netfence: refused socket.connect to 192.0.2.124; nothing was sent"
            in capsys.readouterr().err)
