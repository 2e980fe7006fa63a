"""Shared test set-up.

Safety fences: every test process refuses to scan outside loopback and the
198.18.0.0/15 test-host range (PORTWATCH_SCOPE_ALLOW), whatever a test asks; and it,
with every Python process it starts, connects and sends datagrams to loopback and to
namespace hosts the tests made only (tests/netfence.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import netfence

if TYPE_CHECKING:
    from stream_processors.store import Store

os.environ["PORTWATCH_SCOPE_ALLOW"] = "127.0.0.0/8,::1/128,198.18.0.0/15"
netfence.install()


def _raise_descriptor_limit() -> None:
    """chdb 4.4 leaks about five engine threads and ten descriptors each time a store is
    opened after another was closed (its engine restarts; closing every client does not
    give them back). portwatch holds one store per process; this test process opens
    hundreds, so it passes 1,024 descriptors (a CI run saw select() refuse one: the
    product now polls). The soft limit is raised to the hard one so a machine whose
    default is 1,024 does not fail tests on a leak that is not theirs."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_raise_descriptor_limit()

REPO = Path(__file__).resolve().parent.parent
STRICT_ENV = "PORTWATCH_TEST_STRICT"


def no_skips() -> bool:
    """``make test`` (and any CI=true run) counts a skipped test as a failure: a server that
    did not start, a port some daemon holds or a missing tool must not pass as a test that
    ran. A developer running pytest by hand still gets skips, with their reasons."""
    return (os.environ.get("CI", "").strip().lower() == "true"
            or os.environ.get(STRICT_ENV, "") == "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A whole module skipped at import (``allow_module_level``, ``importorskip``) fails
    too under ``no_skips``."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and no_skips():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped, which {STRICT_ENV}=1 / CI=true counts as a failure: "
                           f"{reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and no_skips() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped, which {STRICT_ENV}=1 / CI=true counts as a failure: "
                           f"{reason}")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, store: str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> CliResult:
    """Run the real ``portwatch`` command in its own process (chdb: one process per store)."""
    full_env = {**os.environ, **(env or {}), "COLUMNS": "250"}
    if store:
        full_env["PORTWATCH_STORE"] = store
    proc = subprocess.run([sys.executable, "-m", "portwatch", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


_QUERY = """
import json, sys
from stream_processors.store import Store
with Store.from_url(sys.argv[1], create=False) as db:
    print(json.dumps(db.query(sys.argv[2]), default=str))
"""


def query_store(store: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on a chdb store, read in a process of its own: chdb allows one
    path per process, and the test process keeps the shared test path."""
    import json

    proc = subprocess.run([sys.executable, "-c", _QUERY, store, sql], capture_output=True,
                          text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return [tuple(row) for row in json.loads(proc.stdout)]


def make_store(store: str) -> None:
    """Create an empty chdb store, in a process of its own (chdb: one path per process)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom stream_processors.store import Store\n"
         "Store.from_url(sys.argv[1]).close()", store],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"chdb://{tmp_path / 'store'}"


@pytest.fixture(scope="session")
def shared_chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chdb opens one path per process: in-process store tests share this one path
    and isolate themselves with a database each."""
    return tmp_path_factory.mktemp("chdb")


@contextlib.contextmanager
def scratch_store(shared_chdb_path: Path, prefix: str = "t") -> Iterator[Store]:
    """A store of its own in the shared chdb path (a database named ``<prefix>_<random>``),
    dropped afterwards. Dropped, not only closed: every database left in the path makes
    each later CREATE in it slower (measured: +20 ms per database left, so 5 s per store
    by the end of the suite, against 0.15 s when each is dropped)."""
    from stream_processors.store import Store

    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    db = Store.from_url(f"chdb://{shared_chdb_path}?database={database}")
    try:
        yield db
    finally:
        with contextlib.suppress(Exception):  # a test may have broken or closed it
            db.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
        db.close()


@pytest.fixture
def store(shared_chdb_path: Path) -> Iterator[Store]:
    with scratch_store(shared_chdb_path) as db:
        yield db


# Real-broker fixtures (skip without a broker; fail under CI=true, where one must run).
from tests.kafka_fixtures import kafka_bootstrap, unique_group_id, unique_topic  # noqa: E402,F401
