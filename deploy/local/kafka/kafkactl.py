#!/usr/bin/env python3
"""Start, stop and inspect portwatch's local Kafka broker (single-node KRaft, loopback only).

Owns: the broker's lifecycle on a developer machine or a CI runner: resolving the
Apache Kafka jars from Maven Central (pom.xml -> libs/), rendering
server.properties into the run dir, formatting KRaft storage, starting
``kafka.Kafka`` in the background with a pid file, waiting until it answers,
creating the topics of ``schemas/topics.py``, and stopping it again.

Must not touch: anything but its own run, data and libs directories, and no process
but the one recorded in its pid file (checked against /proc before any signal).
The broker listens on 127.0.0.0/8 only; a non-loopback KAFKA_HOST is refused.

Usage (normally through ``make kafka-up`` / ``kafka-down`` / ``kafka-status``)::

    .venv/bin/python deploy/local/kafka/kafkactl.py up|down|status|logs

Environment (all optional):

    KAFKA_HOST             127.0.0.1     listen address; must be a loopback address
    KAFKA_PORT             9092          PLAINTEXT listener (clients)
    KAFKA_CONTROLLER_PORT  9093          CONTROLLER listener (KRaft quorum)
    KAFKA_DATA_DIR         <here>/data   log.dirs; deleted by `down`
    KAFKA_RUN_DIR          <here>/run    server.properties, broker.pid, broker.log
    KAFKA_LIBS_DIR         <here>/libs   jars copied by mvn (git-ignored)
    KAFKA_HEAP_OPTS        -Xms256m -Xmx512m
    KAFKA_START_TIMEOUT    90            seconds `up` waits for the broker to answer
    KAFKA_STOP_TIMEOUT     30            seconds `down` waits after SIGTERM before SIGKILL
    KAFKA_AUTO_CREATE_TOPICS  false      broker auto.create.topics.enable
    KAFKA_JAVA / KAFKA_MVN java / mvn    executables

Exit status: 0 success; 1 failure (the message says why, with the broker log tail
when the broker itself failed); 2 bad configuration; 3 ``status``: not running.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]  # deploy/local/kafka -> repository root
# Python puts this script's directory first on sys.path; it holds nothing to import,
# and the repository root must come first so `producers` and `schemas` resolve.
# (This script is not named kafka.py because that would shadow kafka-python.)
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(REPO)
else:
    sys.path.insert(0, str(REPO))

from producers.kafka_io import (  # noqa: E402 - needs the repository on sys.path
    KafkaUnavailable,
    TopicSetupError,
    admin_client,
    ensure_topics,
    probe_api_versions,
    wait_for_broker,
)
from schemas.topics import ALL_TOPICS  # noqa: E402

POM = HERE / "pom.xml"
TEMPLATE = HERE / "server.properties.in"
LOG4J = HERE / "log4j.properties"
BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
MIN_JAVA = 11  # Kafka 3.9 brokers need Java 11+ (17 recommended)
LOG_TAIL_LINES = 60
MVN_TIMEOUT = 900  # seconds; a cold ~/.m2 downloads ~46 MB of jars


class ConfigError(Exception):
    """The environment asks for something this script refuses (exit 2)."""


class Failure(Exception):
    """An operation failed; the message is for the user (exit 1)."""


def say(message: str) -> None:
    print(f"kafka: {message}", flush=True)


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        hint = ""
        if raw.startswith("tcp://"):
            # Kubernetes injects KAFKA_PORT=tcp://ip:port for a Service named "kafka".
            hint = " (Kubernetes sets this for a Service named kafka: unset it)"
        raise ConfigError(f"{name}={raw!r} is not a number{hint}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    controller_port: int
    data_dir: Path
    run_dir: Path
    libs_dir: Path
    heap_opts: tuple[str, ...]
    start_timeout: int
    stop_timeout: int
    auto_create_topics: bool
    java: str
    mvn: str

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def properties(self) -> Path:
        return self.run_dir / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"

    @classmethod
    def from_env(cls) -> Config:
        host = os.environ.get("KAFKA_HOST", "127.0.0.1").strip()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"KAFKA_HOST={host!r} is not an IP address") from None
        if address.version != 4 or not address.is_loopback:
            raise ConfigError(f"KAFKA_HOST={host}: the local broker listens on 127.0.0.0/8 only")
        port = _env_int("KAFKA_PORT", 9092, 1024, 65535)
        controller_port = _env_int("KAFKA_CONTROLLER_PORT", 9093, 1024, 65535)
        if port == controller_port:
            raise ConfigError("KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ")
        auto_create = os.environ.get("KAFKA_AUTO_CREATE_TOPICS", "false").strip().lower()
        if auto_create not in ("true", "false"):
            raise ConfigError("KAFKA_AUTO_CREATE_TOPICS must be true or false")

        def path(name: str, default: Path) -> Path:
            raw = os.environ.get(name, "").strip()
            return Path(raw).expanduser().resolve() if raw else default

        return cls(
            host=str(address),
            port=port,
            controller_port=controller_port,
            data_dir=path("KAFKA_DATA_DIR", HERE / "data"),
            run_dir=path("KAFKA_RUN_DIR", HERE / "run"),
            libs_dir=path("KAFKA_LIBS_DIR", HERE / "libs"),
            heap_opts=tuple(os.environ.get("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m").split()),
            start_timeout=_env_int("KAFKA_START_TIMEOUT", 90, 5, 3600),
            stop_timeout=_env_int("KAFKA_STOP_TIMEOUT", 30, 1, 600),
            auto_create_topics=auto_create == "true",
            java=os.environ.get("KAFKA_JAVA", "java"),
            mvn=os.environ.get("KAFKA_MVN", "mvn"),
        )


# --- processes -------------------------------------------------------------------------


def _read_pid(cfg: Config) -> int | None:
    try:
        text = cfg.pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Field 3 is the state; a zombie has exited already (only its parent can reap it).
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(cfg: Config, pid: int) -> bool:
    """True when ``pid`` is the kafka.Kafka JVM started with *our* server.properties.

    Guards every signal: a stale pid file must never lead to killing a recycled pid.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return BROKER_MAIN.encode() in argv and str(cfg.properties).encode() in argv


