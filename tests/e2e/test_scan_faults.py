"""Faults around an embedded scan, caused for real through the real ``portwatch`` command:

* a checkpoint file that is corrupt, or was written for other work, is refused with one
  line and exit 2 before anything is scanned (it is never "resumed");
* a scan killed outright (SIGKILL) still shows its host in the Summary, as not finished,
  beside the findings it had stored;
* processes racing to open one embedded store at the same moment each get the store or
  the one "in use" line, never a raw engine error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from producers.shards import Checkpoint
from tests import loopback
from tests.conftest import REPO, run_cli

MUTE_HOST = "127.0.0.144"  # no other test uses it


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_corrupt_checkpoint_is_refused_before_scanning(tmp_path: Path) -> None:
    # Given a checkpoint file that is not one
    checkpoint = tmp_path / "ck.json"
    checkpoint.write_text('{"scan_id": "x", "seed": [1]')
    store = tmp_path / "store"
    # When a scan is asked to resume from it
    result = run_cli("scan", "--ports", "1-100", "--udp", "none", "--checkpoint",
                     str(checkpoint), "127.0.0.1", store=f"chdb://{store}", timeout=60)
    # Then one line and exit 2, nothing written, the file left as it was
    assert result.code == 2
    assert one_error_line(result.stderr) == (
        f"portwatch: error: checkpoint {checkpoint} is not a portwatch checkpoint: give "
        "another --checkpoint path, or move this file away to start over")
    assert not store.exists()
    assert checkpoint.read_text() == '{"scan_id": "x", "seed": [1]'


def test_a_checkpoint_of_other_work_is_refused_not_resumed(tmp_path: Path) -> None:
    # Given the checkpoint of an interrupted scan of ports 1-100 (written by portwatch)
    checkpoint = tmp_path / "ck.json"
    Checkpoint("earlier", 3, "0123456789abcdef01234567", {"tcp": 1}).save(checkpoint)
    store = tmp_path / "store"
    # When another command (other ports) runs with the same checkpoint file
    result = run_cli("scan", "--ports", "1-200", "--udp", "none", "--checkpoint",
                     str(checkpoint), "127.0.0.1", store=f"chdb://{store}", timeout=60)
    # Then it is refused with one line (exit 2): nothing scanned, the checkpoint kept
    assert result.code == 2
    assert one_error_line(result.stderr) == (
        f"portwatch: error: checkpoint {checkpoint} was written for other work (scan earlier: "
        "other targets, ports, UDP ports, shard sizes or seed): run the same command as "
        "before to resume it, or remove it")
    assert not store.exists()
    assert Checkpoint.load(checkpoint) is not None


def test_a_scan_killed_outright_still_shows_its_host_as_not_finished(tmp_path: Path) -> None:
    # Given a host with an open port and a port whose accept queue is full (the kernel
    # drops the SYNs: the scan waits on it), scanned shard by shard
    store = f"chdb://{tmp_path / 'store'}"
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1\r\n")) as ssh, \
            loopback.full_accept_queue() as slow:
        env = {**os.environ, "PORTWATCH_STORE": store, "COLUMNS": "250",
               "PORTWATCH_TIMEOUT": "20", "PORTWATCH_RETRIES": "0",
               "PORTWATCH_BATCH_SECONDS": "0.1"}
        ports = ",".join(str(p) for p in sorted((ssh.port, slow)))
        proc = subprocess.Popen(
            [sys.executable, "-m", "portwatch", "scan", "--ports", ports, "--udp", "none",
             "--no-tls", "--no-nmap-probes", "127.0.0.1"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # When it is killed with SIGKILL while the slow port is still pending
        time.sleep(6)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # Then the Summary shows the host, its scan not completed
    result = run_cli("report", "summary", "--format", "json", store=store, timeout=60)
    assert result.code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["ip"] == "127.0.0.1"
    assert row["scan_status"] == "interrupted"


RACER = textwrap.dedent("""
    import json, sys, time
    from stream_processors.store import Store, StoreBusy, StoreError
    start = float(sys.argv[2])
    while time.time() < start:
        time.sleep(0.001)
    try:
        store = Store.from_url(sys.argv[1])
        print(json.dumps({"opened": True}), flush=True)
        time.sleep(3)
        store.close()
    except StoreBusy:
        print(json.dumps({"opened": False, "busy": True}), flush=True)
    except StoreError as exc:
        print(json.dumps({"opened": False, "busy": False, "error": str(exc)}), flush=True)
