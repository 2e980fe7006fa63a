"""CLI commands of the distributed shape: ``produce``, ``discover``, ``process``.

Owns: turning flags and the environment into the narrow options of the shard
producer (``producers.publish``), the discovery worker
(``portwatch.discover_worker``) and the Faust apps (``stream_processors.app``);
creating the topics before anything uses them; signals (SIGTERM/SIGINT stop a
worker gracefully); one-line errors with cli.py's exit codes.

``portwatch.cli`` registers these commands when this module exists
(``register(cli_group)``). The work itself is done by the modules above.

Settings shared by the three commands: ``--kafka`` (``PORTWATCH_KAFKA``) and
``--topic-prefix`` (``PORTWATCH_TOPIC_PREFIX``, default empty): two pipelines on
one broker use two prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import click

# portwatch.cli imports this module at its end and calls ``register``; when this module
# is imported first, it imports portwatch.cli, which calls ``register`` before the
# commands below exist. Groups registered that early get the commands at the end.
_early_groups: list[click.Group] = []


def register(cli_group: click.Group) -> None:
    """Called by portwatch.cli: add the distributed shape's commands."""
    commands = globals().get("COMMANDS")
    if commands is None:
        _early_groups.append(cli_group)
        return
    for command in commands:
        cli_group.add_command(command)


from portwatch.cli import (  # noqa: E402 - after register, see above
    EXIT_RUNTIME,
    EXIT_USAGE,
    STORE_OPTION,
    _check_store_url,
    _choose_engine,
    _store,
    fail,
)
from portwatch.settings import Settings, SettingsError  # noqa: E402
from schemas.topics import TOPIC_PREFIX_ENV, TopicSet, topic_names  # noqa: E402

log = logging.getLogger(__name__)

KAFKA_OPTION = click.option(
    "--kafka", envvar="PORTWATCH_KAFKA", default="127.0.0.1:9092", show_default=True,
    metavar="HOST:PORT", help="Kafka bootstrap servers (comma-separated).")
PREFIX_OPTION = click.option(
    "--topic-prefix", envvar=TOPIC_PREFIX_ENV, default="", metavar="PREFIX",
    help="Put PREFIX before every topic and consumer group name (one pipeline per prefix).")


def _topics(bootstrap: str, prefix: str) -> TopicSet:
    """The topic set, created on the broker when missing; one clear error otherwise."""
    from producers.kafka_io import KafkaUnavailable, TopicSetupError, ensure_topics

    if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
        fail(f"bad --topic-prefix {prefix!r}: use letters, digits, '.', '_' and '-'")
    topics = topic_names(prefix)
    try:
        ensure_topics(bootstrap, topics.all, timeout=30)
    except KafkaUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    except TopicSetupError as exc:
        fail(str(exc), EXIT_RUNTIME)
    except ValueError as exc:  # bad bootstrap address
        fail(str(exc), EXIT_USAGE)
    return topics


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except SettingsError as exc:
        fail(str(exc))


def _say(message: str) -> None:
    click.echo(f"portwatch: {message}", err=True)


# -- produce ----------------------------------------------------------------------------


@click.command()
@click.argument("targets", nargs=-1, metavar="TARGET...")
@click.option("-p", "--ports", default=None, metavar="SPEC",
              help="TCP ports: 22,80,8000-8100, or 1-65535 (default: all).")
@click.option("--org", "organization", default="", metavar="NAME",
              help="Organization the command-line targets belong to.")
