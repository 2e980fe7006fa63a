"""A real ``portwatch serve`` on a free loopback port, for browser and page tests.

Owns: starting the command in its own process over a store, waiting until its health
check answers, and stopping it (terminate, then kill). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from tests import loopback
from tests.conftest import REPO


@contextlib.contextmanager
def portwatch_serve(store: str, *, host: str = "127.0.0.1",
                    start_seconds: float = 60) -> Iterator[str]:
    """``portwatch serve --store STORE`` on a loopback ``host``; yields its base URL."""
    port = loopback.free_port((host,))
    env = {**os.environ, "PORTWATCH_WEB_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "portwatch", "serve", "--store", store,
                             "--host", host, "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            assert time.monotonic() < deadline, "portwatch serve did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()
