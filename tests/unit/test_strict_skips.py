"""tests/conftest.py's strict mode: under ``make test`` (PORTWATCH_TEST_STRICT=1) or CI=true
a skipped test is a failure, so a server that did not start never passes as a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, STRICT_ENV

SAMPLE = '''
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_skips_at_run_time():
    pytest.skip("redis did not accept within 10s")

@pytest.mark.skipif(True, reason="a marker's skip")
def test_skips_by_marker():
    pass
'''


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", STRICT_ENV)}
    # -p tests.conftest: the project's hooks, for a file outside tests/
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:randomly",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull,
         str(sample)],
        capture_output=True, text=True, cwd=REPO, env={**clean, **env}, timeout=120,
        check=False)


def test_a_module_skipped_at_import_fails_too(tmp_path: Path) -> None:
    sample = tmp_path / "test_module_skip.py"
    sample.write_text("import pytest\npytest.importorskip('no_such_module_here')\n"
                      "def test_never():\n    pass\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", STRICT_ENV)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:randomly",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull, str(sample)],
        capture_output=True, text=True, cwd=REPO, env={**clean, STRICT_ENV: "1"},
        timeout=120, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "counts as a failure" in proc.stdout and "no_such_module_here" in proc.stdout


@pytest.mark.parametrize("env", [{STRICT_ENV: "1"}, {"CI": "true"}], ids=["strict", "ci"])
def test_a_skip_fails_under_make_test_and_ci(tmp_path: Path, env: dict[str, str]) -> None:
    proc = _run(tmp_path, env)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 1 error" in proc.stdout
    assert "counts as a failure: Skipped: redis did not accept within 10s" in proc.stdout


def test_a_skip_stays_a_skip_by_hand(tmp_path: Path) -> None:
    proc = _run(tmp_path, {})
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 2 skipped" in proc.stdout
