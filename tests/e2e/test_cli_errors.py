"""Bad input through the real ``portwatch`` command: one clear line on stderr that
starts with "portwatch: error:", exit code 2, no traceback, and nothing written (the
store directory is not even created). A second process on a busy embedded store gets
one clear line and exit code 1.

Nothing here is scanned: every case is refused before discovery starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, CliResult, make_store, run_cli


def assert_refused(result: CliResult, message: str, *, code: int = 2) -> None:
    """Exit code, exactly one stderr line with the message, no traceback, no output."""
    assert result.code == code, (result.code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("portwatch: error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """Where the store would go: each test checks it was never created."""
    return tmp_path / "store"


SCAN_CASES = [
    pytest.param(["bad target!"], "not an address, CIDR block, range or hostname: 'bad target!'",
                 id="unknown-target"),
    pytest.param(["127.0.0.1/33"], "bad CIDR block '127.0.0.1/33'", id="malformed-cidr"),
    pytest.param(["127.0.0.300"], "not an address, CIDR block, range or hostname",
                 id="malformed-address"),
    pytest.param(["127.0.0.9-1"], "the end comes before the start", id="backwards-range"),
    # as an inventory's labels (5,000 characters were stored: a review)
    pytest.param(["--org", "o" * 257, "127.0.0.1"], "--org: label longer than 256 characters",
                 id="org-too-long"),
    pytest.param(["--asset", "a" * 257, "127.0.0.1"],
                 "--asset: label longer than 256 characters", id="asset-too-long"),
    pytest.param(["--org", "Ex\x01ample", "127.0.0.1"],
                 "--org: label contains control characters", id="org-control-character"),
    pytest.param(["--ports", "0", "127.0.0.1"], "bad port spec '0': ports are 1-65535",
                 id="port-zero"),
    pytest.param(["--ports", "22,http", "127.0.0.1"],
                 "bad port spec '22,http': 'http' is not a port or range", id="port-name"),
    pytest.param(["--ports", "90-80", "127.0.0.1"], "range 90-80 is backwards",
                 id="port-backwards"),
    pytest.param(["--ports", "1-70000", "127.0.0.1"], "ports are 1-65535", id="port-too-high"),
    pytest.param(["nosuchhost.invalid"], "cannot resolve 'nosuchhost.invalid'",
                 id="unresolvable-hostname"),
    pytest.param(["127.0.0.0/15"], "127.0.0.0/15 covers 131,072 addresses, more than a /16 "
                 "(65,536): pass --allow-large if you really mean it", id="larger-than-16"),
    pytest.param(["127.0.0.0-127.1.0.0"], "more than a /16", id="large-dash-range"),
    pytest.param([], "no targets: give TARGET... or --inventory FILE", id="no-targets"),
    pytest.param(["--inventory", "/nonexistent/assets.csv"], "cannot read inventory",
                 id="missing-inventory"),
    pytest.param(["--exclude", "not-a-net", "127.0.0.1"], "bad exclusion 'not-a-net'",
                 id="bad-exclusion"),
    pytest.param(["--exclude", "127.0.0.0/8", "127.0.0.1"], "nothing to scan",
                 id="everything-excluded"),
    pytest.param(["--concurrency", "0", "127.0.0.1"], "--concurrency must be between 1 and 100,000",
                 id="bad-setting-flag"),
    pytest.param(["--retries", "many", "127.0.0.1"], "Invalid value for '--retries'",
                 id="bad-flag-type"),
    pytest.param(["--no-such-flag", "127.0.0.1"], "No such option: --no-such-flag",
                 id="unknown-flag"),
    # an unset "$UDP" scanned no UDP port without a word (a review, 2026-12-06)
    pytest.param(["--udp", "", "127.0.0.1"],
                 "Invalid value for '-u' / '--udp': empty: give none to scan no UDP port",
                 id="empty-udp"),
    pytest.param(["--checkpoint", "/nonexistent/dir/ck.json", "127.0.0.1"],
                 "cannot write checkpoint /nonexistent/dir/ck.json: no directory "
                 "/nonexistent/dir", id="checkpoint-nowhere"),
]


@pytest.mark.parametrize(("args", "message"), SCAN_CASES)
def test_bad_scan_input_is_refused_before_anything_is_written(store_dir: Path, args: list[str],
                                                              message: str) -> None:
    # Given bad input, when `portwatch scan` runs
    result = run_cli("scan", *args, store=f"chdb://{store_dir}", timeout=60)
    # Then one clear line, exit code 2, and no store directory
    assert_refused(result, message)
    assert not store_dir.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///tmp/portwatch.db", "unknown store URL 'sqlite:///tmp/portwatch.db': use "
         "chdb:///path or clickhouse://user@host:8123/database"),
        ("chdb://", "store URL 'chdb://' has no path"),
        ("clickhouse:///db", "store URL 'clickhouse:///db' has no host"),
    ],
)
@pytest.mark.parametrize("command", [["scan", "--ports", "22", "127.0.0.1"],
                                     ["report", "summary"]])
def test_bad_store_url_is_refused(url: str, message: str, command: list[str]) -> None:
    # Given a bad --store URL, when scan or report runs, then refused before any work
    assert_refused(run_cli(*command, "--store", url, timeout=60), message)


def test_control_characters_the_user_gave_never_reach_the_terminal_raw(tmp_path: Path
                                                                       ) -> None:
    # Given a store path and an option value carrying a screen-clearing escape sequence
    missing = run_cli("report", "summary", "--store", f"chdb://{tmp_path}/\x1b[2Jx",
                      timeout=60)
    wrong = run_cli("report", "\x1b]0;title\x07\u202e", timeout=60)
    # Then each is refused in one line, the escapes written out (they reached stderr raw:
    # a review, 2026-12-06)
    assert_refused(missing, f"no store at {tmp_path}/\\x1b[2Jx: scan something first")
    assert_refused(wrong, "\\x1b]0;title\\x07\\u202e")
    assert not any(c in missing.stderr + wrong.stderr for c in "\x1b\x07\u202e")


@pytest.mark.parametrize(("args", "message"), [
    (["products", "--product-version", "1.0"],
     "--product-version does not filter the products report (it filters: list)"),
    (["ciphers", "--color", "red"],
     "--color does not filter the ciphers report (it filters: summary, list, products)"),
    (["summary", "--grade", "weak"],
     "--grade does not filter the summary report (it filters: ciphers)"),
])
def test_a_filter_the_report_does_not_take_is_refused(tmp_path: Path, args: list[str],
                                                      message: str) -> None:
    # Given a filter another report takes (ignored before: `products --product-version
    # 1.0` printed every version as if filtered, while the API answered 400; a review)
    result = run_cli("report", *args, "--store", f"chdb://{tmp_path}/store", timeout=60)
    # Then one line names the reports it filters, before any store is opened
    assert_refused(result, message)
    assert not (tmp_path / "store").exists()


def test_an_empty_store_flag_is_refused_not_read_as_the_default(tmp_path: Path) -> None:
    # an unset "$STORE" read (and scan would write) the default store (a review)
    env = {"HOME": str(tmp_path)}
    for command in (["report", "summary"], ["scan", "--ports", "1", "127.0.0.1"]):
        result = run_cli(*command, "--store", "", timeout=60, env=env)
        assert_refused(result, "Invalid value for '--store': empty: give a store URL, or "
                               "leave --store out for the default")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["scan", "--alerts", "", "--ports", "1", "127.0.0.1"], "'--alerts': empty: give the "
     "alerts file, or leave --alerts out (PORTWATCH_ALERTS)"),
    (["watch", "--schedule", "schedules.yaml", "--alerts", "", "--once"],
     "'--alerts': empty: give the alerts file"),
    (["alerts", "deliver", "--alerts", ""], "'--alerts': empty: give the alerts file"),
    (["accept", "127.0.0.1:80", "--note", "x", "--until", ""],
     "'--until': empty: give a date, or leave --until out for no expiry"),
    # an unset "$WAIT" used the file's wait without a word (a review)
    (["alerts", "deliver", "--alerts", "alerts.yaml", "--wait", ""],
     "'--wait': empty: give a duration (0: no retry wait), or leave --wait out for the "
     "file's delivery wait"),
])
def test_an_empty_alerts_file_or_expiry_is_refused(store_dir: Path, args: list[str],
                                                    message: str) -> None:
    # An unset "$ALERTS_FILE" scanned with alerting off, and the run's changes never
    # alerted later; an unset "$EXPIRY" accepted a risk for good (a review, 2026-12-06)
    assert_refused(run_cli(*args, store=f"chdb://{store_dir}", timeout=60), message)
    assert not store_dir.exists()


def test_bad_store_url_from_the_environment_is_refused() -> None:
    result = run_cli("scan", "--ports", "22", "127.0.0.1", store="mongodb://127.0.0.1/db",
                     timeout=60)
    assert_refused(result, "unknown store URL 'mongodb://127.0.0.1/db'")


def test_bad_setting_in_the_environment_is_refused(store_dir: Path) -> None:
    result = run_cli("scan", "127.0.0.1", store=f"chdb://{store_dir}",
                     env={"PORTWATCH_TIMEOUT": "soon"}, timeout=60)
    assert_refused(result, "PORTWATCH_TIMEOUT='soon' is not a valid float")
    assert not store_dir.exists()


@pytest.mark.parametrize(("env", "message"), [
    pytest.param({"PORTWATCH_PORTS": "0"},
                 "PORTWATCH_PORTS='0': bad port spec '0': ports are 1-65535", id="ports-zero"),
    pytest.param({"PORTWATCH_PORTS": "22,http"},
                 "PORTWATCH_PORTS='22,http': bad port spec '22,http': 'http' is not a port "
                 "or range (both ends required, e.g. 1-1024)", id="ports-name"),
    pytest.param({"PORTWATCH_UDP": "top0"},
                 "PORTWATCH_UDP='top0': topN needs 1 <= N <= 65,535 (or use none or a port "
                 "spec)", id="udp-top-zero"),
    pytest.param({"PORTWATCH_UDP": "bogus"},
                 "PORTWATCH_UDP='bogus': bad port spec 'bogus': 'bogus' is not a port or "
                 "range (both ends required, e.g. 1-1024) (or top1000, topN, none)",
                 id="udp-spec"),
    pytest.param({"PORTWATCH_UDP": "0"},
                 "PORTWATCH_UDP='0': bad port spec '0': ports are 1-65535 (or top1000, topN, "
                 "none)", id="udp-port-zero"),
    # a typo silently turned nmap's probes and the Internet prior off (a review)
    pytest.param({"PORTWATCH_NMAP_DATA": "/nonexistent"},
                 "PORTWATCH_NMAP_DATA='/nonexistent': no such directory (nmap's data files, "
                 "e.g. /usr/share/nmap; unset it for that default)", id="nmap-data"),
    # masscan's: every shard failed and was retried, or masscan hung (a review)
    pytest.param({"PORTWATCH_MASSCAN_ADAPTER_IP": "notanip"},
                 "PORTWATCH_MASSCAN_ADAPTER_IP='notanip': not an IPv4 address (the source "
                 "address masscan sends from)", id="masscan-adapter-ip"),
    pytest.param({"PORTWATCH_MASSCAN_ROUTER_MAC": "zz:zz"},
                 "PORTWATCH_MASSCAN_ROUTER_MAC='zz:zz': not a MAC address (six hex pairs, "
                 "e.g. 02:00:00:00:00:01)", id="masscan-router-mac"),
])
def test_portwatch_settings_refuses_a_bad_port_spec_in_the_environment(
        env: dict[str, str], message: str) -> None:
    # When `portwatch settings` runs with a port spec scan would refuse
    result = run_cli("settings", env=env, timeout=60)
    # Then it refuses it too, as it refuses PORTWATCH_TIMEOUT=nan: one line naming the
    # variable, exit 2, no listing
    assert_refused(result, message)
    assert result.stderr == f"portwatch: error: {message}\n"


@pytest.mark.parametrize("env", [{"PORTWATCH_UDP": "top100"}, {"PORTWATCH_UDP": "none"},
                                 {"PORTWATCH_UDP": "53,161"}, {"PORTWATCH_PORTS": "all"}],
                         ids=["udp-top100", "udp-none", "udp-spec", "ports-all"])
def test_portwatch_settings_lists_a_good_port_spec_in_the_environment(
        env: dict[str, str]) -> None:
    result = run_cli("settings", env=env, timeout=60)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    (variable, value), = env.items()
    assert f", now {value!r} from {variable}:" in result.stdout


def test_targets_outside_the_scope_fence_are_refused(store_dir: Path) -> None:
    # Given a fence narrower than the target, when scanned, then refused and nothing written
    result = run_cli("scan", "--ports", "22", "127.0.0.0/30", store=f"chdb://{store_dir}",
                     env={"PORTWATCH_SCOPE_ALLOW": "127.0.0.1/32"}, timeout=60)
    assert_refused(result, "127.0.0.0 (127.0.0.0/30) is outside the allowed scope 127.0.0.1/32")
    assert not store_dir.exists()


def test_bad_inventory_is_refused(tmp_path: Path, store_dir: Path) -> None:
    inventory = tmp_path / "assets.yaml"
    inventory.write_text("- {organization: Example Corp}\n")
    result = run_cli("scan", "--inventory", str(inventory), store=f"chdb://{store_dir}",
                     timeout=60)
    assert_refused(result, "assets.yaml: entry 1: no target column")
    assert not store_dir.exists()


def test_a_refused_scan_leaves_no_store_behind(tmp_path: Path, store_dir: Path) -> None:
    from portwatch.assembly import Assembly
    from portwatch.settings import Settings
    from schemas.records import Proto

    # masscan cannot scan loopback: refused, and no store made at --store (an empty one
    # was, which a report on that path then read as "nothing found": a review)
    masscan = run_cli("scan", "--ports", "9", "--udp", "none", "-q", "127.0.0.1",
                      store=f"chdb://{store_dir}", env={"PORTWATCH_ENGINE": "masscan"},
                      timeout=60)
    assert_refused(masscan, "masscan cannot scan loopback (127.0.0.1)")
    assert not store_dir.exists()
    # and a checkpoint that passed shards, resumed with a --store that does not exist
    checkpoint = tmp_path / "cp.json"
    assembly = Assembly(Settings.from_env(ports="9", udp="none", store=f"chdb://{store_dir}"))
    plan, start = assembly.scan_plan(assembly.scan_input(["127.0.0.1"]),
                                     checkpoint_path=str(checkpoint), seed=5)
    start.advanced(Proto.TCP, 1).save(checkpoint)
    resumed = run_cli("scan", "--ports", "9", "--udp", "none", "-q", "--checkpoint",
                      str(checkpoint), "127.0.0.1", store=f"chdb://{store_dir}", timeout=60)
    assert_refused(resumed, f"checkpoint {checkpoint} resumes scan {plan.scan_id}, but "
                            f"there is no store at {store_dir}")
    assert not store_dir.exists() and checkpoint.exists()


@pytest.mark.parametrize("label", [["--org", "Foo"], ["--asset", "Bar"]])
def test_labels_with_an_inventory_alone_are_refused(tmp_path: Path, store_dir: Path,
                                                    label: list[str]) -> None:
    # --org/--asset label the targets given as arguments: with an inventory alone they
    # did nothing, and the hosts were stored unlabelled, without a word (a review)
    inventory = tmp_path / "assets.csv"
    inventory.write_text("target\n127.0.0.1\n")
    result = run_cli("scan", "--inventory", str(inventory), *label,
                     store=f"chdb://{store_dir}", timeout=60)
    assert_refused(result, "--org and --asset label the targets given as arguments; an "
                           "inventory's targets carry their own")
    assert not store_dir.exists()


@pytest.mark.parametrize(("name", "content", "flag", "message"), [
    pytest.param("assets.yaml", b"- " + b"1" * 5000 + b"\n", "--inventory",
                 # (read as written, never given to int(): the number is refused as one)
                 "assets.yaml: entry 1: must be text (an address, range, CIDR or hostname), "
                 "not a number; quote it", id="inventory-huge-int"),
    pytest.param("assets.yaml", b"- [a, b\n- c\n", "--inventory",
                 "is not valid YAML: line 3: expected ',' or ']'", id="inventory-yaml-line"),
    pytest.param("exclude.txt", bytes(range(128, 256)) * 8, "--exclude-file",
                 "exclude.txt' is not UTF-8 text", id="exclude-binary"),
    pytest.param("exclude.txt", b"x" * 100_000 + b"\n", "--exclude-file",
                 "bad exclusion 'xxxxxxxxxx", id="exclude-huge-line"),
])
def test_bad_input_files_are_one_line(tmp_path: Path, store_dir: Path, name: str,
                                      content: bytes, flag: str, message: str) -> None:
    # Given a hostile inventory or exclude file
    path = tmp_path / name
    path.write_bytes(content)
    targets = [] if flag == "--inventory" else ["127.0.0.1"]
    # When scan reads it / Then one short line, exit 2, nothing written
    result = run_cli("scan", flag, str(path), *targets, store=f"chdb://{store_dir}",
                     timeout=60)
    assert_refused(result, message)
    assert len(result.stderr) < 400
    assert not store_dir.exists()


def test_an_nmap_services_without_udp_ports_is_refused(tmp_path: Path, store_dir: Path) -> None:
    # Given an nmap-services that lists TCP ports only: top1000 UDP would be no port at all
    (tmp_path / "nmap-services").write_text("ssh\t22/tcp\t0.182286\n")
    result = run_cli("scan", "127.0.0.1", "--ports", "1", store=f"chdb://{store_dir}",
                     env={"PORTWATCH_NMAP_DATA": str(tmp_path)}, timeout=60)
    assert_refused(result, "--udp top1000: nmap-services lists no UDP port")
    assert not store_dir.exists()


def test_malformed_nmap_data_is_one_line_naming_the_file(tmp_path: Path,
                                                          store_dir: Path) -> None:
    # Given PORTWATCH_NMAP_DATA pointing at a junk nmap-services (the top UDP ports' source)
    (tmp_path / "nmap-services").write_bytes(b"junk line here\n\x00\x01garbage\n")
    result = run_cli("scan", "127.0.0.1", "--ports", "1", store=f"chdb://{store_dir}",
                     env={"PORTWATCH_NMAP_DATA": str(tmp_path)}, timeout=60)
    # Then one line naming the file and its line, exit 2, before anything is scanned
    assert_refused(result, f"{tmp_path / 'nmap-services'}:1: bad port or frequency: "
                           "'junk line here'")
    assert not store_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "Invalid value for '{summary|list|products|ciphers|changes}'"),
        ([], "Missing argument '{summary|list|products|ciphers|changes}'. Choose from: "
             "summary, list, products, ciphers, changes"),
        (["-f", "json", "changes"], "`changes` comes first: portwatch report changes"),
        (["list", "--color", "purple"], "Invalid value for '--color'"),
        (["list", "--port", "70000"], "Invalid value for '--port'"),
        (["list", "--format", "xml"], "Invalid value for '-f' / '--format'"),
        # as the API through a running `serve` refuses it (directly: "no rows"; a review)
        (["list", "--product", "n" * 5000],
         "Invalid value for '--product': the product is too long (5000 characters; at "
         "most 4096)"),
        (["list", "--product-version", "1" * 4097], "the version is too long"),
        # the API reads a blank as no filter: directly it matched nothing, through a
        # running `serve` everything (a review)
        (["list", "--product", "  "],
         "Invalid value for '--product': the product is blank: leave the option out for "
         "any"),
        (["list", "--product-version", "\t"], "the version is blank"),
    ],
)
def test_bad_report_arguments_are_refused(store_dir: Path, args: list[str], message: str) -> None:
    result = run_cli("report", *args, store=f"chdb://{store_dir}", timeout=60)
    assert_refused(result, message)
    assert not store_dir.exists()


@pytest.mark.parametrize("report", ["summary", "list", "products", "ciphers"])
def test_a_report_on_a_path_without_a_store_says_so_and_creates_nothing(
        store_dir: Path, report: str) -> None:
    # Given a --store path where nothing was ever scanned, when a report is asked for
    result = run_cli("report", report, store=f"chdb://{store_dir}", timeout=60)
    # Then one line says there is no store there, exit 2, and no empty store is left behind
    assert_refused(result, f"no store at {store_dir}: scan something first")
    assert not store_dir.exists()


def test_a_long_error_stays_on_one_line(store_dir: Path) -> None:
    # Given a target longer than the terminal (run_cli sets COLUMNS=250)
    result = run_cli("scan", "x" * 300 + "!", store=f"chdb://{store_dir}", timeout=60)
    # Then the error is still one line
    assert_refused(result, "not an address, CIDR block, range or hostname")


def test_a_store_with_a_damaged_metadata_file_is_one_line_naming_the_file(
        tmp_path: Path) -> None:
    # Given a store whose findings table's metadata file was damaged (a disk fault, a bad
    # copy): chdb's engine then will not start, and says why only on its own stderr
    make_store(f"chdb://{tmp_path / 'st'}")
    (tmp_path / "st" / "metadata" / "portwatch" / "findings.sql").write_text("garbage (\n")
    # When a report is asked of it
    result = run_cli("report", "summary", store=f"chdb://{tmp_path / 'st'}", timeout=60)
    # Then one line says the engine did not start, which file and why, exit 1; none of
    # chdb's own lines above it
    assert_refused(result, f"cannot open the store at {tmp_path / 'st'}: the chdb engine did "
                           "not start: Syntax error (in file store/", code=1)
    assert "findings.sql" in result.stderr and "Code: 62" not in result.stderr


# -- a busy embedded store -----------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from stream_processors.store import Store
    store = Store.from_url(sys.argv[1])
    print("READY", flush=True)
    sys.stdin.read()  # hold the store until the test closes our stdin
    store.close()
""")