""")


def test_processes_racing_for_one_store_get_it_or_the_busy_line(tmp_path: Path) -> None:
    # Given four processes that open the same new embedded store at the same instant
    url = f"chdb://{tmp_path / 'raced'}"
    start = time.time() + 3
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, str(start)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "Cannot lock" not in err, err
        outcomes.append(json.loads(out))
    # Then exactly one owns it and every other one got the "in use" answer
    assert sorted(json.dumps(o, sort_keys=True) for o in outcomes) == sorted(
        [json.dumps({"opened": True})]
        + [json.dumps({"busy": True, "opened": False}, sort_keys=True)] * 3)


def ctrl_c_after_discovery(tmp_path: Path, ports_wanted: int, presses: int
                           ) -> tuple[int, str, str, str, list[int]]:
    """A scan of ``ports_wanted`` ports of a loopback host that accept and never speak
    (identification takes its whole budget on each, long after discovery has ended),
    sent ``presses`` Ctrl-C once discovery has ended (the progress line says
    identification is what is left, not "ETA 0s"). (exit code, stdout, stderr, store,
    ports)"""
    store = f"chdb://{tmp_path / 'store'}"
    with contextlib.ExitStack() as stack:
        ports = sorted(stack.enter_context(loopback.listen(loopback.silent(30),
                                                           addresses=(MUTE_HOST,))).port
                       for _ in range(ports_wanted))
        env = {**os.environ, "PORTWATCH_STORE": store, "COLUMNS": "250",
               "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "portwatch", "scan", "--ports",
             ",".join(map(str, ports)), "--udp", "none", "--no-tls", "--no-nmap-probes",
             MUTE_HOST], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert proc.stderr is not None
        lines: list[str] = []
        try:
            for line in iter(proc.stderr.readline, ""):  # bounded: the scan ends itself
                lines.append(line)
                if "identifying:" in line:
                    break
            for press in range(presses):
                if press:
                    lines.append(proc.stderr.readline())  # what the one before said
                proc.send_signal(signal.SIGINT)
            out, rest = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return proc.returncode, out, "".join(lines) + rest, store, ports


def test_two_ctrl_c_say_what_each_does_and_keep_every_port(tmp_path: Path) -> None:
    # When discovery of 30 mute ports has ended, Ctrl-C, then Ctrl-C again
    code, _out, said, store, ports = ctrl_c_after_discovery(tmp_path, 30, presses=2)
    # Then each says what it does, the scan exits 130, and every port is stored
    assert "progress: ports scanned; identifying: " in said, said
    assert "interrupt again to store them unidentified now" in said, said
    assert "stopping: storing what is left unidentified" in said, said
    assert code == 130, said
    assert "Traceback" not in said
    result = run_cli("report", "list", "--format", "json", store=store, timeout=60)
    assert sorted(r["port"] for r in json.loads(result.stdout)) == ports


def test_one_ctrl_c_after_discovery_cuts_nothing_and_the_scan_completes(
        tmp_path: Path) -> None:
    # When discovery of 4 mute ports has ended, one Ctrl-C
    code, out, said, store, _ports = ctrl_c_after_discovery(tmp_path, 4, presses=1)
    # Then identification finishes, and the scan, which the stop cut nothing of, says
    # it is done and exits 0 (it exited 130 "interrupted" beside hosts stored
    # "completed": a review), saying why
    assert "interrupt again to store them unidentified now" in said, said
    assert code == 0, said
    assert " done in " in out and "nothing was cut short, the scan is complete" in out, out
    assert "Traceback" not in said
    result = run_cli("report", "summary", "--format", "json", store=store, timeout=60)
    [host] = json.loads(result.stdout)
    assert (host["scan_status"], host["open_ports"]) == ("completed", 4)


def test_a_low_open_files_limit_is_raised_or_refused_in_one_line(tmp_path: Path) -> None:
    scan = (f"{sys.executable} -m portwatch scan --ports 1-20 --udp none -q --no-tls "
            "127.0.0.1 --store chdb://{store}")
    env = {**os.environ, "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"}

    def under(limit: str, store: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f"ulimit {limit} && "
                               + scan.format(store=tmp_path / store)],
                              cwd=REPO, capture_output=True, text=True, timeout=120, env=env)

    # Given a hard open-files limit of 90: a scan is refused in one line, exit 2, before
    # anything is sent or stored (its insert failed at the end in a traceback, every port
    # found lost: a review)
    hard = under("-n 90", "hard")
    assert hard.returncode == 2, hard.stderr
    assert one_error_line(hard.stderr) == (
        "portwatch: error: the open-files limit is 90 (ulimit -n): portwatch needs at least "
        "256 to scan (sockets and the store's files share it); raise it and run it again")
    assert not (tmp_path / "hard").exists()
    # And a soft limit of 90 under a higher hard one is raised: the scan runs
    soft = under("-S -n 90", "soft")
    assert soft.returncode == 0, soft.stderr
