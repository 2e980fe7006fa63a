"""More of Debian's real daemons on loopback, for identification tests and bench/identify.

Each starter runs the distribution's own binary with a throwaway configuration in a
temporary directory, bound to the loopback address and port it is given, waits until the
port accepts (``tests/servers.run_server``), and stops it (process group) on exit. A
daemon that cannot run here raises ``ServerUnavailable`` (tests skip, the bench lists it).

Owns: xrdp, mosquitto, rabbitmq-server (with its own epmd), smbd, memcached, lighttpd,
epmd, slapd, dovecot (IMAP, POP3, IMAPS), prosody, Debian's python3 http.server,
tinyproxy, snmpd (UDP).
Must not touch: any address outside 127.0.0.0/8; the system's own configuration files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests import servers
from tests.servers import Server, ServerUnavailable


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _port(host: str, port: int | None) -> int:
    return port or servers.free_port(host)


@contextlib.contextmanager
def start_xrdp(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    binary = servers.require_binary("xrdp", "/usr/sbin/xrdp")
    config = Path("/etc/xrdp/xrdp.ini")
    if not config.exists():
        raise ServerUnavailable("xrdp is not configured (/etc/xrdp/xrdp.ini)")
    port = _port(host, port)
    with servers._workdir("xrdp") as work:
        lines: list[str] = []
        in_globals = False
        for line in config.read_text().splitlines():
            if line.startswith("["):
                in_globals = line.strip() == "[Globals]"
            if in_globals and line.startswith("port="):
                line = f"port=tcp://{host}:{port}"
            lines.append(line)
        (work / "xrdp.ini").write_text("\n".join(lines) + "\n")
        with servers.run_server([binary, "--nodaemon", "--config", str(work / "xrdp.ini")],
                                host, port, work, name="xrdp") as server:
            yield server


@contextlib.contextmanager
def start_mosquitto(host: str = "127.0.0.1", port: int | None = None, *,
                    tls: bool = False) -> Iterator[Server]:
    binary = servers.require_binary("mosquitto", "/usr/sbin/mosquitto")
    port = _port(host, port)
    with servers._workdir("mosquitto") as work:
        tls_lines = ""
        if tls:
            cert, key = servers.make_self_signed_cert(work)
            # mosquitto drops to its own user before reading them (a throwaway key)
            for path in (work, cert, key):
                os.chmod(path, 0o755 if path == work else 0o644)
            tls_lines = f"certfile {cert}\nkeyfile {key}\n"
        config = work / "mosquitto.conf"
        config.write_text(f"listener {port} {host}\n{tls_lines}allow_anonymous true\n"
                          "persistence false\nlog_dest stdout\n")
        with servers.run_server([binary, "-c", str(config)], host, port, work,
                                name="mosquitto") as server:
            yield server


@contextlib.contextmanager
def start_rabbitmq(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    # The broker itself, run as its user by us: the /usr/sbin wrapper would su into a new
    # session whose Erlang VM we could not stop by its process group.
    binary = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not os.access(binary, os.X_OK) or not servers.is_root() or not _user_exists("rabbitmq"):
        raise ServerUnavailable("rabbitmq-server is not installed (or not root)")
    port = _port(host, port)
    with servers._workdir("rabbitmq") as work:
        (work / "enabled_plugins").write_text("[].\n")
        (work / "rabbitmq.conf").write_text(f"listeners.tcp.default = {host}:{port}\n")
        dist_port, epmd_port = servers.free_ports(2)
        env = dict(os.environ, HOME=str(work), RABBITMQ_NODE_IP_ADDRESS=host,
                   RABBITMQ_NODE_PORT=str(port), RABBITMQ_DIST_PORT=str(dist_port),
                   RABBITMQ_NODENAME=f"pw{port}@localhost",
                   RABBITMQ_MNESIA_BASE=str(work / "mnesia"),
                   RABBITMQ_LOG_BASE=str(work / "log"),
                   RABBITMQ_CONFIG_FILE=str(work / "rabbitmq"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(work / "enabled_plugins"),
                   RABBITMQ_FEATURE_FLAGS_FILE=str(work / "feature_flags"),
                   RABBITMQ_ADVANCED_CONFIG_FILE=str(work / "advanced.config"),
                   RABBITMQ_PID_FILE=str(work / "pid"),
                   ERL_EPMD_ADDRESS="127.0.0.1", ERL_EPMD_PORT=str(epmd_port))
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(work)], check=True)
        # Our own epmd in the foreground (the broker would start a daemon we could not
        # stop by its id): the broker finds it on ERL_EPMD_PORT.
        epmd = subprocess.Popen([servers.require_binary("epmd", "/usr/bin/epmd"), "-port",
                                 str(epmd_port), "-address", "127.0.0.1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        process = subprocess.Popen([binary], env=env, cwd=work, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   user="rabbitmq", group="rabbitmq")
        try:
            deadline = time.monotonic() + 60  # the Erlang VM boots in ~10 s on 2 cores
            while not servers.port_accepts(host, port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ServerUnavailable("rabbitmq-server did not start")
                time.sleep(0.2)
            yield Server(host, port, process, work, work / "log")
        finally:
            servers._stop(process)
            servers._stop(epmd)


@contextlib.contextmanager
def start_smbd(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    """Samba's smbd. It binds only addresses of an interface: 127.0.0.1 (lo)."""
    binary = servers.require_binary("smbd", "/usr/sbin/smbd")
    if host != "127.0.0.1":
        raise ServerUnavailable("smbd binds interface addresses only (127.0.0.1 here)")
    port = _port(host, port)
    with servers._workdir("smbd") as work:
        dirs = {name: work / name for name in ("pid", "lock", "state", "cache", "private",
                                                "log")}
        for path in dirs.values():
            path.mkdir()
        (work / "smb.conf").write_text(
            "[global]\n  workgroup = PWTEST\n  server string = portwatch test\n"
            f"  smb ports = {port}\n  interfaces = {host}\n  bind interfaces only = yes\n"
            + "".join(f"  {key} directory = {dirs[key]}\n" for key in ("pid", "lock",
                                                                         "state", "cache"))
            + f"  private dir = {dirs['private']}\n  ncalrpc dir = {dirs['state']}/ncalrpc\n"
            f"  log file = {dirs['log']}/log.%m\n  disable netbios = yes\n"
            "  load printers = no\n  printing = bsd\n  printcap name = /dev/null\n"
            "  disable spoolss = yes\n")
        with servers.run_server([binary, "--foreground", "--no-process-group", "-s",
                                 str(work / "smb.conf")], host, port, work,
                                name="smbd") as server:
            yield server


