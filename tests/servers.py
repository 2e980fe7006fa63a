"""Real servers on loopback for integration tests: start, wait until they accept, always stop.

Owns: context managers that launch Debian's own daemons (sshd, redis-server,
nginx, vsftpd, ``openssl s_server``) with a throwaway configuration in a
temporary directory, bound to a loopback address and a free port, and helpers
to read the installed package versions that identification must report.

Every server runs in its own session (process group) and is stopped by that
group's id on exit, first politely, then with SIGKILL. Nothing here binds to
anything but the loopback address it is given.

A server that cannot start here raises :class:`ServerUnavailable` with the
reason (missing binary, not root, its own error log); tests turn that into a
skip, which ``make test`` and CI count as a failure (tests/conftest.py). Must not
touch: anything outside the temporary directories it creates (except creating sshd's
privilege-separation directory when it is missing).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 10.0


class ServerUnavailable(RuntimeError):
    """The server cannot run here; the message says why (tests skip with it)."""


@dataclass
class Server:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def _check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"test servers bind to loopback only, not {host}")


def is_root() -> bool:
    return os.geteuid() == 0


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now (bind to 0 and release). For several ports
    together, ``free_ports``: separate calls can return the same port twice."""
    return free_ports(1, host, kind)[0]


def free_ports(count: int, host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM
               ) -> list[int]:
    """``count`` distinct ports nobody listens on right now: all bound at once, then
    released. Separate ``free_port`` calls can return the same port twice (the kernel
    may hand a released port out again), which failed dovecot's start in CI with
    "duplicate listener"."""
    _check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(family, kind)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_binary(name: str, *candidates: str) -> str:
    for path in (*candidates, shutil.which(name)):
        if path and os.access(path, os.X_OK):
            return path
    raise ServerUnavailable(f"{name} is not installed")


