"""Real servers that upgrade a plaintext connection to TLS, on loopback, for tests.

Owns: context managers that start Debian's own daemons with a configuration written to a
temporary directory and a test certificate (``tests/tls_pki.py``): postfix (SMTP
STARTTLS), dovecot (IMAP STARTTLS, POP3 STLS, ManageSieve STARTTLS), slapd (LDAP
StartTLS), prosody (XMPP c2s starttls), InspIRCd (IRC STARTTLS), INN's nnrpd (NNTP
STARTTLS), plus TLS settings for the vsftpd, PostgreSQL and MariaDB helpers of
``tests/servers.py``. Each binds 127.0.0.1 only, and is stopped by its process group on
exit (``servers.run_server``).

A daemon that cannot start here raises ``ServerUnavailable`` with the reason; tests skip
(a failure under ``make test`` and CI: tests/conftest.py).
Must not touch: anything outside the temporary directories it creates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.servers import (
    Server,
    ServerUnavailable,
    _chown_tree,
    _workdir,
    free_port,
    free_ports,
    is_root,
    require_binary,
    run_server,
    start_mariadb,
    start_postgres,
    start_vsftpd,
)
from tests.tls_pki import LeafFiles

HOST = "127.0.0.1"


def _need_root(name: str) -> None:
    if not is_root():
        raise ServerUnavailable(f"{name} needs root here (it switches users)")


def _copy_certs(leaf: LeafFiles, directory: Path) -> LeafFiles:
    """The certificate files, copied where a server that drops privileges can read them."""
    directory.mkdir(parents=True, exist_ok=True)
    copied = LeafFiles(directory / "chain.pem", directory / "key.pem", directory / "ca.pem")
    shutil.copyfile(leaf.chain, copied.chain)
    shutil.copyfile(leaf.key, copied.key)
    shutil.copyfile(leaf.ca, copied.ca)
    return copied


@contextlib.contextmanager
def start_dovecot(leaf: LeafFiles) -> Iterator[Server]:
    """dovecot with IMAP (STARTTLS), POP3 (STLS) and ManageSieve (STARTTLS) listeners;
    ``server.port`` is IMAP, ``server.extra`` holds ``pop3`` and ``sieve`` ports."""
    dovecot = require_binary("dovecot", "/usr/sbin/dovecot")
    _need_root("dovecot")
    imap, pop3, sieve = free_ports(3, HOST)
    with _workdir("dovecot") as work:
        os.chmod(work, 0o755)  # login processes (dovenull) chroot below it
        certs = _copy_certs(leaf, work / "certs")
        has_sieve = Path("/usr/lib/dovecot/managesieve-login").exists()
        protocols = "imap pop3" + (" sieve" if has_sieve else "")
        sieve_service = (
            "service managesieve-login {\n"
            f"  inet_listener sieve {{\n    address = {HOST}\n    port = {sieve}\n  }}\n}}\n"
            if has_sieve else ""
        )  # fmt: skip
        config = work / "dovecot.conf"
        config.write_text(
            f"""protocols = {protocols}
listen = {HOST}
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
info_log_path = {work}/dovecot.log
ssl = yes
ssl_cert = <{certs.chain}
ssl_key = <{certs.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain
passdb {{
  driver = static
  args = password=unused-test-password
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={work}/home
}}
default_login_user = dovenull
default_internal_user = dovecot
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{sieve_service}service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""
        )
        with run_server([dovecot, "-F", "-c", str(config)], HOST, imap, work,
                        name="dovecot") as server:  # fmt: skip
            server.extra.update(pop3=str(pop3), sieve=str(sieve) if has_sieve else "")
            yield server