@contextlib.contextmanager
def start_memcached(host: str = "127.0.0.1", port: int | None = None, *,
                    udp_port: int = 0) -> Iterator[Server]:
    """memcached on TCP ``port``; over UDP too on ``udp_port`` (0: no UDP)."""
    binary = servers.require_binary("memcached", "/usr/bin/memcached")
    port = _port(host, port)
    with servers._workdir("memcached") as work:
        with servers.run_server([binary, "-l", host, "-p", str(port), "-U", str(udp_port),
                                 "-u", "nobody", "-m", "16"], host, port, work,
                                name="memcached") as server:
            yield server


@contextlib.contextmanager
def start_lighttpd(host: str = "127.0.0.1", port: int | None = None, *,
                   tls: bool = False) -> Iterator[Server]:
    binary = servers.require_binary("lighttpd", "/usr/sbin/lighttpd")
    port = _port(host, port)
    with servers._workdir("lighttpd") as work:
        (work / "html").mkdir()
        (work / "html" / "index.html").write_text(
            "<html><head><title>lighttpd test</title></head><body>hi</body></html>\n")
        tls_lines = ""
        if tls:
            cert, key = servers.make_self_signed_cert(work)
            tls_lines = (f'server.modules += ("mod_openssl")\nssl.engine = "enable"\n'
                         f'ssl.pemfile = "{cert}"\nssl.privkey = "{key}"\n')
        (work / "lighttpd.conf").write_text(
            f'server.document-root = "{work}/html"\nserver.bind = "{host}"\n'
            f'server.port = {port}\nserver.errorlog = "{work}/error.log"\n'
            'index-file.names = ("index.html")\n'
            'mimetype.assign = (".html" => "text/html")\n' + tls_lines)
        with servers.run_server([binary, "-D", "-f", str(work / "lighttpd.conf")], host,
                                port, work, name="lighttpd") as server:
            yield server


