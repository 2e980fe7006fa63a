"""nmap-services reader: parsing, top-N with stable ties, lookups, missing-file handling.

Fixture lines are our own, in nmap-services format (the real file is under the
NPSL and is only read where it is installed). The last tests compare our top-1000
lists with nmap's own ``scaninfo`` when nmap is installed; ``--exclude`` of the
only target makes nmap print its scaninfo without sending a single packet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from probers.nmapdata import ENV_DATA_DIR, NmapDataError, NmapDataUnavailable, data_file
from probers.nmapdata.services import ServicesDB

OWN_SERVICES = b"""\
# name   port/proto  frequency  # comment
alpha    1/tcp   0.500000   # most common tcp
beta     2/tcp   0.100000
gamma    3/tcp   0.300000
delta    4/tcp   0.100000   # ties with beta: file order keeps beta first
epsilon  5/tcp   0.100000
zeta     6/udp   0.200000
unknown  7/tcp   0.000000   # never seen open: cannot rank
eta      2/udp   0.200000   # ties with zeta (port 6) but comes later in the file
theta    9/sctp  0.010000
"""


def test_top_ports_orders_by_frequency_and_keeps_file_order_on_ties() -> None:
    # Given our own nmap-services lines
    db = ServicesDB.parse(OWN_SERVICES)
    # When / Then
    assert db.top_ports("tcp", 3) == [1, 3, 2]
    assert db.top_ports("tcp", 10) == [1, 3, 2, 4, 5]
    assert db.top_ports("udp", 1) == [6]  # file order, not port order, breaks the tie
    assert db.top_ports("UDP", 5) == [6, 2]
    assert db.top_ports("tcp", 0) == []


def test_service_name_and_frequency_lookups() -> None:
    db = ServicesDB.parse(OWN_SERVICES)
    assert db.service_name("tcp", 3) == "gamma"
    assert db.service_name("udp", 2) == "eta"
    assert db.service_name("tcp", 9999) == ""
    assert db.frequency("tcp", 1) == pytest.approx(0.5)
    assert db.frequency("sctp", 9) == pytest.approx(0.01)
    assert db.frequency("udp", 1) == 0.0


def test_malformed_line_names_its_line() -> None:
    with pytest.raises(NmapDataError, match=r":2: bad port/proto"):
        ServicesDB.parse(b"ok 1/tcp 0.1\nbad 70000/tcp 0.1\n")
    with pytest.raises(NmapDataError, match=r":1: bad port or frequency"):
        ServicesDB.parse(b"bad x/tcp 0.1\n")


def test_missing_file_raises_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NmapDataUnavailable, match="nmap-common"):
        ServicesDB.load(tmp_path)


def test_env_variable_points_at_another_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a directory holding our own file, named by the environment variable
    (tmp_path / "nmap-services").write_bytes(OWN_SERVICES)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))
    # When loading without an explicit path
    db = ServicesDB.load()
    # Then our file was read
    assert db.service_name("tcp", 1) == "alpha"


def _installed() -> bool:
    try:
        data_file("nmap-services", "/usr/share/nmap")
    except NmapDataUnavailable:
        return False
    return True


def _expand(services: str) -> list[int]:
    ports: list[int] = []
    for part in services.split(","):
        first, _, last = part.partition("-")
        ports.extend(range(int(first), int(last or first) + 1))
    return ports


def _nmap_scaninfo(scan_type: str) -> list[int]:
    # --exclude removes the only target: nmap prints its scaninfo and sends nothing.
    proc = subprocess.run(
        [
            "nmap",
            scan_type,
            "--top-ports",
            "1000",
            "-oX",
            "-",
            "--exclude",
            "127.0.0.1",
            "127.0.0.1",
            "--datadir",
            "/usr/share/nmap",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "NMAPDIR": "/usr/share/nmap"},
    )
    found = re.search(r'<scaninfo [^>]* services="([^"]+)"', proc.stdout)
    assert found, proc.stdout[:500]
    return _expand(found.group(1))


needs_nmap = pytest.mark.skipif(
    shutil.which("nmap") is None or not _installed(), reason="nmap / nmap-common not installed"
)


@needs_nmap
@pytest.mark.skipif(os.geteuid() != 0, reason="nmap -sU needs root, even to print its scaninfo")
def test_udp_top_1000_equals_nmaps_own_list() -> None:
    # Given the installed nmap-services and nmap itself
    db = ServicesDB.load("/usr/share/nmap")
    # When we compute the UDP top 1000
    ours = db.top_ports("udp", 1000)
    # Then it is exactly the list nmap scans with -sU --top-ports 1000
    assert len(ours) == 1000
    assert sorted(ours) == _nmap_scaninfo("-sU")


@needs_nmap
def test_tcp_top_1000_equals_nmaps_own_list() -> None:
    db = ServicesDB.load("/usr/share/nmap")
    assert sorted(db.top_ports("tcp", 1000)) == _nmap_scaninfo("-sT")


@needs_nmap
def test_real_file_has_a_tie_at_the_udp_cut_resolved_in_file_order() -> None:
    # Given the installed file (NOTES.md: at the 1,000th UDP place many entries tie)
    db = ServicesDB.load("/usr/share/nmap")
    ranked = db.ranked("udp")
    cut = ranked[999].frequency
    tied = [e for e in ranked if e.frequency == cut]
    kept = [e for e in ranked[:1000] if e.frequency == cut]
    # Then the tied entries that make the cut are the first ones in file order
    assert len(tied) > len(kept) > 0
    assert kept == tied[: len(kept)]
    assert [e.line for e in kept] == sorted(e.line for e in kept)
