"""`portwatch report` while `serve` holds the embedded store: answered through its API.

Given a chdb store with a scan of two loopback services, and `portwatch serve` holding it
(its own process, which advertises itself in the store directory), when `portwatch report`
runs on the same store, then it prints exactly what it prints once the server has stopped,
and says on stderr which process answered. With a token, the advert carries it. When the
server is gone the advert is gone; a stale or hostile advert is never followed.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portwatch.store_holder import ADVERT_FILE, advert_url, parse_advert
from tests import loopback
from tests.conftest import REPO, run_cli

FAST = {"PORTWATCH_IDENTIFY_BUDGET": "6", "PORTWATCH_BANNER_WAIT": "1"}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store holding one scan of 127.0.0.1 (ssh and http on free ports)."""
    root = tmp_path_factory.mktemp("held")
    with contextlib.ExitStack() as stack:
        ssh = stack.enter_context(loopback.listen(
            loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))).port
        http = stack.enter_context(loopback.listen(loopback.http_handler("nginx/1.22.1"))).port
        inventory = root / "assets.yaml"
        inventory.write_text("Example Corp:\n  - target: 127.0.0.1\n    asset: web-1\n")
        result = run_cli("scan", "--inventory", str(inventory), "--ports", f"{ssh},{http}",
                         "-q", store=f"chdb://{root / 'store'}", env=FAST)
        assert result.code == 0, result.stderr
    yield root / "store"


@contextlib.contextmanager
def serving(store: Path, *args: str, token: str = "",
            extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    port = loopback.free_port()
    env = {**os.environ, "PORTWATCH_WEB_TOKEN": token, **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "portwatch", "serve", "--store",
                             f"chdb://{store}", "--port", str(port), *args], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not (store / ADVERT_FILE).exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
            assert time.monotonic() < deadline, "serve did not advertise itself"
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


REPORT_ARGS = [("list", "-f", "json"), ("summary", "-f", "json"), ("products", "-f", "csv"),
               ("list", "--org", "Example Corp", "--color", "green", "-f", "json"),
               ("list", "--limit", "1", "-f", "json"), ("list",),
               # the What-changed report too (the holder's /api/v1/changes)
               ("changes", "-f", "json"),
               ("changes", "--kind", "opened", "--target", "127.0.0.0/8", "-f", "csv"),
               ("changes", "--from", "2026-01-01", "--org", "example corp", "--limit", "1",
                "-f", "json"), ("changes",)]


def test_report_while_serve_holds_the_store_answers_through_it(scanned: Path) -> None:
    store = f"chdb://{scanned}"
    # Given serve holding the store
    with serving(scanned) as proc:
        advert = json.loads((scanned / ADVERT_FILE).read_text())
        assert advert["pid"] == proc.pid and advert["command"] == "serve"
        assert stat.S_IMODE((scanned / ADVERT_FILE).stat().st_mode) == 0o600
        # When reports run on the same store
        held = {args: run_cli("report", *args, store=store) for args in REPORT_ARGS}
    # Then each says which process answered, on stderr, in one line
    for args, result in held.items():
        assert result.code == 0, (args, result.stderr)
        assert result.stderr.splitlines() == [
            f"portwatch: the store at {scanned} is held by `portwatch serve` (pid "
            f"{proc.pid}); answered through its JSON API at {advert['url']}"]
    # And once serve has stopped, its advert is gone
    assert not (scanned / ADVERT_FILE).exists()
    # And the direct reports print exactly the same
    for args, result in held.items():
        direct = run_cli("report", *args, store=store)
        assert direct.code == 0 and direct.stderr == ""
        assert result.stdout == direct.stdout, args
    rows = json.loads(held[REPORT_ARGS[0]].stdout)
    assert sorted(r["service"] for r in rows) == ["http", "ssh"]
    # (the scan opened both ports: two events, newest first, the JSON keys of the CLI)
    opened = json.loads(held[("changes", "-f", "json")].stdout)
    assert sorted((r["kind"], r["asset"]) for r in opened) == [("opened", "web-1")] * 2
    assert len(json.loads(held[REPORT_ARGS[8]].stdout)) == 1
    assert len(json.loads(held[("list", "--limit", "1", "-f", "json")].stdout)) == 1


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--target", "a\x1bb", "the target contains control characters"),
    # (a line break folds to a space, as a label is stored; another control does not)
    ("--org", "Example\x07Corp", "the organization contains control characters"),
    ("--org", "x" * 9000, "the organization is too long (9000 characters; at most 4096)"),
])
def test_a_bad_filter_is_one_usage_error_whether_a_holder_answers_or_not(
        scanned: Path, flag: str, value: str, words: str) -> None:
    store = f"chdb://{scanned}"
    # Given a filter value no report can match (a review: read directly it was "no rows",
    # exit 0; through a serve holding the store, "its API failed: answered 400", exit 1)
    direct = run_cli("report", "list", flag, value, store=store)
    with serving(scanned):
        held = run_cli("report", "list", flag, value, store=store)
    # Then both refuse it in one line, exit 2, saying what is wrong
    for result in (direct, held):
        assert result.code == 2, result.stderr
        assert words in result.stderr and "API" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_command_that_needs_the_store_names_the_serve_holding_it(scanned: Path) -> None:
    # Given serve holding the store, when a command that must open it runs
    with serving(scanned) as proc:
        result = run_cli("prune", "--older-than", "90d", store=f"chdb://{scanned}")
    # Then one line names the holder and what works meanwhile (it advised starting a
    # watcher with --serve, the very thing holding the store: a review)
    assert result.code == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"held by `portwatch serve` (pid {proc.pid}, serving http://127.0.0.1:" in line
    assert "`portwatch report` and the web pages read through it" in line
    assert "--serve PORT" not in line