def _running_pid(cfg: Config) -> int | None:
    pid = _read_pid(cfg)
    if pid is not None and _is_alive(pid) and _is_our_broker(cfg, pid):
        return pid
    return None


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_alive(pid):
            return True
        time.sleep(0.2)
    return not _is_alive(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    # The broker was started in its own session: its process group is its pid, and
    # signalling the group also reaches anything the JVM forked. Only when that holds.
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _log_tail(cfg: Config, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with cfg.log_file.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no broker log)"
    return "\n".join(text.splitlines()[-lines:])


def _port_is_taken(host: str, port: int) -> bool:
    """True when something already listens on host:port (SO_REUSEADDR ignores TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def _locked(cfg: Config) -> Iterator[None]:
    """Serialise up/down: two concurrent `make kafka-up` must not start two brokers."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with (cfg.run_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- java, maven, storage ------------------------------------------------------------


def _check_java(cfg: Config) -> None:
    if shutil.which(cfg.java) is None:
        raise Failure(
            f"{cfg.java!r} not found: install a Java {MIN_JAVA}+ runtime "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    out = subprocess.run(
        [cfg.java, "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_x" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise Failure(f"Java {major} found; Kafka 3.9 needs Java {MIN_JAVA}+")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def resolve_jars(cfg: Config) -> bool:
    """Copy the broker's runtime jars into libs/ unless they match pom.xml already.

    Resolves into a sibling directory and swaps it in, so an interrupted download
    never leaves a half-filled libs/ that looks complete. Returns True if it ran mvn.
    """
    stamp = cfg.libs_dir / ".pom.sha256"
    digest = _pom_digest()
    has_broker_jar = any(cfg.libs_dir.glob("kafka_2.13-*.jar"))
    if has_broker_jar and stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    if shutil.which(cfg.mvn) is None:
        raise Failure(
            f"{cfg.mvn!r} not found: install Maven to resolve the Kafka jars "
            "(Debian: apt-get install maven)"
        )
    partial = cfg.libs_dir.with_name(cfg.libs_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    say(f"resolving Kafka jars from Maven Central into {cfg.libs_dir} ...")
    cmd = [
        cfg.mvn, "-q", "-B", "-f", str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=MVN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        raise Failure(f"mvn did not finish within {MVN_TIMEOUT} s") from None
    if out.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        detail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-30:])
        raise Failure(f"mvn could not resolve the Kafka jars (exit {out.returncode}):\n{detail}")
    (partial / ".pom.sha256").write_text(digest + "\n")
    shutil.rmtree(cfg.libs_dir, ignore_errors=True)
    partial.rename(cfg.libs_dir)
    return True


def _java_cmd(cfg: Config, main: str, *args: str, heap: tuple[str, ...] = ()) -> list[str]:
    return [
        cfg.java,
        *heap,
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{LOG4J}",
        "-cp",
        f"{cfg.libs_dir}/*",
        main,
        *args,
    ]


def render_properties(cfg: Config) -> None:
    text = string.Template(TEMPLATE.read_text()).substitute(
        host=cfg.host,
        port=cfg.port,
        controller_port=cfg.controller_port,
        data_dir=cfg.data_dir,
        run_dir=cfg.run_dir,
        auto_create_topics=str(cfg.auto_create_topics).lower(),
    )
    tmp = cfg.properties.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(cfg.properties)


def _run_tool(cfg: Config, *args: str) -> str:
    cmd = _java_cmd(cfg, STORAGE_TOOL, *args, heap=("-Xmx256m",))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise Failure(f"StorageTool {args[0]} did not finish within 120 s") from None
    if out.returncode != 0:
        detail = (out.stdout + out.stderr).strip()
        raise Failure(f"StorageTool {args[0]} failed (exit {out.returncode}):\n{detail}")
    return out.stdout


def format_storage(cfg: Config) -> bool:
    """Format KRaft storage once per data dir; returns True if it formatted."""
    if (cfg.data_dir / "meta.properties").is_file():
        return False
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cluster_id = _run_tool(cfg, "random-uuid").strip().splitlines()[-1].strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id):
        raise Failure(f"StorageTool random-uuid printed {cluster_id!r}, not a cluster id")
    _run_tool(cfg, "format", "-t", cluster_id, "-c", str(cfg.properties))
    return True


# --- commands --------------------------------------------------------------------------


def _check_ports_free(cfg: Config) -> None:
    for port in (cfg.port, cfg.controller_port):
        if _port_is_taken(cfg.host, port):
            raise Failure(
                f"{cfg.host}:{port} is already in use by another process (not the broker "
                f"of {cfg.pid_file}); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
            )


def _start_broker(cfg: Config) -> int:
    _check_ports_free(cfg)  # again: something may have bound it while we formatted
    if cfg.log_file.exists():
        cfg.log_file.replace(cfg.log_file.with_suffix(".log.1"))
    cmd = _java_cmd(
        cfg,
        BROKER_MAIN,
        str(cfg.properties),
        heap=(
            *cfg.heap_opts,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # Die instead of limping on: `up`/`status` then report it plainly.
            "-XX:+ExitOnOutOfMemoryError",
        ),
    )
    with cfg.log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cfg.run_dir,
            start_new_session=True,  # survives this script; own process group
            close_fds=True,
        )
    tmp = cfg.pid_file.with_suffix(".tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(cfg.pid_file)
    # The JVM outlives this script by design: stop tracking it here.
    proc.returncode = 0
    return proc.pid


def _await_broker(cfg: Config, pid: int, started: float) -> None:
    deadline = started + cfg.start_timeout
    while True:
        if not _is_alive(pid):
            raise Failure(
                f"the broker exited during start-up; last lines of {cfg.log_file}:\n"
                + _log_tail(cfg)
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure(
                f"the broker did not answer at {cfg.bootstrap} within {cfg.start_timeout} s; "
                f"last lines of {cfg.log_file}:\n" + _log_tail(cfg)
            )
        if probe_api_versions(cfg.bootstrap, min(2.0, remaining)):
            try:
                wait_for_broker(cfg.bootstrap, timeout=min(10.0, max(remaining, 1.0)))
                return
            except KafkaUnavailable:
                pass
        time.sleep(0.5)


def _stop(cfg: Config, pid: int) -> None:
    say(f"stopping broker (pid {pid}) ...")
    _signal(pid, signal.SIGTERM)
    if _wait_exit(pid, cfg.stop_timeout):
        return
    say(f"broker still running after {cfg.stop_timeout} s: SIGKILL")
    _signal(pid, signal.SIGKILL)
    if not _wait_exit(pid, 15):
        raise Failure(f"broker pid {pid} survived SIGKILL; data dir left in place")


def cmd_up(cfg: Config) -> int:
    began = time.monotonic()
    with _locked(cfg):
        pid = _running_pid(cfg)
        if pid is not None:
            say(f"broker already running (pid {pid}); checking it answers")
            try:
                wait_for_broker(cfg.bootstrap, timeout=min(cfg.start_timeout, 30))
            except KafkaUnavailable as exc:
                raise Failure(
                    f"{exc}; pid {pid} is running but does not answer. "
                    f"Try `make kafka-down`. Log tail:\n{_log_tail(cfg)}"
                ) from None
        else:
            cfg.pid_file.unlink(missing_ok=True)  # stale
            _check_ports_free(cfg)
            _check_java(cfg)
            resolved = resolve_jars(cfg)
            jars_done = time.monotonic()
            if resolved:
                say(f"jars resolved in {jars_done - began:.1f} s")
            render_properties(cfg)
            if format_storage(cfg):
                say(f"formatted KRaft storage in {cfg.data_dir}")
            pid = _start_broker(cfg)
            say(f"started broker pid {pid}; waiting up to {cfg.start_timeout} s for it to answer")
            try:
                _await_broker(cfg, pid, time.monotonic())
            except Failure:
                if _is_alive(pid):
                    _stop(cfg, pid)
                cfg.pid_file.unlink(missing_ok=True)
                raise
        try:
            created = ensure_topics(cfg.bootstrap, ALL_TOPICS, timeout=30)
        except (TopicSetupError, KafkaUnavailable) as exc:
            raise Failure(f"broker answers but topics could not be created: {exc}") from None
    listing = ", ".join(f"{t.name}({t.partitions})" for t in ALL_TOPICS)
    say(f"topics ready: {listing}" + (f" [created {len(created)}]" if created else ""))
    say(f"broker up at {cfg.bootstrap} (pid {pid}) in {time.monotonic() - began:.1f} s")
    if cfg.port != 9092 or cfg.host != "127.0.0.1":
        say(f"for the tests: export PORTWATCH_KAFKA={cfg.bootstrap}")
    return 0


def _remove_data_dir(cfg: Config) -> None:
    data = cfg.data_dir
    if not data.exists():
        return
    looks_like_kafka = (
        (data / "meta.properties").is_file()
        or (data / "__cluster_metadata-0").is_dir()
        or not any(data.iterdir())
    )
    if not looks_like_kafka or data in (Path("/"), Path.home(), REPO):
        raise Failure(f"refusing to delete {data}: it does not look like a Kafka data dir")
    shutil.rmtree(data)
    say(f"removed {data}")


def cmd_down(cfg: Config, keep_data: bool) -> int:
    with _locked(cfg):
        pid = _running_pid(cfg)
        if pid is None:
            recorded = _read_pid(cfg)
            if recorded is not None and _is_alive(recorded):
                say(f"pid file names {recorded}, which is not our broker: left alone")
            else:
                say("broker not running")
        else:
            _stop(cfg, pid)
            say("broker stopped")
        cfg.pid_file.unlink(missing_ok=True)
        if not keep_data:
            _remove_data_dir(cfg)
    return 0


def _memory(pid: int) -> str:
    """Resident and peak resident memory of ``pid`` from /proc (VmRSS, VmHWM)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = value.strip()
    if not fields:
        return ""
    return f"RSS {fields.get('VmRSS', '?')}, peak RSS {fields.get('VmHWM', '?')}"


def cmd_status(cfg: Config) -> int:
    pid = _running_pid(cfg)
    if pid is None:
        say(f"not running (expected at {cfg.bootstrap}; start with `make kafka-up`)")
        return 3
    memory = _memory(pid)
    say(f"pid {pid}" + (f", {memory}" if memory else ""))
    try:
        with admin_client(cfg.bootstrap, timeout=10) as admin:
            topics = admin.describe_topics()
    except Exception as exc:  # noqa: BLE001 - report any failure, never crash `status`
        say(f"running but not answering at {cfg.bootstrap}: {exc}")
        return 1
    say(f"answering at {cfg.bootstrap}; {len(topics)} topics")
    for topic in sorted(topics, key=lambda t: str(t.get("name"))):
        name = topic.get("name")
        if not str(name).startswith("__"):
            say(f"  {name}: {len(topic.get('partitions') or ())} partitions")
    return 0


def cmd_logs(cfg: Config, lines: int) -> int:
    print(_log_tail(cfg, lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kafkactl.py", description="portwatch's local single-node Kafka broker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="resolve jars, format, start, wait, create topics")
    down = sub.add_parser("down", help="stop the broker and delete its data dir")
    down.add_argument("--keep-data", action="store_true", help="do not delete the data dir")
    sub.add_parser("status", help="is it running and answering; topics")
    logs = sub.add_parser("logs", help="print the end of the broker log")
    logs.add_argument("-n", type=int, default=LOG_TAIL_LINES, help="lines (default 60)")
    args = parser.parse_args(argv)
    try:
        cfg = Config.from_env()
        if args.command == "up":
            return cmd_up(cfg)
        if args.command == "down":
            return cmd_down(cfg, args.keep_data)
        if args.command == "status":
            return cmd_status(cfg)
        return cmd_logs(cfg, args.n)
    except ConfigError as exc:
        print(f"kafka: configuration error: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"kafka: {args.command} failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kafka: {args.command} interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kafkactl.py status | head`: the reader left, not an error
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        return 0


if __name__ == "__main__":
    sys.exit(main())