@contextlib.contextmanager
def start_epmd(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    binary = servers.require_binary("epmd", "/usr/bin/epmd")
    port = _port(host, port)
    with servers._workdir("epmd") as work:
        with servers.run_server([binary, "-port", str(port), "-address", host], host, port,
                                work, name="epmd") as server:
            yield server


@contextlib.contextmanager
def start_slapd(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    binary = servers.require_binary("slapd", "/usr/sbin/slapd")
    port = _port(host, port)
    with servers._workdir("slapd") as work:
        (work / "slapd.conf").write_text(
            "include /etc/ldap/schema/core.schema\n"
            f"pidfile {work}/slapd.pid\nargsfile {work}/slapd.args\n")
        with servers.run_server([binary, "-d", "0", "-h", f"ldap://{host}:{port}/", "-f",
                                 str(work / "slapd.conf")], host, port, work,
                                name="slapd") as server:
            yield server


@contextlib.contextmanager
def start_dovecot(host: str = "127.0.0.1", port: int | None = None, *,
                  protocol: str = "imap", tls: bool = False) -> Iterator[Server]:
    """Dovecot serving one protocol (imap or pop3), plain or implicit TLS, on one port."""
    binary = servers.require_binary("dovecot", "/usr/sbin/dovecot")
    if not servers.is_root():
        raise ServerUnavailable("dovecot needs root")
    port = _port(host, port)
    with servers._workdir("dovecot") as work:
        cert, key = servers.make_self_signed_cert(work)
        login = "imap-login" if protocol == "imap" else "pop3-login"
        listener = f"{protocol}s" if tls else protocol
        ssl_flag = "yes" if tls else "no"
        # The built-in service has both listeners (143 and 993, 110 and 995): off the other
        other = {"imap": "imaps", "imaps": "imap", "pop3": "pop3s", "pop3s": "pop3"}[listener]
        (work / "dovecot.conf").write_text(f"""protocols = {protocol}
listen = {host}
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
mail_location = maildir:{work}/mail/%u
passdb {{
  driver = static
  args = password=never-used
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={work}/mail/%u
}}
service {login} {{
  inet_listener {listener} {{
    address = {host}
    port = {port}
    ssl = {ssl_flag}
  }}
  inet_listener {other} {{
    port = 0
  }}
}}
""")
        with servers.run_server([binary, "-F", "-c", str(work / "dovecot.conf")], host, port,
                                work, name="dovecot") as server:
            yield server


@contextlib.contextmanager
def start_prosody(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    binary = servers.require_binary("prosody", "/usr/bin/prosody")
    if not servers.is_root() or not _user_exists("prosody"):
        raise ServerUnavailable("prosody needs root and its user")
    port = _port(host, port)
    with servers._workdir("prosody") as work:
        (work / "data").mkdir()
        config = work / "prosody.cfg.lua"
        config.write_text(f"""daemonize = false
pidfile = "{work}/prosody.pid"
data_path = "{work}/data"
log = {{ {{ levels = {{ min = "error" }}, to = "console" }} }}
interfaces = {{ "{host}" }}
c2s_ports = {{ {port} }}
s2s_ports = {{ }}
c2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "disco"; "saslauth"; "version" }}
modules_disabled = {{ "s2s"; "posix" }}
authentication = "internal_hashed"
VirtualHost "localhost"
""")
        subprocess.run(["chown", "-R", "prosody", str(work)], check=True)
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise ServerUnavailable("setpriv (util-linux) is needed to run prosody as itself")
        argv = [setpriv, "--reuid=prosody", "--regid=prosody", "--init-groups", binary,
                "--config", str(config)]
        with servers.run_server(argv, host, port, work, name="prosody") as server:
            yield server


@contextlib.contextmanager
def start_python_http(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    """Debian's python3 (not the virtualenv's) serving a directory: SimpleHTTPServer."""
    binary = servers.require_binary("python3", "/usr/bin/python3")
    port = _port(host, port)
    with servers._workdir("pyhttp") as work:
        (work / "index.html").write_text("<html><head><title>py</title></head></html>\n")
        with servers.run_server([binary, "-m", "http.server", "--bind", host, "--directory",
                                 str(work), str(port)], host, port, work,
                                name="python-http") as server:
            yield server


@contextlib.contextmanager
def start_tinyproxy(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    binary = servers.require_binary("tinyproxy", "/usr/bin/tinyproxy")
    port = _port(host, port)
    with servers._workdir("tinyproxy") as work:
        # No upstream is ever contacted: only the proxy's own answers are read.
        (work / "tinyproxy.conf").write_text(
            f"Port {port}\nListen {host}\nTimeout 30\nMaxClients 8\nAllow 127.0.0.1\n"
            f"LogLevel Critical\nPidFile \"{work}/tinyproxy.pid\"\n")
        with servers.run_server([binary, "-d", "-c", str(work / "tinyproxy.conf")], host,
                                port, work, name="tinyproxy") as server:
            yield server


@contextlib.contextmanager
def start_snmpd(host: str = "127.0.0.1", port: int | None = None) -> Iterator[Server]:
    """net-snmp's agent on UDP ``host:port``, read community "public" from loopback."""
    import asyncio

    from probers.service.udp_probes import identify_snmp

    binary = servers.require_binary("snmpd", "/usr/sbin/snmpd")
    port = port or servers.free_port(host, socket.SOCK_DGRAM)
    with servers._workdir("snmpd") as work:
        (work / "snmpd.conf").write_text("rocommunity public 127.0.0.0/8\n"
                                         "sysDescr portwatch test agent\n")
        with servers.run_server(
                [binary, "-f", "-Lo", "-C", "-c", str(work / "snmpd.conf"), "-p",
                 str(work / "pid"), f"--persistentDir={work}", f"udp:{host}:{port}"],
                host, port, work, name="snmpd", ready=False) as server:
            deadline = time.monotonic() + 10
            while asyncio.run(identify_snmp(host, port, timeout=0.3)) is None:
                if time.monotonic() > deadline:
                    raise ServerUnavailable("snmpd did not answer")
            yield server


__all__ = ["start_dovecot", "start_epmd", "start_lighttpd", "start_memcached",
           "start_mosquitto", "start_prosody", "start_python_http", "start_rabbitmq",
           "start_slapd", "start_smbd", "start_snmpd", "start_tinyproxy", "start_xrdp"]