def test_a_holder_whose_prior_setting_differs_says_its_answer_follows_its_own(
        scanned: Path) -> None:
    store = f"chdb://{scanned}"
    # Given serve holding the store with the Internet prior off (its environment)
    with serving(scanned, extra_env={"PORTWATCH_PREVALENCE_PRIOR": "false"}):
        advert = json.loads((scanned / ADVERT_FILE).read_text())
        # When this shell (the prior on, the default) asks for the List and the changes
        listed = run_cli("report", "list", "-f", "json", store=store)
        changes = run_cli("report", "changes", "-f", "json", store=store)
    # Then the List's answer is the holder's (no prior: estate counts), and the shell is
    # told so in one more line (before: silently, a review); the changes report, which
    # counts no prevalence, says nothing more
    assert advert["prevalence_prior"] is False
    assert listed.code == 0 and changes.code == 0, (listed.stderr, changes.stderr)
    assert {r["prevalence_source"] for r in json.loads(listed.stdout)} == {"estate"}
    assert {r["internet_instances"] for r in json.loads(listed.stdout)} == {0}
    assert listed.stderr.splitlines()[1:] == [
        "portwatch: warning: prevalence in this answer leaves out the Internet prior, as "
        "`portwatch serve` is set (PORTWATCH_PREVALENCE_PRIOR=false where it runs), not as "
        "this shell is"]
    assert len(changes.stderr.splitlines()) == 1


def test_report_through_a_token_server(scanned: Path) -> None:
    # Given serve with a token (the advert carries it)
    with serving(scanned, token="k" * 24):
        result = run_cli("report", "products", "-f", "json", store=f"chdb://{scanned}")
    # Then the report is answered all the same
    assert result.code == 0, result.stderr
    assert "answered through its JSON API" in result.stderr
    assert [r["product"] for r in json.loads(result.stdout)] != []


def test_stale_advert_is_not_followed(scanned: Path, tmp_path: Path) -> None:
    # Given an advert left by a killed server (its pid is gone) and a live listener at its
    # URL that would record any request
    requests: list[bytes] = []

    def record(conn):  # type: ignore[no-untyped-def]
        requests.append(conn.recv(1024))

    with loopback.listen(record) as listener:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (scanned / ADVERT_FILE).write_text(json.dumps(
            {"pid": dead.pid, "url": f"http://127.0.0.1:{listener.port}", "token": "",
             "command": "serve"}))
        try:
            # When a report runs (nothing holds the store) / Then it reads the store directly
            result = run_cli("report", "summary", "-f", "json", store=f"chdb://{scanned}")
        finally:
            (scanned / ADVERT_FILE).unlink()
    assert result.code == 0 and result.stderr == ""
    assert requests == []


# -- the advert file is input like any other ---------------------------------------------------


@pytest.mark.parametrize(("host", "url"), [("127.0.0.1", "http://127.0.0.1:8765"),
                                           ("127.0.0.60", "http://127.0.0.60:8765"),
                                           ("0.0.0.0", "http://127.0.0.1:8765"),
                                           ("::", "http://[::1]:8765"),
                                           ("localhost", "http://127.0.0.1:8765")])
def test_advert_url_is_reachable_locally(host: str, url: str) -> None:
    assert advert_url(host, 8765) == url


@pytest.mark.parametrize("url", ["http://198.18.0.9:8765", "http://8.8.8.8:53",
                                 "https://127.0.0.1:8765", "http://localhost:8765",
                                 "http://127.0.0.1:0", "http://127.0.0.1:8765/x",
                                 "http://127.0.0.1:99999"])
def test_advert_for_a_foreign_or_odd_url_is_refused(url: str) -> None:
    raw = json.dumps({"pid": 1, "url": url, "token": "", "command": "serve"}).encode()
    assert parse_advert(raw) is None


def test_good_advert_is_read() -> None:
    raw = json.dumps({"pid": 42, "url": "http://127.0.0.60:8765", "token": "t" * 20,
                      "command": "process --serve"}).encode()
    advert = parse_advert(raw)
    assert advert is not None
    assert (advert.pid, advert.url, advert.token, advert.command) == (
        42, "http://127.0.0.60:8765", "t" * 20, "process --serve")


@given(st.binary(max_size=5000))
def test_any_bytes_are_an_advert_or_none(raw: bytes) -> None:
    advert = parse_advert(raw)
    assert advert is None or advert.url.startswith("http://")


@given(st.dictionaries(st.sampled_from(["pid", "url", "token", "command"]),
                       st.one_of(st.integers(), st.text(max_size=50), st.none(), st.booleans(),
                                 st.lists(st.integers(), max_size=3))))
def test_any_json_object_is_an_advert_or_none(data: dict[str, object]) -> None:
    advert = parse_advert(json.dumps(data).encode())
    if advert is not None:
        assert isinstance(advert.pid, int) and advert.pid > 0
        assert advert.url.startswith("http://127.") or advert.url.startswith("http://[")
