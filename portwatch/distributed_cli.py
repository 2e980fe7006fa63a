"""CLI commands of the distributed shape: ``produce``, ``discover``, ``process``.

Owns: the three commands' flags and help, creating the topics before anything uses
them, signals (SIGTERM/SIGINT stop a worker gracefully) and the one JSON line of
stats a worker prints when it stops. Every component is built by the composition
root (``portwatch.assembly``) from the same settings as ``portwatch scan``; the work
is done by ``producers.publish`` and ``stream_processors.transports``.

Settings shared by the three commands: ``--kafka`` (``PORTWATCH_KAFKA``) and
``--topic-prefix`` (``PORTWATCH_TOPIC_PREFIX``): two pipelines on one broker use two
prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from portwatch.console import (
    ALERTS_EMPTY,
    BROKER_WAIT_OPTION,
    EXIT_RUNTIME,
    EXIT_USAGE,
    KAFKA_OPTION,
    PREFIX_OPTION,
    SECONDS,
    STORE_OPTION,
    fail,
    one_line,
    refuse_empty,
    say,
    settings_from,
    target_options,
)
from portwatch.web.cli import beside_serve_options
from probers.discovery.engines import TCP_CHOICES
from schemas.topics import TopicSet


def _topics(assembly: Any) -> TopicSet:
    """The topic set, created on the broker when missing; one clear error otherwise.

    A broker that does not answer yet is waited for, up to ``broker_wait`` seconds (a
    worker started before its broker, as pods of one release are): one line says so."""
    from producers.kafka_io import (
        KafkaUnavailable,
        ensure_topics,
        probe_api_versions,
        wait_for_broker,
    )

    topics: TopicSet = assembly.topics()
    broker = assembly.broker()
    bootstrap, wait = broker.bootstrap, broker.wait
    try:
        if wait > 0 and not probe_api_versions(bootstrap, 2.0):
            say(f"no Kafka broker answers at {bootstrap} yet: waiting up to {wait} s "
                "(--broker-wait)")
            try:
                wait_for_broker(bootstrap, timeout=wait)
            except KafkaUnavailable:
                fail(f"no Kafka broker answered at {bootstrap} within {wait} s "
                     "(--broker-wait): check --kafka / PORTWATCH_KAFKA (`make kafka-up` "
                     "starts one on this machine)", EXIT_RUNTIME)
            say(f"Kafka broker at {bootstrap} answers")
        ensure_topics(bootstrap, topics.all, replication_factor=broker.replication,
                      timeout=30)
    except ValueError as exc:  # a bad bootstrap address
        fail(str(exc), EXIT_USAGE)
    return topics


# -- produce ----------------------------------------------------------------------------


@click.command()
@target_options
@click.option("--scan-id", default=None, help="Scan id (default: a new one; given to resume).")
@click.option("--seed", type=int, default=None,
              help="Seed of the shard walk (default 0; same seed, same shards).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Resume file (the format of `portwatch scan --checkpoint`): saved after "
                   "each acknowledged batch, read at start.")
@click.option("--shard-hosts", "--hosts-per-shard", "hosts_per_shard", type=int, default=None,
              help="Hosts per shard (PORTWATCH_SHARD_HOSTS, default 16).")
@click.option("--shard-ports", "--ports-per-shard", "ports_per_shard", type=int, default=None,
              help="Ports per shard (PORTWATCH_SHARD_PORTS, default 65535).")
@click.option("--wait", "wait_seconds", type=SECONDS, default=0,
              help="Then wait up to this many seconds until the pipeline has drained (every "
                   "record consumed; change events follow within the sink's "
                   "--change-settle seconds).")
@click.option("--discover-group", default=None, metavar="ID",
              help="The discovery workers' consumer group, when they run with --group "
                   "(what --wait watches; default: <prefix>portwatch-discover).")
@KAFKA_OPTION
@BROKER_WAIT_OPTION
@PREFIX_OPTION
def produce(targets: Sequence[str], ports: str | None, organization: str, asset: str,
            only_organization: str,
            inventory: Sequence[str], exclude: Sequence[str], exclude_file: Sequence[str],
            allow_large: bool, scan_id: str | None, seed: int | None, checkpoint: str | None,
            hosts_per_shard: int | None, ports_per_shard: int | None, wait_seconds: float,
            discover_group: str | None, udp: str | None, kafka: str | None,
            broker_wait: int | None, topic_prefix: str | None) -> None:
    """Publish the shards of a scan of TARGET... onto Kafka for the discovery workers.

    Targets, ports and scope checks are those of `portwatch scan`. With --checkpoint
    an interrupted run resumes at the first shard not acknowledged (its scan id and
    seed come from the file); a checkpoint of other targets or ports is refused. Once
    every shard is published the file is removed: the next run is a new scan.

    \b
    Example:
      portwatch produce --ports 1-1024 --scan-id nightly-1 --checkpoint ck.json 127.0.0.1
    """
    from portwatch.assembly import Assembly
    from producers.kafka_io import PublishError, make_producer
    from producers.publish import produce_shards

    assembly = Assembly(settings_from(ports=ports, udp=udp, kafka=kafka,
                                      broker_wait=broker_wait, topic_prefix=topic_prefix,
                                      shard_hosts=hosts_per_shard,
                                      shard_ports=ports_per_shard))
    work = assembly.scan_input(targets, organization=organization, asset=asset,
                               inventory=inventory, exclude=exclude, exclude_file=exclude_file,
                               allow_large=allow_large, only_organization=only_organization)
    plan, start = assembly.scan_plan(work, checkpoint_path=checkpoint, scan_id=scan_id,
                                     seed=seed)
    topics = _topics(assembly)
    producer = make_producer(assembly.settings.kafka, client_id="portwatch-produce")
    try:
        result = produce_shards(producer, topics.shards.name, plan, start=start,
                                checkpoint_path=checkpoint)
    except PublishError as exc:
        fail(f"{exc}; rerun with the same --checkpoint to resume", EXIT_RUNTIME)
    finally:
        producer.close(timeout=10)
    if checkpoint is not None:
        # Every shard is published: the checkpoint has done its work, and is removed as
        # `scan` removes its own (kept, it made every later run with it publish nothing,
        # exit 0: a nightly `produce --checkpoint` scanned once; a review)
        if result.published == 0 and result.first_index == result.total:
            say(f"the checkpoint {checkpoint} says every shard of scan {result.scan_id} was "
                "published already: nothing published; it is removed, so the next run "
                "starts a new scan")
        Path(checkpoint).unlink(missing_ok=True)
    click.echo(json.dumps({"scan_id": result.scan_id, "seed": result.seed,
                           "shards": result.total, "published": result.published,
                           "resumed_at": result.first_index}))
    if wait_seconds:
        _wait_drained(assembly.settings.kafka, topics, wait_seconds, discover_group)


def _wait_drained(bootstrap: str, topics: TopicSet, timeout: float,
                  discover_group: str | None = None) -> None:
    """Until every stage's group has committed everything: discover (``discover_group``:
    the workers' own --group; a wait on the default one never ended: a review), stages,
    sink."""
    from producers.publish import group_lag

    stages = [(discover_group or f"{topics.prefix}portwatch-discover", [topics.shards.name]),
              (f"{topics.prefix}portwatch-stages", [topics.open_ports.name]),
              (f"{topics.prefix}portwatch-sink",
               [topics.findings.name, topics.host_scans.name])]
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    while True:
        try:
            lags = [group_lag(bootstrap, g, t) for g, t in stages]
        except KafkaError as exc:  # the broker went away mid-wait: asked again, bounded
            if time.monotonic() >= deadline:
                fail(f"pipeline not drained after {timeout:.0f}s: the broker did not answer "
                     f"({type(exc).__name__}: {one_line(exc)})", EXIT_RUNTIME)
            time.sleep(1.0)
            continue
        if all(lag.lag == 0 for lag in lags):
            say("pipeline drained")
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
              help="Sockets in flight for connect discovery (default 2000).")
@click.option("-t", "--timeout", type=float, default=None,
              help="Seconds to wait for a port to answer (default 1.0).")
@click.option("--retries", type=int, default=None, help="Retries for ports that timed out.")
@click.option("--tarpit-threshold", type=int, default=None,
              help="Open ports per host beyond which it 'answers on every port' (1000).")
@click.option("--engine", type=click.Choice(TCP_CHOICES), default=None,
              help="Discovery engine, as for `portwatch scan` (default auto).")
@click.option("--rate", type=int, default=None, help="masscan packets per second (10,000).")
@click.option("--shard-attempts", type=int, default=None,
              help="Engine runs per shard before it is recorded as failed (default 2); the "
                   "ports any attempt found are kept.")
@click.option("--session-timeout", type=float, default=None,
              help="Seconds before a dead worker's shards move to another (default 10).")
@click.option("--exclude", multiple=True, metavar="CIDR",
              help="Never scan this address or block, whatever a shard says (repeatable).")
@click.option("--exclude-file", type=click.Path(dir_okay=False), multiple=True, metavar="FILE",
              help="File of addresses/blocks this worker never scans (repeatable).")
@click.option("--max-shards", type=click.IntRange(0), default=0,
              help="Exit after this many shards (0: run until stopped).")
@click.option("--idle-exit", type=SECONDS, default=0,
              help="Exit after this many seconds without a shard, once the broker says "
                   "every shard of the group is committed: a broker outage never counts "
                   "(0: run until stopped).")
@KAFKA_OPTION
@BROKER_WAIT_OPTION
@PREFIX_OPTION
def discover(group: str | None, concurrency: int | None, timeout: float | None,
             retries: int | None, tarpit_threshold: int | None, engine: str | None,
             rate: int | None, shard_attempts: int | None, session_timeout: float | None,
             exclude: Sequence[str], exclude_file: Sequence[str], max_shards: int,
             idle_exit: float, kafka: str | None, broker_wait: int | None,
             topic_prefix: str | None) -> None:
    """Run a discovery worker: take shards, scan them, publish open ports.

    Start as many as you like with the same --group: Kafka spreads the shards over
    them, and the shards of a worker that dies are picked up by another. A shard's
    offset is committed only after its open ports are acknowledged by the broker.
    Every shard is checked against this worker's own scope (PORTWATCH_SCOPE_ALLOW,
    --exclude): a shard outside it goes to the dead-letter topic, unscanned.

    \b
    Examples:
      portwatch discover --kafka 127.0.0.1:9092
      portwatch discover --kafka kafka-0:9092,kafka-1:9092 --engine masscan --rate 50000
    """
    from portwatch.assembly import Assembly
    from portwatch.console import ensure_open_files
    from schemas.records import Shard
    from stream_processors.transports.discover_worker import DiscoveryWorker

    ensure_open_files()
    assembly = Assembly(settings_from(
        concurrency=concurrency, timeout=timeout, retries=retries,
        tarpit_threshold=tarpit_threshold, engine=engine, rate=rate,
        shard_attempts=shard_attempts, session_timeout=session_timeout, kafka=kafka,
        broker_wait=broker_wait, topic_prefix=topic_prefix))
    # The worker's scope first, like produce's and process's input: a bad --exclude or
    # --exclude-file is one line and exit 2 before the broker is waited for or changed.
    scope = assembly.scope(exclude, exclude_file=exclude_file, allow_large=True)
    topics = _topics(assembly)

    def on_shard(state: str, shard: Shard) -> None:
        say(f"shard {shard.shard_id} {state} ({len(shard.targets)} hosts, "
            f"{shard.port_count} ports)")

    options = assembly.worker_options(topics, group=group, max_shards=max_shards,
                                      idle_exit=idle_exit, scope=scope)
    engine_for = assembly.engine_factory(say=say, shard_deadline=assembly.shard_deadline())
    worker = DiscoveryWorker(options, engine_for, on_shard)
    previous = {sig: signal.signal(sig, lambda *_: worker.stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    say(f"discover worker running (group {options.group_id}); SIGTERM or Ctrl-C stops it")
    try:
        stats = worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say(f"discover worker done: {stats.shards} shards, {stats.open_ports} open ports, "
        f"{stats.retried} retries, {stats.failed} failed, {stats.poison} dead letters, "
        f"{stats.out_of_scope} out of scope"
        + (f", {stats.commit_failures} commits failed (those shards will be scanned again)"
           if stats.commit_failures else ""))
    if stats.gave_up:  # stopped on its own with a shard unfinished: not a clean exit
        fail(f"discover: {stats.gave_up}", EXIT_RUNTIME)


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
              help="Seconds to wait for a service to speak first (default 2.0); a silent "
              "port that stays open is listened to 3x as long in all.")
@click.option("--batch-seconds", type=float, default=None,
              help="Longest a finding waits before it is written (default 1.0).")
@click.option("--sink-buffer", type=int, default=None,
              help="Messages per store insert (default 500; each holds up to 500 findings "
                   "of one host).")
@click.option("--commit-interval", type=float, default=None,
              help="Seconds between offset commits (default 1.0).")
@click.option("--session-timeout", type=float, default=None,
              help="Seconds before a dead worker's partitions move (default 10).")
@click.option("--change-settle", type=float, default=None, metavar="SECONDS",
              help="The sink computes a host's changes once its findings are stored and no "
                   "record of it arrived for this long (default 5; another shard of it may "
                   "follow); a host missing findings is released after 600 s whatever this "
                   "says.")
@click.option("--serve", "serve_at", default="", metavar="[HOST:]PORT",
              help="Also serve the web reports (as `portwatch serve`) from this process, "
                   "over the store its sink writes: how a chdb store is read while its "
                   "sink runs. Loopback unless a --token is given.")
@click.option("--token", envvar="PORTWATCH_WEB_TOKEN", default="", metavar="TOKEN",
              show_envvar=True, help="Token the --serve web reports require off loopback.")
@click.option("--alerts", "alerts_file", default=None, metavar="FILE",
              type=click.Path(dir_okay=False), callback=refuse_empty(ALERTS_EMPTY),
              help="Alert rules and channels (alerts.yaml, PORTWATCH_ALERTS): an alerts agent "
                   "on the changes topic delivers each change once, whatever the workers. "
                   "Its first start begins at the topic's end: changes already there are "
                   "not alerted.")
@beside_serve_options
@click.option("--health", "health_at", default="", metavar="[HOST:]PORT",
              help="Answer GET /healthz with 200 on this address while the workers' event "
                   "loop runs: what Kubernetes probes check (the Helm chart sets "
                   "0.0.0.0:6066). Host 127.0.0.1 unless given.")
@KAFKA_OPTION
@BROKER_WAIT_OPTION
@PREFIX_OPTION
def process(role: str, store: str | None, identify_concurrency: int | None,
            banner_wait: float | None, batch_seconds: float | None, sink_buffer: int | None,
            commit_interval: float | None, session_timeout: float | None,
            change_settle: float | None, serve_at: str,
            token: str, alerts_file: str | None, allowed_host: tuple[str, ...],
            cookie_secure: bool, trusted_proxy: tuple[str, ...], health_at: str,
            kafka: str | None, broker_wait: int | None, topic_prefix: str | None) -> None:
    """Run the stream processors (Faust): open ports -> findings -> store.

    Any number of `--role stages` workers may run; exactly one process runs the
    sink of a chdb store (it owns the store while it runs: `portwatch report` on
    that store says so). To read the reports while it runs, start the sink with
    `--serve 8765` (web pages and JSON API from the same process), or use a
    ClickHouse server store.

    \b
    Examples:
      portwatch process --kafka 127.0.0.1:9092 --serve 8765
      portwatch process --role stages --kafka kafka-0:9092
      portwatch process --role sink --store clickhouse://writer@ch.example:8123/portwatch
    """
    from portwatch.assembly import Assembly
    from portwatch.console import ensure_open_files
    from portwatch.web.cli import (
        BindError,
        check_bind,
        parse_listen,
        parse_proxy_options,
    )
    from stream_processors.collector import settle_worker
    from stream_processors.sink import StoreSink
    from stream_processors.transports.faust_agents import make_stage
    from stream_processors.transports.faust_app import build_sink_app, build_stages_app

    ensure_open_files()
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
    health: tuple[str, int] | None = None
    if health_at:
        try:
            health = parse_listen(health_at)
        except ValueError as exc:
            fail(f"--health: {exc}", EXIT_USAGE)
    try:
        allowed, proxies = parse_proxy_options(allowed_host, trusted_proxy)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    assembly = Assembly(settings_from(
        identify_concurrency=identify_concurrency, banner_wait=banner_wait,
        batch_seconds=batch_seconds, store=store, sink_buffer=sink_buffer,
        commit_interval=commit_interval, session_timeout=session_timeout, kafka=kafka,
        broker_wait=broker_wait, topic_prefix=topic_prefix, alerts=alerts_file,
        change_settle=change_settle))
    has_sink = role in ("all", "sink")
    if has_sink:
        assembly.store_location()  # a bad URL is refused before connecting to Kafka
    alerts = assembly.alert_config()  # a bad rules file: one line, before connecting
    if alerts is not None and not has_sink:
        fail("--alerts needs the store the sink owns: run it with --role all or sink",
             EXIT_USAGE)
    # The records on the topics name the addresses to probe: whoever can write to them
    # must not aim this worker anywhere its scope (PORTWATCH_SCOPE_ALLOW) does not allow
    scope = assembly.scope(allow_large=True)
    topics = _topics(assembly)
    options = assembly.pipeline_options(topics)
    db = assembly.open_store() if has_sink else None
    apps: list[Any] = []
    sink: StoreSink | None = None
    report: dict[str, Any] = {"role": role}
    if role in ("all", "stages"):
        # The very context the embedded scan builds: same settings, same nmap fallback
        # and TLS enumeration, so both shapes find the same things.
        stages_app, stage_stats = build_stages_app(options, make_stage(assembly.stage_context()),
                                                   scope=scope)
        apps.append(stages_app)
        report["stages"] = stage_stats
    if db is not None:
        sink = StoreSink(db)
        sink_app, sink_agent_stats = build_sink_app(options, sink,
                                                    changes=assembly.change_stage(db, scope))
        apps.append(sink_app)
        report["sink"] = sink.stats
        report["sink_agent"] = sink_agent_stats
    if alerts is not None and db is not None:
        from portwatch.alerts.dispatcher import AlertDispatcher
        from stream_processors.transports.faust_alerts import build_alerts_app

        _alerts_from_now(assembly, options)
        alerts_app, alert_stats = build_alerts_app(options, AlertDispatcher(db, alerts))
        apps.append(alerts_app)
        report["alerts"] = alert_stats
    web: tuple[Any, str, int] | None = None
    if listen is not None and db is not None:
        from portwatch.web.cli import web_app

        web = (web_app(db, listen[0], token, allowed_hosts=allowed,
                       cookie_secure=cookie_secure, trusted_proxies=proxies), *listen)
    # Start-up is done: its objects frozen out of the collector's walks, full collections
    # rarer (the records in flight are many and acyclic: stream_processors/collector.py).
    settle_worker()
    try:
        held = db if db is not None and db.location.scheme == "chdb" else None
        asyncio.run(_serve(apps, sink, role, web, token, held, health))
    finally:
        if db is not None:
            db.close()
        # One JSON line on stdout with what this worker did (benchmarks and logs read it).
        click.echo(json.dumps({k: v if isinstance(v, str) else dataclasses.asdict(v)
                               for k, v in report.items()}))
    if sink is not None:
        s = sink.stats
        say(f"sink stopped: {s.findings} findings and {s.host_scans} host scans stored in "
            f"{s.batches} batches")


def _alerts_from_now(assembly: Any, options: Any) -> None:
    """The alerts group's first start reads the changes topic from its end
    (``start_group_at_end``): turning alerts on for a pipeline that ran without them
    does not send the changes the topic still keeps as one flood of old news. A group
    with positions goes on from them, so what came while it was down is alerted."""
    from producers.kafka_io import start_group_at_end

    group, topic = options.app_id("alerts"), options.topics.changes.name
    try:
        passed = start_group_at_end(assembly.broker().bootstrap, group, topic)
    except Exception as exc:  # noqa: BLE001 - kafka-python raises many types
        fail(f"alerts: cannot read where {group} stands on {topic}: {one_line(exc)}",
             EXIT_RUNTIME)
    if passed is not None:
        say(f"alerts: {group} starts at the end of {topic}: the {passed:,} change "
            "record(s) already there are not alerted (`portwatch report changes` lists "
            "them); from now on every change is")


async def _serve(apps: list[Any], sink: Any, role: str,
                 web: tuple[Any, str, int] | None = None, token: str = "",
                 held: Any = None, health: tuple[str, int] | None = None) -> None:
    from portwatch.store_holder import advertise
    from portwatch.web import server as web_server
    from portwatch.web.cli import listening_line
    from stream_processors.transports.faust_app import run_apps

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    running: tuple[Any, asyncio.Task[None]] | None = None

    def on_signal() -> None:
        stop.set()
        if sink is not None:
            sink.stop()
        if running is not None:
            running[0].should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    advert = contextlib.ExitStack()
    probes: asyncio.Server | None = None
    try:
        if health is not None:
            from stream_processors.transports.health import start_health

            try:
                probes = await start_health(*health)
            except OSError as exc:
                fail(f"--health: cannot listen on {health[0]}:{health[1]}: "
                     f"{exc.strerror or exc}", EXIT_RUNTIME)
            say(f"health: GET http://{health[0]}:{health[1]}/healthz")
        if web is not None:
            try:
                running = await web_server.start_beside(*web)
            except web_server.ListenError as exc:
                fail(f"--serve: {exc}", EXIT_RUNTIME)
            say(listening_line(web[1], web[2], token))
            if held is not None:  # `report` on this chdb store asks this process meanwhile
                advert.enter_context(advertise(held, web[1], web[2], token,
                                               "process --serve"))
        say(f"stream processors running (role {role}); SIGTERM or Ctrl-C stops them")
        sys.stderr.flush()
        try:
            await run_apps(apps, stop)
        except RuntimeError as exc:
            fail(str(exc), EXIT_RUNTIME)
    finally:
        advert.close()
        if probes is not None:
            probes.close()
        if running is not None:
            await web_server.stop(*running)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


__all__ = ["discover", "process", "produce"]