@contextlib.contextmanager
def store_held_by_another_process(url: str) -> Iterator[None]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], cwd=REPO, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "READY"
        yield
    finally:
        try:
            holder.communicate(input="", timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.communicate()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path, so that the busy message fits the 250 columns run_cli gives the CLI
    (see test_a_long_error_stays_on_one_line for why that matters today)."""
    path = Path(tempfile.mkdtemp(prefix="pw", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("command", [["report", "summary"], ["scan", "--ports", "1", "127.0.0.1"]])
def test_a_busy_store_is_one_clear_line_not_a_lock_traceback(short_dir: Path,
                                                             command: list[str]) -> None:
    # Given an embedded store another process holds open
    url = f"chdb://{short_dir / 'st'}"
    with store_held_by_another_process(url):
        # When a second portwatch process wants it
        result = run_cli(*command, store=url, timeout=120)
    # Then it says so in one line, with what to do, and exits 1 (not bad input)
    assert_refused(result, f"the store at {short_dir / 'st'} is in use by another portwatch "
                   "process", code=1)
    assert "use another --store, or run a ClickHouse server" in result.stderr
    assert "Cannot lock file" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--role", "stages", "--serve", "8765"], "--serve needs the sink",
                 id="serve-without-sink"),
    pytest.param(["--serve", "0.0.0.0:8765"], "--serve: refusing to serve on 0.0.0.0: any "
                 "address other than loopback needs a token", id="serve-public-no-token"),
    pytest.param(["--serve", "127.0.0.1:99999"], "--serve: '127.0.0.1:99999' is not PORT or "
                 "HOST:PORT", id="serve-bad-port"),
    pytest.param(["--serve", "8765", "--allowed-host", "proxy.example:443"],
                 "--allowed-host 'proxy.example:443' is not a host name or an address (no "
                 "port, scheme, path or wildcard)", id="serve-bad-allowed-host"),
    pytest.param(["--serve", "8765", "--trusted-proxy", "proxy.example"],
                 "--trusted-proxy 'proxy.example' is not an IP address",
                 id="serve-bad-trusted-proxy"),
])
def test_process_refuses_a_bad_serve_before_connecting(store_dir: Path, args: list[str],
                                                       message: str) -> None:
    # When the stream processors are asked to serve the web reports wrongly
    result = run_cli("process", *args, store=f"chdb://{store_dir}",
                     env={"PORTWATCH_KAFKA": "127.0.0.1:1"})
    # Then it is one line, exit 2, before any broker or store is touched
    assert_refused(result, message)
    assert not store_dir.exists()


@pytest.mark.parametrize("args", [[], ["alerts"]])
def test_a_group_alone_prints_its_help_not_an_error(args: list[str]) -> None:
    # `portwatch` or `portwatch alerts` with nothing else: the help, on stdout, exit 0
    result = run_cli(*args, timeout=60)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: portwatch {' '.join(args)}".rstrip() + " [OPTIONS]")
    assert "Commands:" in result.stdout


def test_an_unreachable_clickhouse_is_one_line() -> None:
    # Given a ClickHouse URL where nothing listens (loopback port 1: the kernel refuses)
    result = run_cli("report", "summary", "--store", "clickhouse://127.0.0.1:1/db",
                     timeout=60)
    # Then one line with the reason, exit 1: no driver retry warnings before it
    assert_refused(result, "cannot open the store at 127.0.0.1:1: connection refused", code=1)


def test_a_store_whose_parts_the_engine_set_aside_says_so(tmp_path: Path) -> None:
    # Given a store holding one scan, whose data files were then cut to nothing (a full
    # disk, a crash mid-write): the engine starts without those parts
    from tests import loopback

    store = f"chdb://{tmp_path / 'store'}"
    env = {"PORTWATCH_SCOPE_ALLOW": "127.0.0.1/32"}
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as server:
        scanned = run_cli("scan", "--ports", str(server.port), "--udp", "none", "-q",
                          "127.0.0.1", store=store, env=env, timeout=120)
    assert scanned.code == 0, scanned.stderr
    cut = list((tmp_path / "store").rglob("data.bin"))
    assert cut
    for f in cut:
        f.write_bytes(b"")
    # When a report reads it
    summary = run_cli("report", "summary", store=store, timeout=60)
    # Then it still answers, and says in one warning that damaged parts are not read
    # (before: "no rows", exit 0, as if nothing had ever been scanned: a review)
    assert summary.code == 0, summary.stderr
    warning = [line for line in summary.stderr.splitlines() if "damaged parts" in line]
    assert len(warning) == 1, summary.stderr
    assert "not read" in warning[0] and "host_scans" in warning[0]
    assert "Traceback" not in summary.stderr


def test_a_damaged_part_a_merge_already_folded_in_is_not_said_missing(tmp_path: Path
                                                                     ) -> None:
    # Given a store scanned twice whose port_latest parts were merged, and the merged-away
    # (inactive, still on disk) part then cut to nothing: the engine sets it aside
    from tests import loopback

    store = f"chdb://{tmp_path / 'store'}"
    env = {"PORTWATCH_SCOPE_ALLOW": "127.0.0.1/32"}
    with loopback.listen(loopback.banner(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")) as server:
        for _ in range(2):
            scanned = run_cli("scan", "--ports", str(server.port), "--udp", "none", "-q",
                              "127.0.0.1", store=store, env=env, timeout=120)
            assert scanned.code == 0, scanned.stderr
    merge = ("import sys; from stream_processors.store import Store; "
             f"s = Store.from_url({store!r}); s.command('OPTIMIZE TABLE port_latest FINAL'); "
             "print('\\n'.join(r[0] for r in s.query(\"SELECT path FROM system.parts WHERE "
             "database = currentDatabase() AND table = 'port_latest' AND NOT active\")))")
    merged = subprocess.run([sys.executable, "-c", merge], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    outdated = [Path(line) for line in merged.stdout.splitlines() if line.strip()]
    assert outdated, merged.stderr
    for part in outdated:
        for f in part.glob("*.bin"):
            f.write_bytes(b"")
    # When a report reads it
    listed = run_cli("report", "list", "--format", "json", store=store, timeout=60)
    # Then nothing is said missing (the rows are in the merged part), and the port is there
    assert listed.code == 0, listed.stderr
    assert "damaged parts" not in listed.stderr
    assert '"port"' in listed.stdout


@pytest.mark.parametrize("args", [
    ["scan", "--org", "Ac\udcffme", "--ports", "1", "--udp", "none", "127.0.0.1"],
    ["accept", "--note", "x\udcff", "127.0.0.1:22/tcp"],
    ["report", "summary", "--org", "Ac\udcffme"]])
def test_an_argument_that_is_not_utf8_is_refused_before_anything_runs(
        tmp_path: Path, args: list[str]) -> None:
    # Given an argument with a byte of another encoding (Latin-1 \xff: Python reads it as
    # a lone surrogate), when run
    result = run_cli(*args, store=f"chdb://{tmp_path / 'store'}")
    # Then refused in one line naming it, before anything ran: no store was made (before:
    # scan scanned, then failed storing with a traceback)
    assert_refused(result, "is not UTF-8 text (a byte of another encoding): write it in UTF-8")
    assert "\\xff" in result.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
def test_an_output_that_cannot_be_written_is_said_not_blamed_on_the_store(
        stdout: str, tmp_path: Path) -> None:
    # Given standard output on a full device, or closed for writing (opened read-only)
    with open(os.devnull if stdout == "closed" else stdout,
              "r" if stdout == "closed" else "w") as out:
        # When the settings (no store opened at all) are printed there
        done = subprocess.run([sys.executable, "-m", "portwatch", "settings"], stdout=out,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "COLUMNS": "250"})
    # Then one line says the output could not be written, exit 1 (it said "no space
    # left on the store's disk ... prune", or printed a traceback; a review)
    why = "No space left on device" if stdout == "/dev/full" else "Bad file descriptor"
    assert done.returncode == 1
    assert done.stderr == f"portwatch: error: cannot write the output: {why}\n"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.6])
def test_a_ctrl_c_at_any_moment_of_start_up_is_one_line_and_exit_130(
        tmp_path: Path, delay: float) -> None:
    """Ctrl-C while the CLI's modules still load printed an import traceback and ended by
    the signal (a review): the entry point now catches it there too. The command waits on
    its standard input (targets from "-"), so whenever the signal lands (importing, or
    reading), it is the Ctrl-C that ends it. (One sent at once may land before Python
    handles SIGINT at all: the signal then ends the process, with no output either.)"""
    proc = subprocess.Popen(
        [sys.executable, "-m", "portwatch", "scan", "-", "--store", f"chdb://{tmp_path}/s"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PORTWATCH_SCOPE_ALLOW": "127.0.0.0/8"},
        # Ctrl-C as a terminal delivers it: a run started in the background (nohup, a CI
        # runner) hands its children SIGINT ignored, and Python then keeps it ignored
        preexec_fn=_sigint_default)  # noqa: PLW1509 - one call, no threads of its own
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    outcome = (proc.returncode, err.decode().strip(), out)
    if delay == 0.0 and outcome == (-signal.SIGINT, "", b""):
        return  # it landed in the interpreter's own start-up: killed by it, quietly
    assert outcome == (130, "portwatch: interrupted", b"")