@contextlib.contextmanager
def start_postfix(leaf: LeafFiles | None) -> Iterator[Server]:
    """postfix's master with one smtpd on 127.0.0.1:<free port>; STARTTLS offered with
    ``leaf``, not offered at all when ``leaf`` is None."""
    master = require_binary("master", "/usr/lib/postfix/sbin/master")
    postfix = require_binary("postfix", "/usr/sbin/postfix")
    _need_root("postfix")
    port = free_port(HOST)
    with _workdir("postfix") as work:
        os.chmod(work, 0o755)
        etc, spool, data = work / "etc", work / "spool", work / "data"
        for directory in (etc, spool, data):
            directory.mkdir()
        tls = ""
        if leaf is not None:
            certs = _copy_certs(leaf, work / "certs")
            tls = (f"smtpd_tls_cert_file = {certs.chain}\nsmtpd_tls_key_file = {certs.key}\n"
                   "smtpd_tls_security_level = may\n")  # fmt: skip
        else:
            tls = "smtpd_tls_security_level = none\n"
        (etc / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = {HOST}
inet_protocols = ipv4
myhostname = mail.portwatch.test
mydestination =
mynetworks = 127.0.0.0/8
maillog_file_prefixes = {work}
maillog_file = {work}/postfix.log
smtpd_banner = $myhostname ESMTP
biff = no
{tls}"""
        )
        (etc / "master.cf").write_text(
            f"""{HOST}:{port} inet n - n - - smtpd
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
cleanup   unix  n       -       n       -       0       cleanup
rewrite   unix  -       -       n       -       -       trivial-rewrite
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
proxymap  unix  -       -       n       -       -       proxymap
"""
        )
        setup = subprocess.run(
            [postfix, "-c", str(etc), "post-install", "create-missing"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if setup.returncode != 0:
            raise ServerUnavailable(
                "postfix post-install failed: "
                f"{(setup.stdout + setup.stderr).decode(errors='replace')[-800:]}"
            )
        shutil.chown(data, "postfix", "postfix")  # master's lock and tlsmgr's cache live here
        with run_server([master, "-c", str(etc), "-d"], HOST, port, work,
                        name="postfix") as server:  # fmt: skip
            yield server


@contextlib.contextmanager
def start_slapd(leaf: LeafFiles) -> Iterator[Server]:
    """OpenLDAP's slapd (ldap:// only, StartTLS with ``leaf``), an empty LDIF database."""
    slapd = require_binary("slapd", "/usr/sbin/slapd")
    port = free_port(HOST)
    with _workdir("slapd") as work:
        os.chmod(work, 0o755)
        certs = _copy_certs(leaf, work / "certs")
        (work / "db").mkdir()
        config = work / "slapd.conf"
        config.write_text(
            f"""include /etc/ldap/schema/core.schema
pidfile {work}/slapd.pid
argsfile {work}/slapd.args
TLSCertificateFile {certs.chain}
TLSCertificateKeyFile {certs.key}
TLSCACertificateFile {certs.ca}
database ldif
directory {work}/db
suffix "dc=portwatch,dc=test"
"""
        )
        argv = [slapd, "-d", "0", "-h", f"ldap://{HOST}:{port}/", "-f", str(config)]
        with run_server(argv, HOST, port, work, name="slapd") as server:
            yield server


@contextlib.contextmanager
def start_prosody(leaf: LeafFiles) -> Iterator[Server]:
    """prosody (XMPP) with one VirtualHost "localhost", starttls offered on c2s
    (``server.port``) and s2s (``server.extra["s2s"]``)."""
    prosody = require_binary("prosody", "/usr/bin/prosody")
    port, s2s = free_ports(2, HOST)
    with _workdir("prosody") as work:
        os.chmod(work, 0o755)
        certs = _copy_certs(leaf, work / "certs")
        (work / "data").mkdir()
        if is_root():
            _chown_tree(work, "prosody")
        config = work / "prosody.cfg.lua"
        config.write_text(
            f"""pidfile = "{work}/prosody.pid"
data_path = "{work}/data"
run_as_root = true
interfaces = {{ "{HOST}" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ {s2s} }}
http_ports = {{ }}
https_ports = {{ }}
component_ports = {{ }}
c2s_require_encryption = false
s2s_require_encryption = false
authentication = "internal_hashed"
modules_enabled = {{ "tls", "saslauth", "disco" }}
modules_disabled = {{ "posix" }}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{work}/prosody.log" }} }}
ssl = {{ certificate = "{certs.chain}", key = "{certs.key}" }}
VirtualHost "localhost"
"""
        )
        with run_server([prosody, "--config", str(config), "-F"], HOST, port, work,
                        name="prosody") as server:  # fmt: skip
            server.extra.update(s2s=str(s2s))
            yield server


@contextlib.contextmanager
def start_inspircd(leaf: LeafFiles) -> Iterator[Server]:
    """InspIRCd 3 (IRC) with the IRCv3 STARTTLS module (GnuTLS, ``leaf``) on a client
    port. Run as root with ``--runasroot`` (it refuses root otherwise): it binds loopback
    only and is stopped by its process group."""
    inspircd = require_binary("inspircd", "/usr/sbin/inspircd")
    _need_root("inspircd")
    port = free_port(HOST)
    with _workdir("inspircd") as work:
        certs = _copy_certs(leaf, work / "certs")
        (work / "motd").write_text("portwatch test\n")
        config = work / "inspircd.conf"
        config.write_text(
            f"""<server name="irc.portwatch.test" description="portwatch test" network="pwtest">
<admin name="portwatch" nick="portwatch" email="portwatch@portwatch.test">
<bind address="{HOST}" port="{port}" type="clients">
<connect allow="*" timeout="60" pingfreq="120" sendq="262144" recvq="8192" localmax="100"
 globalmax="100" maxconnwarn="off" resolvehostnames="no" useident="no">
<module name="ssl_gnutls">
<sslprofile name="Clients" provider="gnutls" certfile="{certs.chain}" keyfile="{certs.key}"
 dhfile="" hash="sha256" requestclientcert="no">
<module name="starttls">
<starttls provider="Clients">
<path configdir="{work}" moduledir="/usr/lib/inspircd/modules" datadir="{work}"
 logdir="{work}" runtimedir="{work}">
<pid file="{work}/inspircd.pid">
<files motd="{work}/motd">
<dns server="127.0.0.1" timeout="1">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{work}/ircd.log">
"""
        )
        argv = [inspircd, "--nofork", "--runasroot", "--config", str(config)]
        with run_server(argv, HOST, port, work, name="inspircd") as server:
            yield server


_INN = "/usr/lib/news/bin"


@contextlib.contextmanager
def start_nnrpd(leaf: LeafFiles) -> Iterator[Server]:
    """INN's reader daemon (``nnrpd -D -f``: standalone, in the foreground) with STARTTLS
    (RFC 4642), ``leaf`` as its certificate. Every path of its ``inn.conf`` (``INNCONF``)
    is in the work directory: an empty spool, an empty active file and an empty
    tradindexed overview built by ``makehistory``, so it answers readers without innd.
    Started as root, it drops to the ``news`` user, which must own that tree."""
    nnrpd = require_binary("nnrpd", f"{_INN}/nnrpd")
    makehistory = require_binary("makehistory", f"{_INN}/makehistory")
    _need_root("nnrpd")
    port = free_port(HOST)
    with _workdir("nnrpd") as work:
        certs = _copy_certs(leaf, work / "certs")
        certs.key.chmod(0o600)  # nnrpd refuses a private key others can read
        for sub in ("etc", "db", "run", "log", "tmp", "spool/overview"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        paths = {"pathetc": "etc", "pathdb": "db", "pathrun": "run", "pathlog": "log",
                 "pathspool": "spool", "pathtmp": "tmp", "pathoverview": "spool/overview",
                 "patharticles": "spool/articles", "pathoutgoing": "spool/outgoing",
                 "pathincoming": "spool/incoming", "patharchive": "spool/archive"}
        inn_conf = work / "etc" / "inn.conf"
        inn_conf.write_text(
            "domain: portwatch.test\npathhost: news.portwatch.test\n"
            f"pathnews: /usr/lib/news\npathbin: {_INN}\n"
            + "".join(f"{key}: {work / sub}\n" for key, sub in paths.items())
            + 'mta: "/usr/sbin/sendmail -oi -oem %s"\nhismethod: hisv6\n'
            "ovmethod: tradindexed\nenableoverview: true\n"
            f"tlscertfile: {certs.chain}\ntlskeyfile: {certs.key}\ntlscafile: {certs.ca}\n")
        (work / "etc" / "readers.conf").write_text(
            f'auth "local" {{\n    hosts: "{HOST}"\n    default: "<local>"\n}}\n'
            'access "local" {\n    users: "<local>"\n    newsgroups: "*"\n}\n')
        (work / "etc" / "storage.conf").write_text(
            "method tradspool {\n    newsgroups: *\n    class: 0\n}\n")
        for name in ("db/active", "db/newsgroups", "spool/tradspool.map"):
            (work / name).touch()
        _chown_tree(work, "news")
        env = {**os.environ, "INNCONF": str(inn_conf)}
        built = subprocess.run(
            ["su", "news", "-s", "/bin/sh", "-c", f"{makehistory} -O -x -F"],
            env=env, capture_output=True, text=True, timeout=60, check=False)
        if built.returncode != 0:
            raise ServerUnavailable(f"makehistory failed: {built.stderr.strip()[:200]}")
        argv = ["env", f"INNCONF={inn_conf}", nnrpd, "-D", "-f", "-n", "-b", HOST,
                "-p", str(port)]
        with run_server(argv, HOST, port, work, name="nnrpd") as server:
            yield server


@contextlib.contextmanager
def start_vsftpd_tls(leaf: LeafFiles) -> Iterator[Server]:
    """vsftpd with ``ssl_enable=YES``: answers AUTH TLS with "234 Proceed"."""
    with _workdir("vsftpd-certs") as work:
        certs = _copy_certs(leaf, work)
        extra = (f"ssl_enable=YES\nallow_anon_ssl=YES\nforce_local_logins_ssl=NO\n"
                 f"force_local_data_ssl=NO\nrsa_cert_file={certs.chain}\n"
                 f"rsa_private_key_file={certs.key}\nssl_tlsv1=YES\nssl_sslv2=NO\n"
                 "ssl_sslv3=NO\nrequire_ssl_reuse=NO\n")  # fmt: skip
        with start_vsftpd(HOST, extra_config=extra) as server:
            yield server


@contextlib.contextmanager
def start_postgres_tls(leaf: LeafFiles) -> Iterator[Server]:
    """PostgreSQL with ``ssl=on`` and ``leaf`` (key owned by postgres, mode 0600)."""
    with _workdir("postgres-certs") as work:
        os.chmod(work, 0o755)
        certs = _copy_certs(leaf, work / "certs")
        os.chmod(certs.key, 0o600)
        if is_root():
            _chown_tree(work, "postgres")
        args = ("-c", "ssl=on", "-c", f"ssl_cert_file={certs.chain}",
                "-c", f"ssl_key_file={certs.key}")  # fmt: skip
        with start_postgres(HOST, extra_args=args) as server:
            yield server


@contextlib.contextmanager
def start_mariadb_tls(leaf: LeafFiles) -> Iterator[Server]:
    """MariaDB with TLS (``--ssl-cert``/``--ssl-key``): the SSL flag set in its greeting."""
    with _workdir("mariadb-certs") as work:
        os.chmod(work, 0o755)
        certs = _copy_certs(leaf, work / "certs")
        if is_root():
            _chown_tree(work, "mysql")
        args = (f"--ssl-cert={certs.chain}", f"--ssl-key={certs.key}", f"--ssl-ca={certs.ca}")
        with start_mariadb(HOST, extra_args=args) as server:
            yield server


__all__ = [
    "start_dovecot",
    "start_mariadb_tls",
    "start_postfix",
    "start_postgres_tls",
    "start_prosody",
    "start_slapd",
    "start_vsftpd_tls",
]
