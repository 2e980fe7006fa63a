"""Benchmark: portwatch's TLS enumeration against ``sslscan`` on real servers, direct and
through STARTTLS, in the same run.

Owns: the ``python -m bench.tls [--runs N] [--json]`` command. It starts, on loopback,
with the test helpers (``tests/starttls_servers.py``, ``tests/tls_servers.py``) and a
throwaway CA (``tests/tls_pki.py``): postfix (SMTP STARTTLS), dovecot (IMAP STARTTLS,
POP3 STLS), vsftpd (AUTH TLS), PostgreSQL (SSLRequest), MariaDB (SSL flag), slapd (LDAP
StartTLS), prosody (XMPP) and ``openssl s_server`` (direct TLS). Then, per port and
``--runs`` times, alternating which goes first:

- portwatch: ``probers.tls.probe_tls(ip, port, upgrade=...)`` (versions, suites, server
  order, certificate, posture, profile);
- ``sslscan --no-colour [--starttls-<proto>] 127.0.0.1:<port>`` (its defaults).

It prints, per port, whether the (version, OpenSSL suite name) sets are equal (and the
difference when not), both median wall times and their ratio, and a markdown table for
BENCHMARKS.md. A port sslscan cannot test (its own error, or no suite) says so.

Must not touch: any address but 127.0.0.1; the repository's files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_SSLSCAN_LINE = re.compile(r"^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", re.M)


@dataclass
class Case:
    name: str
    upgrade: str  # portwatch's Upgrade value
    sslscan_option: str  # "" = direct
    start: Callable[[], AbstractContextManager[Any]]
    port_of: Callable[[Any], int] = lambda server: int(server.port)
    server_name: str | None = None


@dataclass
class Outcome:
    name: str
    upgrade: str
    ours: set[tuple[str, str]] = field(default_factory=set)
    theirs: set[tuple[str, str]] = field(default_factory=set)
    our_times: list[float] = field(default_factory=list)
    their_times: list[float] = field(default_factory=list)
    sslscan_error: str = ""

    @property
    def verdict(self) -> str:
        if self.sslscan_error:
            return f"sslscan cannot test ({self.sslscan_error})"
        if self.ours == self.theirs:
            return "identical"
        only_ours = sorted({v for v, _ in self.ours - self.theirs})
        only_theirs = sorted({v for v, _ in self.theirs - self.ours})
        return (f"differs: +{len(self.ours - self.theirs)} only portwatch {only_ours}, "
                f"+{len(self.theirs - self.ours)} only sslscan {only_theirs}")  # fmt: skip

    @property
    def ratio(self) -> float | None:
        """portwatch's median time over sslscan's; None when sslscan could not test."""
        if self.sslscan_error:
            return None
        return statistics.median(self.our_times) / statistics.median(self.their_times)

    @property
    def ratio_text(self) -> str:
        return "—" if self.ratio is None else f"{self.ratio:.2f}"


def _cases(pki: Any, workdir: Path) -> list[Case]:
    from tests import starttls_servers as s
    from tests.tls_servers import CertFiles, openssl_server

    valid = pki.valid()

    @contextlib.contextmanager
    def direct() -> Iterator[Any]:
        with openssl_server(CertFiles(valid.chain, valid.key)) as port:
            yield port

    @contextlib.contextmanager
    def dovecot_pop3() -> Iterator[Any]:
        with s.start_dovecot(valid) as server:
            yield int(server.extra["pop3"])

    return [
        Case("openssl s_server (direct)", "direct", "", direct, lambda port: int(port)),
        Case("postfix SMTP", "starttls-smtp", "--starttls-smtp", lambda: s.start_postfix(valid)),
        Case("dovecot IMAP", "starttls-imap", "--starttls-imap", lambda: s.start_dovecot(valid)),
        Case("dovecot POP3", "starttls-pop3", "--starttls-pop3", dovecot_pop3,
             lambda port: int(port)),
        Case("vsftpd FTP", "starttls-ftp", "--starttls-ftp", lambda: s.start_vsftpd_tls(valid)),
        Case("PostgreSQL", "starttls-postgres", "--starttls-psql",
             lambda: s.start_postgres_tls(valid)),
        Case("MariaDB", "starttls-mysql", "--starttls-mysql", lambda: s.start_mariadb_tls(valid)),
        Case("slapd LDAP", "starttls-ldap", "--starttls-ldap", lambda: s.start_slapd(valid)),
        Case("prosody XMPP", "starttls-xmpp", "--starttls-xmpp", lambda: s.start_prosody(valid),
             server_name="localhost"),
    ]  # fmt: skip


def _ours(port: int, case: Case) -> tuple[set[tuple[str, str]], float]:
    from probers.tls import probe_tls

    started = time.perf_counter()
    result = asyncio.run(probe_tls(HOST, port, upgrade=case.upgrade, server_name=case.server_name,
                                   timeout=5.0, budget=120.0))  # fmt: skip
    elapsed = time.perf_counter() - started
    return {(s.tls_version, s.openssl_name or s.iana_name) for s in result.suites}, elapsed


def _theirs(port: int, case: Case) -> tuple[set[tuple[str, str]], float, str]:
    argv = ["sslscan", "--no-colour"]
    if case.sslscan_option:
        argv.append(case.sslscan_option)
    # XMPP needs the domain in the stream header: sslscan takes it from the host it is
    # given, so prosody's "localhost" is named (it resolves to loopback, /etc/hosts).
    target = f"{case.server_name or HOST}:{port}"
    started = time.perf_counter()
    proc = subprocess.run([*argv, target], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    elapsed = time.perf_counter() - started
    found = set(_SSLSCAN_LINE.findall(proc.stdout))
    error = ""
    if not found:
        output = proc.stdout + proc.stderr
        lines = [line.strip() for line in output.splitlines() if "ERROR" in line]
        error = lines[0] if lines else "no suite found"
    return found, elapsed, error


def run(runs: int) -> list[Outcome]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import ServerUnavailable
    from tests.tls_pki import TestPki

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="portwatch-bench-tls-") as tmp:
        pki = TestPki(Path(tmp))
        for case in _cases(pki, Path(tmp)):
            outcome = Outcome(case.name, case.upgrade)
            try:
                with case.start() as server:
                    port = case.port_of(server)
                    for i in range(runs):
                        first_ours = i % 2 == 0
                        for turn in ((0, 1) if first_ours else (1, 0)):
                            if turn == 0:
                                outcome.ours, elapsed = _ours(port, case)
                                outcome.our_times.append(elapsed)
                            else:
                                theirs, elapsed, error = _theirs(port, case)
                                outcome.theirs, outcome.sslscan_error = theirs, error
                                outcome.their_times.append(elapsed)
            except ServerUnavailable as exc:
                print(f"{case.name}: skipped ({exc})", file=sys.stderr)
                continue
            outcomes.append(outcome)
            print(f"{case.name:28} {outcome.verdict:60} portwatch "
                  f"{statistics.median(outcome.our_times):6.2f}s  sslscan "
                  f"{statistics.median(outcome.their_times):6.2f}s  ratio {outcome.ratio_text}",
                  file=sys.stderr)  # fmt: skip
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    lines = ["| port | reached via | suites (portwatch / sslscan) | suite sets | portwatch | "
             "sslscan | ratio |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for o in outcomes:
        lines.append(
            f"| {o.name} | {o.upgrade} | {len(o.ours)} / {len(o.theirs)} | {o.verdict} | "
            f"{statistics.median(o.our_times):.2f} s | {statistics.median(o.their_times):.2f} s "
            f"| {o.ratio_text} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if shutil.which("sslscan") is None:
        print("sslscan is not installed (apt-get install sslscan)", file=sys.stderr)
        return 2
    outcomes = run(args.runs)
    if args.json:
        print(json.dumps([{"port": o.name, "upgrade": o.upgrade, "verdict": o.verdict,
                           "portwatch_s": o.our_times, "sslscan_s": o.their_times,
                           "ratio": o.ratio} for o in outcomes], indent=2))  # fmt: skip
    else:
        print(markdown(outcomes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