def debian_version(package: str) -> str:
    """The installed Debian version of ``package`` (``1:9.2p1-2+deb12u10``), or ""."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def upstream_version(debian: str) -> str:
    """``1:9.2p1-2+deb12u10`` -> ``9.2p1`` (no epoch, no Debian revision)."""
    version = debian.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def debian_revision(debian: str) -> str:
    """``1:9.2p1-2+deb12u10`` -> ``2+deb12u10``."""
    version = debian.split(":", 1)[-1]
    return version.rsplit("-", 1)[1] if "-" in version else ""


def _session_children(leader: int) -> list[int]:
    """Live children of ``leader`` that left its process group (Linux /proc).

    vsftpd, sshd and friends ``setsid()`` each connection's process, so a signal
    to the server's group does not reach them.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the ")" closing the command name: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and fields[1] == str(leader):
            if fields[2] != str(leader):
                found.append(int(entry.name))
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # Let per-connection processes (our clients have closed) exit and be reaped by
    # the server first: once the server is gone they would become zombies of a PID 1
    # that may not reap them.
    deadline = time.monotonic() + 1.0
    while _session_children(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    # The server was started in its own session: its group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def run_server(
    argv: Sequence[str],
    host: str,
    port: int,
    workdir: Path,
    *,
    name: str,
    timeout: float = START_TIMEOUT,
    ready: bool = True,
) -> Iterator[Server]:
    """Start ``argv`` in its own session, wait until ``host:port`` accepts, stop it on exit.

    ``ready=False`` skips the TCP wait (UDP servers): the caller checks readiness.
    """
    _check_loopback(host)
    log = workdir / f"{name}.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    server = Server(host, port, process, workdir, log)
    try:
        if ready:
            deadline = time.monotonic() + timeout
            while not port_accepts(host, port):
                if process.poll() is not None:
                    raise ServerUnavailable(
                        f"{name} exited with {process.returncode}: {server.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"{name} did not accept within {timeout}s")
                time.sleep(0.05)
        yield server
    finally:
        _stop(process)


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"portwatch-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_self_signed_cert(directory: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A throwaway P-256 certificate and key (``openssl req -x509``)."""
    openssl = require_binary("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    proc = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName=DNS:{cn}",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise ServerUnavailable(f"openssl req failed: {proc.stderr.decode(errors='replace')}")
    return cert, key


@contextlib.contextmanager
def start_sshd(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    """OpenSSH's sshd with its own config and fresh host keys, in the foreground (-D)."""
    sshd = require_binary("sshd", "/usr/sbin/sshd")
    keygen = require_binary("ssh-keygen")
    if not is_root():
        raise ServerUnavailable("sshd needs root here (privilege separation)")
    # sshd refuses to start without its privilege-separation directory; the Debian
    # service creates it at boot, a container may not have it.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = port or free_port(host)
    with _workdir("sshd") as work:
        key = work / "ssh_host_ed25519_key"
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
        config = work / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress {host}\nHostKey {key}\nPidFile {work}/sshd.pid\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nAuthorizedKeysFile none\nLogLevel ERROR\n"
        )
        with run_server(
            [sshd, "-D", "-e", "-f", str(config)], host, port, work, name="sshd"
        ) as server:
            yield server


@contextlib.contextmanager
def start_redis(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    """redis-server on ``host:port``, no persistence."""
    redis = require_binary("redis-server")
    port = port or free_port(host)
    with _workdir("redis") as work:
        argv = [
            redis,
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        with run_server(argv, host, port, work, name="redis") as server:
            yield server


@contextlib.contextmanager
def start_nginx(
    host: str = "127.0.0.1", port: int | None = None, *, tls: bool = False,
    server_tokens: bool = True,
) -> Iterator[Server]:
    """nginx with its own prefix and config; ``tls=True`` serves HTTPS with a throwaway cert;
    ``server_tokens=False`` hides the version in its Server header ("nginx")."""
    nginx = require_binary("nginx", "/usr/sbin/nginx")
    port = port or free_port(host)
    with _workdir("nginx") as work:
        (work / "logs").mkdir()
        (work / "html").mkdir()
        (work / "html" / "index.html").write_text("<html><body>portwatch test</body></html>\n")
        listen = f"{'[' + host + ']' if ':' in host else host}:{port}"
        tls_lines = ""
        if tls:
            cert, key = make_self_signed_cert(work)
            listen += " ssl"
            tls_lines = f"ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        user = "user root;\n" if is_root() else ""
        config = work / "nginx.conf"
        config.write_text(
            f"""{user}daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server_tokens {"on" if server_tokens else "off"};
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {listen};
        {tls_lines}root {work}/html;
    }}
}}
"""
        )
        argv = [nginx, "-p", str(work), "-c", str(config), "-e", str(work / "logs" / "error.log")]
        with run_server(argv, host, port, work, name="nginx") as server:
            yield server


@contextlib.contextmanager
def start_vsftpd(
    host: str = "127.0.0.1", port: int | None = None, *, extra_config: str = ""
) -> Iterator[Server]:
    """vsftpd in standalone mode (anonymous read-only on an empty root) on ``host:port``;
    ``extra_config``: more ``key=value`` lines (e.g. ``ssl_enable=YES``)."""
    vsftpd = require_binary("vsftpd", "/usr/sbin/vsftpd")
    if not is_root():
        raise ServerUnavailable("vsftpd needs root (it checks its config file's owner and chroots)")
    port = port or free_port(host)
    with _workdir("vsftpd") as work:
        empty = work / "empty"
        empty.mkdir(mode=0o755)
        anon_root = work / "anon"
        anon_root.mkdir(mode=0o555)
        config = work / "vsftpd.conf"
        config.write_text(
            f"listen=YES\nlisten_ipv6=NO\nlisten_address={host}\nlisten_port={port}\n"
            "background=NO\nanonymous_enable=YES\nlocal_enable=NO\nwrite_enable=NO\n"
            f"anon_root={anon_root}\nsecure_chroot_dir={empty}\nno_anon_password=YES\n"
            "seccomp_sandbox=NO\nxferlog_enable=NO\nsyslog_enable=NO\n"
            f"vsftpd_log_file={work}/vsftpd.xfer\nuse_localtime=NO\nconnect_from_port_20=NO\n"
            "pasv_enable=YES\npasv_min_port=0\npasv_max_port=0\n" + extra_config
        )
        config.chmod(0o600)
        with run_server([vsftpd, str(config)], host, port, work, name="vsftpd") as server:
            yield server


@contextlib.contextmanager
def start_openssl_s_server(
    args: Sequence[str] = ("-www",), host: str = "127.0.0.1", port: int | None = None
) -> Iterator[Server]:
    """``openssl s_server`` with a throwaway certificate plus ``args`` (e.g. ``-tls1_2``).

    ``server.extra`` holds ``cert`` and ``key`` paths.
    """
    openssl = require_binary("openssl")
    port = port or free_port(host)
    with _workdir("s_server") as work:
        cert, key = make_self_signed_cert(work)
        argv = [
            openssl,
            "s_server",
            "-accept",
            f"{host}:{port}",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-quiet",
            *args,
        ]
        with run_server(argv, host, port, work, name="s_server") as server:
            server.extra.update(cert=str(cert), key=str(key))
            yield server


def _as_user(user: str) -> list[str]:
    """argv prefix that drops root to ``user`` and execs (no intermediate process, so
    signals to the server's group reach the daemon itself)."""
    setpriv = require_binary("setpriv", "/usr/bin/setpriv")
    return [setpriv, f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def _chown_tree(path: Path, user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in (root, *(os.path.join(root, d) for d in dirs),
                     *(os.path.join(root, f) for f in files)):
            os.chown(name, entry.pw_uid, entry.pw_gid)


def _system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError as exc:
        raise ServerUnavailable(f"system user {name!r} does not exist") from exc


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<major>/bin."""
    base = Path("/usr/lib/postgresql")
    majors = sorted(
        (p for p in base.glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    ) if base.is_dir() else []
    return require_binary(name, *(str(p / name) for p in majors))


@contextlib.contextmanager
def start_postgres(
    host: str = "127.0.0.1", port: int | None = None, *, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """A throwaway PostgreSQL cluster (``initdb`` then ``postgres -D``) on ``host:port``.

    PostgreSQL refuses to run as root: as root, both steps run as the ``postgres``
    system user (``setpriv``); otherwise as the current user. The Unix socket lives
    in the temporary directory, TCP listens on ``host`` only, nothing is fsynced.
    """
    initdb = _postgres_bin("initdb")
    postgres = _postgres_bin("postgres")
    prefix: list[str] = []
    if is_root():
        _system_user("postgres")
        prefix = _as_user("postgres")
    port = port or free_port(host)
    with _workdir("postgres") as work:
        data = work / "data"
        if is_root():
            _chown_tree(work, "postgres")
        init = subprocess.run(
            [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            capture_output=True,
            timeout=120,
            check=False,
            cwd=work,
        )
        if init.returncode != 0:
            raise ServerUnavailable(
                f"initdb failed: {(init.stdout + init.stderr).decode(errors='replace')[-1500:]}"
            )
        argv = [
            *prefix, postgres, "-D", str(data), "-p", str(port), "-k", str(work),
            "-c", f"listen_addresses={host}", "-c", "fsync=off", "-c", "logging_collector=off",
            "-c", "shared_buffers=16MB", "-c", "max_connections=20", *extra_args,
        ]
        with run_server(argv, host, port, work, name="postgres", timeout=30) as server:
            server.extra.update(data=str(data), socket_dir=str(work))
            yield server


@contextlib.contextmanager
def start_mariadb(
    host: str = "127.0.0.1", port: int | None = None, *, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """A throwaway MariaDB (``mariadb-install-db`` then ``mariadbd``) on ``host:port``.

    Reads no option files (``--no-defaults``), keeps data, socket and logs in a
    temporary directory owned by the ``mysql`` user, binds ``host`` only. Needs
    root (the server switches to ``mysql`` itself).
    """
    install_db = require_binary("mariadb-install-db", "/usr/bin/mariadb-install-db")
    mariadbd = require_binary("mariadbd", "/usr/sbin/mariadbd")
    if not is_root():
        raise ServerUnavailable("mariadbd needs root here (it switches to the mysql user)")
    _system_user("mysql")
    port = port or free_port(host)
    with _workdir("mariadb") as work:
        data = work / "data"
        data.mkdir()
        _chown_tree(work, "mysql")
        init = subprocess.run(
            [install_db, "--no-defaults", f"--datadir={data}", "--user=mysql",
             "--auth-root-authentication-method=socket", "--skip-test-db",
             "--skip-name-resolve", "--innodb-buffer-pool-size=16M"],
            capture_output=True,
            timeout=180,
            check=False,
            cwd=work,
        )
        if init.returncode != 0:
            raise ServerUnavailable(
                "mariadb-install-db failed: "
                f"{(init.stdout + init.stderr).decode(errors='replace')[-1500:]}"
            )
        argv = [
            mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={work}/mysqld.sock",
            f"--pid-file={work}/mysqld.pid", f"--port={port}", f"--bind-address={host}",
            "--user=mysql", "--skip-log-bin", "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M", "--skip-innodb-doublewrite",
            f"--log-error={work}/mysqld.err", *extra_args,
        ]
        with run_server(argv, host, port, work, name="mariadb", timeout=60) as server:
            server.extra.update(data=str(data), socket=f"{work}/mysqld.sock")
            yield server


__all__ = [
    "Server",
    "ServerUnavailable",
    "debian_revision",
    "debian_version",
    "free_port",
    "is_root",
    "make_self_signed_cert",
    "port_accepts",
    "run_server",
    "start_mariadb",
    "start_nginx",
    "start_openssl_s_server",
    "start_postgres",
    "start_redis",
    "start_sshd",
    "start_vsftpd",
    "upstream_version",
]