@click.option("--asset", default="", metavar="NAME", help="Asset name for the targets.")
@click.option("-i", "--inventory", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="CSV or YAML inventory of targets.")
@click.option("--exclude", multiple=True, metavar="CIDR", help="Never scan this (repeatable).")
@click.option("--exclude-file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="File of addresses/blocks never to scan.")
@click.option("--allow-large", is_flag=True, help="Allow targets larger than a /16.")
@click.option("--scan-id", default=None, help="Scan id (default: a new one; given to resume).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the shard walk (same seed, same shards).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Resume file: saved after each acknowledged batch, read at start.")
@click.option("--hosts-per-shard", type=click.IntRange(1), default=16, show_default=True)
@click.option("--ports-per-shard", type=click.IntRange(1, 65535), default=65535,
              show_default=True)
@click.option("--wait", "wait_seconds", type=click.FloatRange(0), default=0,
              help="Then wait up to this many seconds until the pipeline has drained.")
@click.option("-u", "--udp", default=None, metavar="top1000|none|SPEC",
              help="UDP ports as for `portwatch scan` (default top1000): published as UDP "
                   "shards after the TCP ones (their checkpoint is FILE.udp).")
@KAFKA_OPTION
@PREFIX_OPTION
def produce(targets: Sequence[str], ports: str | None, organization: str, asset: str,
            inventory: str | None, exclude: Sequence[str], exclude_file: str | None,
            allow_large: bool, scan_id: str | None, seed: int, checkpoint: str | None,
            hosts_per_shard: int, ports_per_shard: int, wait_seconds: float,
            udp: str | None, kafka: str, topic_prefix: str) -> None:
    """Publish the shards of a scan of TARGET... onto Kafka for the discovery workers.

    Targets, ports and scope checks are those of `portwatch scan`. With --checkpoint
    an interrupted run resumes at the first shard not acknowledged (same --scan-id
    and --seed).

    \b
    Example:
      portwatch produce --ports 1-1024 --scan-id nightly-1 --checkpoint ck.json 127.0.0.1
    """
    from portwatch.cli import resolve_input
    from portwatch.runner import new_scan_id
    from producers.kafka_io import KafkaUnavailable, PublishError, make_producer
    from producers.publish import produce_shards
    from producers.shards import Checkpoint, ShardPlan
    from schemas.records import Proto

    settings = _settings(ports=ports, udp=udp)
    resolved, tcp_ports, udp_ports = resolve_input(
        settings, targets, organization=organization, asset=asset, inventory=inventory,
        exclude=exclude, exclude_file=exclude_file, allow_large=allow_large)
    if scan_id is None and checkpoint:
        try:
            saved = Checkpoint.load(checkpoint)
        except ValueError as exc:
            fail(str(exc))
        if saved is not None:
            scan_id, seed = saved.scan_id, saved.seed
    scan_id = scan_id or new_scan_id()
    plans = [(ShardPlan(scan_id, tuple(resolved), tuple(tcp_ports), Proto.TCP, seed,
                        hosts_per_shard=hosts_per_shard, ports_per_shard=ports_per_shard),
              checkpoint)]
    if udp_ports:
        plans.append((ShardPlan(scan_id, tuple(resolved), tuple(udp_ports), Proto.UDP, seed,
                                hosts_per_shard=hosts_per_shard,
                                ports_per_shard=ports_per_shard),
                      f"{checkpoint}.udp" if checkpoint else None))
    topics = _topics(kafka, topic_prefix)
    try:
        producer = make_producer(kafka, client_id="portwatch-produce")
    except KafkaUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    try:
        results = [produce_shards(producer, topics.shards.name, plan, checkpoint_path=path)
                   for plan, path in plans]
    except ValueError as exc:  # a checkpoint of another scan
        fail(str(exc))
    except PublishError as exc:
        fail(f"{exc}; rerun with the same --checkpoint to resume", EXIT_RUNTIME)
    finally:
        producer.close(timeout=10)
    first = results[0]
    click.echo(json.dumps({"scan_id": first.scan_id, "seed": first.seed,
                           "shards": sum(r.total for r in results),
                           "published": sum(r.published for r in results),
                           "resumed_at": first.first_index}))
    if wait_seconds:
        _wait_drained(kafka, topics, wait_seconds)


def _wait_drained(bootstrap: str, topics: TopicSet, timeout: float) -> None:
    """Until every stage's group has committed everything: discover, stages, sink."""
    from producers.publish import group_lag

    stages = [(f"{topics.prefix}portwatch-discover", [topics.shards.name]),
              (f"{topics.prefix}portwatch-stages", [topics.open_ports.name]),
              (f"{topics.prefix}portwatch-sink",
               [topics.findings.name, topics.host_scans.name])]
    deadline = time.monotonic() + timeout
    while True:
        lags = [group_lag(bootstrap, g, t) for g, t in stages]
        if all(lag.lag == 0 for lag in lags):
            _say("pipeline drained")
            return
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{lag.group_id}: {lag.lag}" for lag in lags)
            fail(f"pipeline not drained after {timeout:.0f}s ({detail} messages behind)",
                 EXIT_RUNTIME)
        time.sleep(0.5)


# -- discover ---------------------------------------------------------------------------


@click.command()
@click.option("--group", default=None, metavar="ID",
              help="Consumer group (default: <prefix>portwatch-discover).")
@click.option("-c", "--concurrency", type=int, default=None,
              help="Sockets in flight for discovery (default 2000).")
@click.option("-t", "--timeout", type=float, default=None,
              help="Seconds to wait for a port to answer (default 1.0).")
@click.option("--retries", type=int, default=None, help="Retries for ports that timed out.")
@click.option("--tarpit-threshold", type=int, default=None,
              help="Open ports per host beyond which it 'answers on every port' (1000).")
@click.option("--engine", type=click.Choice(["auto", "masscan", "connect"]), default=None,
              help="Discovery engine, as for `portwatch scan` (default auto).")
@click.option("--shard-attempts", type=click.IntRange(1, 10), default=2, show_default=True,
              help="Engine runs per shard before it is recorded as failed.")
@click.option("--session-timeout", type=click.FloatRange(6, 300), default=10.0,
              show_default=True, help="Seconds before a dead worker's shards move to another.")
@click.option("--max-shards", type=click.IntRange(0), default=0,
              help="Exit after this many shards (0: run until stopped).")
@click.option("--idle-exit", type=click.FloatRange(0), default=0,
              help="Exit after this many seconds without a shard (0: run until stopped).")
@KAFKA_OPTION
@PREFIX_OPTION
def discover(group: str | None, concurrency: int | None, timeout: float | None,
             retries: int | None, tarpit_threshold: int | None, engine: str | None,
             shard_attempts: int,
             session_timeout: float, max_shards: int, idle_exit: float, kafka: str,
             topic_prefix: str) -> None:
    """Run a discovery worker: take shards, scan them, publish open ports.

    Start as many as you like with the same --group: Kafka spreads the shards over
    them, and the shards of a worker that dies are picked up by another. A shard's
    offset is committed only after its open ports are acknowledged by the broker.
    """
    from portwatch.discover_worker import DiscoveryWorker, WorkerOptions
    from probers.discovery.base import DiscoveryEngine
    from producers.kafka_io import KafkaUnavailable
    from schemas.records import Proto, Shard

    settings = _settings(concurrency=concurrency, timeout=timeout, retries=retries,
                         tarpit_threshold=tarpit_threshold, engine=engine)
    topics = _topics(kafka, topic_prefix)
    notes: set[str] = set()

    def engine_for(shard: Shard) -> DiscoveryEngine:
        """The engine the embedded scan would choose (``--engine``, ``--rate``)."""
        if shard.proto is Proto.UDP:
            from probers.discovery.udp import UdpEngine, UdpOptions

            return UdpEngine(UdpOptions(rate=float(settings.rate or 500)))
        engine, note = _choose_engine(settings, list(shard.targets))
        if note and note not in notes:
            notes.add(note)
            _say(note)
        return engine  # type: ignore[no-any-return]

    def on_shard(state: str, shard: Shard) -> None:
        _say(f"shard {shard.shard_id} {state} ({len(shard.targets)} hosts, "
             f"{shard.port_count} ports)")

    options = WorkerOptions(kafka, topics, group or f"{topic_prefix}portwatch-discover",
                            tarpit_threshold=settings.tarpit_threshold,
                            shard_attempts=shard_attempts, max_shards=max_shards,
                            idle_exit=idle_exit,
                            session_timeout_ms=int(session_timeout * 1000))
    worker = DiscoveryWorker(options, engine_for, on_shard)
    previous = {sig: signal.signal(sig, lambda *_: worker.stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    _say(f"discover worker running (group {options.group_id}); SIGTERM or Ctrl-C stops it")
    try:
        stats = worker.run()
    except KafkaUnavailable as exc:
        fail(str(exc), EXIT_RUNTIME)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say(f"discover worker done: {stats.shards} shards, {stats.open_ports} open ports, "
         f"{stats.retried} retries, {stats.failed} failed, {stats.poison} dead letters")


# -- process ----------------------------------------------------------------------------


@click.command()
@click.option("--role", type=click.Choice(["all", "stages", "sink"]), default="all",
              show_default=True,
              help="stages: identify/TLS/CDN/risk (scale out); sink: write the store (one "
                   "process per chdb store); all: both in this process.")
@STORE_OPTION
@click.option("--identify-concurrency", type=int, default=None,
              help="Ports identified at once by this worker (default 64).")
@click.option("--banner-wait", type=float, default=None,
              help="Seconds to wait for a service to speak first (default 2.0).")
@click.option("--batch-seconds", type=float, default=None,
              help="Longest a finding waits before it is written (default 1.0).")
@click.option("--sink-buffer", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Messages per store insert (each holds up to 500 findings of one host).")
@click.option("--commit-interval", type=click.FloatRange(0.1, 60), default=1.0,
              show_default=True, help="Seconds between offset commits.")
@click.option("--session-timeout", type=click.FloatRange(6, 300), default=10.0,
              show_default=True, help="Seconds before a dead worker's partitions move.")
@click.option("--serve", "serve_at", default="", metavar="[HOST:]PORT",
              help="Also serve the web reports (as `portwatch serve`) from this process, "
                   "over the store its sink writes: how a chdb store is read while its "
                   "sink runs. Loopback unless a --token is given.")
@click.option("--token", envvar="PORTWATCH_WEB_TOKEN", default="", metavar="TOKEN",
              show_envvar=True, help="Token the --serve web reports require off loopback.")
@KAFKA_OPTION
@PREFIX_OPTION
def process(role: str, store: str | None, identify_concurrency: int | None,
            banner_wait: float | None, batch_seconds: float | None, sink_buffer: int,
            commit_interval: float, session_timeout: float, serve_at: str, token: str,
            kafka: str, topic_prefix: str) -> None:
    """Run the stream processors (Faust): open ports -> findings -> store.

    Any number of `--role stages` workers may run; exactly one process runs the
    sink of a chdb store (it owns the store while it runs: `portwatch report` on
    that store says so). To read the reports while it runs, start the sink with
    `--serve 8765` (web pages and JSON API from the same process), or use a
    ClickHouse server store.
    """
    from portwatch.web.cli import BindError, check_bind, parse_listen

    listen: tuple[str, int] | None = None
    if serve_at:
        if role == "stages":
            fail("--serve needs the sink (--role all or sink): the reports are read from "
                 "the store the sink owns", EXIT_USAGE)
        try:
            listen = parse_listen(serve_at)
            check_bind(listen[0], token)
        except (ValueError, BindError) as exc:
            fail(f"--serve: {exc}", EXIT_USAGE)
    from stream_processors.agents import make_stage
    from stream_processors.app import PipelineOptions, build_sink_app, build_stages_app
    from stream_processors.sink import StoreSink
    from stream_processors.stages import make_context

    settings = _settings(identify_concurrency=identify_concurrency, banner_wait=banner_wait,
                         batch_seconds=batch_seconds, store=store)
    if role in ("all", "sink"):
        _check_store_url(settings.store)
    topics = _topics(kafka, topic_prefix)
    options = PipelineOptions(kafka, topics, identify_concurrency=settings.identify_concurrency,
                              sink_buffer=sink_buffer, sink_within=settings.batch_seconds,
                              commit_interval=commit_interval, session_timeout=session_timeout)
    db = _store(settings.store) if role in ("all", "sink") else None
    apps: list[Any] = []
    sink: StoreSink | None = None
    report: dict[str, Any] = {"role": role}
    if role in ("all", "stages"):
        # The very context the embedded scan builds (cli._run_scan): same settings,
        # same nmap fallback and TLS enumeration, so both shapes find the same things.
        ctx = make_context(
            banner_wait=settings.banner_wait, identify_budget=settings.identify_budget,
            per_host_connections=settings.per_host_connections,
            use_nmap_probes=settings.nmap_probes, tls_enumeration=settings.tls,
            tls_timeout=settings.tls_timeout, tls_budget=settings.tls_budget,
        )
        stages_app, stage_stats = build_stages_app(options, make_stage(ctx))
        apps.append(stages_app)
        report["stages"] = stage_stats
    if db is not None:
        sink = StoreSink(db)
        from stream_processors.change_hold import ChangeStage

        sink_app, sink_agent_stats = build_sink_app(options, sink, changes=ChangeStage(db))
        apps.append(sink_app)
        report["sink"] = sink.stats
        report["sink_agent"] = sink_agent_stats
    web: tuple[Any, str, int] | None = None
    if listen is not None and db is not None:
        from portwatch.web.cli import web_app

        web = (web_app(db, listen[0], token), *listen)
    try:
        asyncio.run(_serve(apps, sink, role, web, token))
    finally:
        if db is not None:
            db.close()
        # One JSON line on stdout with what this worker did (benchmarks and logs read it).
        click.echo(json.dumps({k: v if isinstance(v, str) else dataclasses.asdict(v)
                               for k, v in report.items()}))
    if sink is not None:
        s = sink.stats
        _say(f"sink stopped: {s.findings} findings and {s.host_scans} host scans stored in "
             f"{s.batches} batches")


async def _serve(apps: list[Any], sink: Any, role: str,
                 web: tuple[Any, str, int] | None = None, token: str = "") -> None:
    from stream_processors.app import run_apps

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    server: Any = None
    server_task: asyncio.Task[None] | None = None

    def on_signal() -> None:
        stop.set()
        if sink is not None:
            sink.stop()
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if web is not None:
        from portwatch.web.cli import listening_line

        server, server_task = await _start_web(*web)
        _say(listening_line(web[1], web[2], token))
    _say(f"stream processors running (role {role}); SIGTERM or Ctrl-C stops them")
    sys.stderr.flush()
    try:
        await run_apps(apps, stop)
    except RuntimeError as exc:
        fail(str(exc), EXIT_RUNTIME)
    finally:
        if server is not None and server_task is not None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server_task, 10.0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _start_web(app: Any, host: str, port: int) -> tuple[Any, asyncio.Task[None]]:
    """uvicorn on this event loop, beside the Faust apps; it reads the store the sink
    writes (the Store serializes its queries). Signals stay ours: the server is
    told to exit when the processors stop."""
    import uvicorn

    from portwatch.web.cli import uvicorn_config

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the process's handlers stay
            yield

    # Bound here, not by uvicorn (which exits the process on a bind error): a port in
    # use is one line and exit 1, with nothing started.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(f"--serve: cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_RUNTIME)
    server = EmbeddedServer(uvicorn_config(app, host, port))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    return server, task


COMMANDS: tuple[click.Command, ...] = (produce, discover, process)
for _group in _early_groups:
    register(_group)


__all__ = ["discover", "process", "produce", "register"]
