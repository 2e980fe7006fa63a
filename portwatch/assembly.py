"""The composition root: validated ``Settings`` in, portwatch's components out.

Owns: every place a component is built from the settings: the store location and
the store, the scope, the port specs, the scan plan and its checkpoint, the
discovery engines (``probers.discovery.engines``), the stage context, the embedded
transport, the Kafka topics and the distributed workers' and apps' options. The CLI
commands (embedded ``scan``, ``produce``, ``discover``, ``process``, ``report``,
``serve``) all build from here, so a knob reaches its component the same way in
both shapes, and each component receives only the narrow options it needs.

Errors are the components' own typed errors (SettingsError, TargetError,
EngineUnavailable, StoreError and its subclasses, CheckpointError); the CLI maps them
to one line and an exit code. Nothing here touches the network except what the
built components do when they are run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portwatch.settings import Settings
from probers.discovery.engines import (
    ConnectOptions,
    EngineOptions,
    MasscanOptions,
    choose_engine,
)
from probers.discovery.masscan_run import DEFAULT_NMAP_PAYLOADS
from probers.discovery.udp import UdpOptions
from producers.shards import Checkpoint, CheckpointError, ScanPlan, is_scan_id, new_scan_id
from producers.targets import (
    Scope,
    TargetError,
    TargetSpec,
    file_paths,
    label_text,
    parse_ports,
    read_inventory,
    scope_allow_items,
    top_count,
)
from producers.targets import resolve_targets as _resolve_targets
from schemas.filters import fold_controls
from schemas.records import PortRange, Proto, Shard, Target
from schemas.topics import TopicSet, topic_names

if TYPE_CHECKING:
    from probers.discovery.base import DiscoveryEngine
    from stream_processors.change_hold import ChangeStage
    from stream_processors.stages import EngineFactory, StageContext
    from stream_processors.store import Store, StoreLocation
    from stream_processors.transports.discover_worker import WorkerOptions
    from stream_processors.transports.embedded import EmbeddedRunner
    from stream_processors.transports.faust_app import PipelineOptions

# Part of a discover worker's max.poll.interval a shard may use (the rest: publishing
# its results and committing before Kafka would evict the worker).
SHARD_SHARE_OF_POLL_INTERVAL = 0.8


@dataclass(frozen=True)
class ScanInput:
    """What to scan, resolved and checked before anything is sent."""

    targets: tuple[Target, ...]
    tcp_ports: tuple[PortRange, ...]
    udp_ports: tuple[PortRange, ...]
    # The fence the targets were checked against: the run's other connections (the
    # change recovery's re-probes of hosts an earlier run left uncompared) keep to it
    scope: Scope | None = None


@dataclass(frozen=True)
class BrokerOptions:
    """Where the Kafka broker is, and how long a command waits at start for it to answer
    (seconds; 0: fail at once)."""

    bootstrap: str
    wait: int
    replication: int = 1  # of the topics a command creates (existing ones are left alone)


@dataclass
class Assembly:
    """Builds components from one validated ``Settings``."""

    settings: Settings
    notes: set[str] = field(default_factory=set)  # engine fallbacks already said once

    # -- store ----------------------------------------------------------------------------

    def store_location(self) -> StoreLocation:
        """The store URL parsed and checked once (StoreUrlError): before a scan sends
        anything, bad input writes nothing."""
        from stream_processors.store import StoreLocation

        return StoreLocation.from_url(self.settings.store)

    def open_store(self, *, create: bool = True) -> Store:
        """The store; ``create=False`` only opens one that exists (StoreMissing). With the
        prevalence prior on, its rows are (re)loaded from nmap-services when they changed."""
        from stream_processors.store import Store

        store = Store(self.store_location(), create=create)
        store.default_parameters.update(self.store_parameters())
        if self.settings.prevalence_prior:
            self.load_prevalence_prior(store)
        return store

    def store_parameters(self) -> dict[str, int]:
        """Reader settings the report SQL binds: ``no_prior`` turns the Internet prior off."""
        return {} if self.settings.prevalence_prior else {"no_prior": 1}

    def load_prevalence_prior(self, store: Store) -> None:
        """The Internet prior into the store (stream_processors/prevalence_prior.py).
        Without nmap-services, or on a store this user may not write (a readonly server
        user), the reports count the estate alone and the List says "estate"."""
        import logging

        from probers.nmapdata import NmapDataUnavailable
        from stream_processors.prevalence_prior import parse_prior, prior_source

        try:
            source, raw = prior_source(self.settings.nmap_data or None)
            if store.internet_prior_source() != source:  # parse only a changed file
                store.load_internet_prior(source, parse_prior(raw))
        except NmapDataUnavailable:
            return
        except Exception as exc:  # noqa: BLE001 - a report must answer without the prior
            logging.getLogger(__name__).warning(
                "prevalence: the Internet prior could not be stored: %s", str(exc)[:300])

    # -- what to scan ---------------------------------------------------------------------

    def scope(self, exclude: Sequence[str] = (), *,
              exclude_file: str | Sequence[str] | None = None,
              allow_large: bool = False) -> Scope:
        allow = scope_allow_items(self.settings.scope_allow)  # ' , ' is refused
        return Scope.build(exclude, exclude_file=exclude_file, allow=allow,
                           allow_large=allow_large)

    def udp_ports(self) -> tuple[PortRange, ...]:
        """``top1000`` / ``topN`` (the user's nmap-services), ``none``, or a port spec."""
        from probers.discovery.base import EngineUnavailable
        from probers.discovery.udp import udp_top_ports

        text = self.settings.udp.strip().lower()
        if text in ("none", "no", "off", ""):
            return ()
        if text.startswith("top"):
            shown = self.settings.udp[:40] + ("..." if len(self.settings.udp) > 40 else "")
            try:
                count = top_count(text, bare=1000)
            except TargetError as exc:
                raise TargetError(f"bad --udp {shown!r}: {exc} (or use none or a port "
                                  "spec)") from None
            try:
                ports = sorted(udp_top_ports(count, self.settings.nmap_data or None))
            except EngineUnavailable as exc:
                raise TargetError(str(exc)) from None
            if not ports:  # an empty nmap-services would silently scan no UDP port
                raise TargetError(f"--udp {shown}: nmap-services lists no UDP port (give "
                                  "the UDP ports explicitly, or --udp none)")
            return tuple(PortRange(p, p) for p in ports)
        try:
            return parse_ports(text)
        except TargetError as exc:  # name the flag: a bad --udp read as a TCP spec error
            raise TargetError(f"--udp: {exc} (or top1000, topN, none)") from None

    def scan_input(self, targets: Sequence[str], *, organization: str = "", asset: str = "",
                   inventory: str | Sequence[str] | None = None,
                   exclude: Sequence[str] = (),
                   exclude_file: str | Sequence[str] | None = None, allow_large: bool = False,
                   only_organization: str = "") -> ScanInput:
        """Targets (arguments, "-" for stdin, inventory), scope and port specs resolved;
        TargetError (one line) before anything is sent. Shared by scan, produce and the
        scheduled scans of watch. ``only_organization``: keep that organization's
        targets only (any case; one organization of a shared inventory)."""
        # as an inventory's labels are
        organization, asset = label_text(organization, "--org"), label_text(asset, "--asset")
        specs = [TargetSpec(t, organization, asset) for t in _expand_stdin(targets)]
        if inventory and not specs and (organization or asset):
            # they label the arguments only: with an inventory alone they did nothing,
            # without a word (a review)
            raise TargetError("--org and --asset label the targets given as arguments; an "
                              "inventory's targets carry their own (its organization and "
                              "asset columns): set them there, or give --only-org to scan "
                              "one organization of it")
        for path in file_paths(inventory):  # each file's targets (one repeated: once)
            specs += read_inventory(path)
        if not specs:
            raise TargetError("no targets: give TARGET... or --inventory FILE (see --help)")
        if only_organization:
            # folded as labels are stored (a tab or a line break inside: one space)
            wanted = fold_controls(only_organization).lower()
            specs = [s for s in specs if s.organization.lower() == wanted]
            if not specs:
                raise TargetError(f"no target of organization {only_organization[:80]!r}")
        tcp_ports = parse_ports(self.settings.ports)
        udp_ports = self.udp_ports()
        scope = self.scope(exclude, exclude_file=exclude_file, allow_large=allow_large)
        return ScanInput(tuple(_resolve_targets(specs, scope)), tcp_ports, udp_ports, scope)

    def scan_plan(self, work: ScanInput, *, checkpoint_path: str | None = None,
                  scan_id: str | None = None, seed: int | None = None,
                  default_seed: int = 0) -> tuple[ScanPlan, Checkpoint]:
        """The plan of a scan and where it starts: a checkpoint file of the same work
        resumes it (its scan id and seed); one of other work, or a ``--seed`` /
        ``--scan-id`` that contradicts it, is refused (CheckpointError, one line)."""
        if scan_id is not None and not is_scan_id(scan_id):
            raise CheckpointError(f"bad --scan-id {scan_id[:40]!r}: letters, digits, '.', '_' "
                                  "and '-', at most 64, starting with a letter or digit")
        saved = Checkpoint.load(checkpoint_path) if checkpoint_path else None
        if checkpoint_path:
            Checkpoint.check_writable(checkpoint_path)
        if saved is not None:
            if seed is not None and seed != saved.seed:
                raise CheckpointError(f"checkpoint {checkpoint_path} is of seed {saved.seed}, "
                                      f"not --seed {seed}: drop --seed to resume it")
            if scan_id is not None and scan_id != saved.scan_id:
                raise CheckpointError(f"checkpoint {checkpoint_path} is of scan "
                                      f"{saved.scan_id}, not --scan-id {scan_id}")
            scan_id, seed = saved.scan_id, saved.seed
        s = self.settings
        plan = ScanPlan.build(scan_id or new_scan_id(), default_seed if seed is None else seed,
                              work.targets, work.tcp_ports, work.udp_ports,
                              hosts_per_shard=s.shard_hosts, ports_per_shard=s.shard_ports,
                              udp_shard=self.udp_shard(sum(len(r) for r in work.udp_ports)))
        return plan, plan.start(saved)

    def udp_shard(self, udp_ports: int) -> tuple[int, int]:
        """(hosts, ports) per UDP shard: at most shard_hosts x shard_ports, and few enough
        probes that the shard fits half its deadline at the UDP rate, every port retried
        (a shard over its deadline fails every attempt, and no rerun gets past it:
        `--udp 1-65535` on 5 hosts needed 655 s of a 600 s deadline)."""
        s = self.settings
        if s.udp_deadline <= 0 or udp_ports <= 0:
            return s.shard_hosts, s.shard_ports
        budget = max(1, int(s.udp_deadline * 0.5 * s.udp_rate / (1 + s.udp_retries)))
        ports = min(s.shard_ports, budget)
        hosts = min(s.shard_hosts, max(1, budget // min(udp_ports, ports)))
        return hosts, ports

    # -- discovery ------------------------------------------------------------------------

    def engine_options(self, *, shard_deadline: float | None = None) -> EngineOptions:
        s = self.settings
        payloads = (str(Path(s.nmap_data) / "nmap-payloads") if s.nmap_data
                    else DEFAULT_NMAP_PAYLOADS)
        udp_deadline = min(s.udp_deadline, shard_deadline or s.udp_deadline)
        return EngineOptions(
            connect=ConnectOptions(concurrency=s.concurrency, timeout=s.timeout,
                                   retries=s.retries, deadline=shard_deadline),
            masscan=MasscanOptions(rate=s.rate, passes=s.masscan_passes,
                                   binary=s.masscan_binary, adapter=s.masscan_adapter,
                                   adapter_ip=s.masscan_adapter_ip,
                                   router_mac=s.masscan_router_mac, nmap_payloads=payloads,
                                   confirm_timeout=s.timeout, deadline=shard_deadline),
            udp=UdpOptions(rate=s.udp_rate, timeout=s.udp_timeout, retries=s.udp_retries,
                           concurrency=s.udp_concurrency, deadline=udp_deadline,
                           nmap_data=s.nmap_data or None,
                           snmp_public_community=s.snmp_public_community),
        )

    def decide_engine(self, targets: Sequence[Target]) -> tuple[str, str]:
        """``--engine`` decided once for a scan's targets: (engine name, one-line note
        when ``auto`` fell back); EngineUnavailable when ``masscan`` cannot scan them."""
        engine, note = choose_engine(self.settings.engine, Proto.TCP, targets,
                                     self.engine_options())
        return engine.name, note

    def engine_factory(self, *, engine: str | None = None, say: Any = None,
                       shard_deadline: float | None = None) -> EngineFactory:
        """``shard -> engine`` for the transports: the UDP engine for UDP shards, else
        ``engine`` (default ``--engine``, decided per shard's targets); a fallback
        note is said once."""
        requested = engine or self.settings.engine
        options = self.engine_options(shard_deadline=shard_deadline)

        def build(shard: Shard) -> DiscoveryEngine:
            built, note = choose_engine(requested, shard.proto, shard.targets, options)
            if note and note not in self.notes:
                self.notes.add(note)
                if say is not None:
                    say(note)
            return built

        return build

    # -- stages ---------------------------------------------------------------------------

    def stage_context(self) -> StageContext:
        from stream_processors.stages import make_context

        s = self.settings
        return make_context(banner_wait=s.banner_wait, identify_budget=s.identify_budget,
                            per_host_connections=s.per_host_connections,
                            use_nmap_probes=s.nmap_probes, nmap_data=s.nmap_data or None,
                            tls_enumeration=s.tls, tls_timeout=s.tls_timeout,
                            tls_budget=s.tls_budget, tls_trust_store=s.tls_trust_store,
                            snmp_public_community=s.snmp_public_community)

    # -- the embedded transport -----------------------------------------------------------

    def embedded_runner(self, store: Store, *, engine: str | None = None,
                        say: Any = None, scope: Scope | None = None) -> EmbeddedRunner:
        """The one-process runner; its change recovery's re-probes stay inside ``scope``
        (the run's: when None, the settings' allow-list fence)."""
        from stream_processors.transports.embedded import EmbeddedRunner

        s = self.settings
        return EmbeddedRunner(store, self.engine_factory(engine=engine, say=say),
                              self.stage_context(),
                              identify_workers=s.identify_concurrency,
                              tarpit_threshold=s.tarpit_threshold, batch_size=s.batch_size,
                              batch_seconds=s.batch_seconds, shard_attempts=s.shard_attempts,
                              shard_ports=s.shard_ports, shard_hosts=s.shard_hosts,
                              scope=scope if scope is not None else self.scope(allow_large=True))

    # -- alerting -------------------------------------------------------------------------

    def alert_config(self) -> Any:
        """The alert rules and channels (``--alerts`` / PORTWATCH_ALERTS), validated now so
        a bad file is refused before anything scans (AlertConfigError: FILE:LINE, exit 2);
        None when no file is set."""
        if not self.settings.alerts:
            return None
        from portwatch.alerts.config import load_alerts

        return load_alerts(self.settings.alerts)

    # -- the distributed transport --------------------------------------------------------

    def broker(self) -> BrokerOptions:
        return BrokerOptions(self.settings.kafka, self.settings.broker_wait,
                             self.settings.topic_replication)

    def topics(self) -> TopicSet:
        prefix = self.settings.topic_prefix
        if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
            raise TargetError(f"bad topic prefix {prefix!r}: use letters, digits, '.', '_' "
                              "and '-'")
        return topic_names(prefix)

    def shard_deadline(self) -> float:
        """Seconds a discover worker's shard may take: under Kafka's max.poll.interval."""
        return self.settings.max_poll_interval * SHARD_SHARE_OF_POLL_INTERVAL

    def worker_options(self, topics: TopicSet, *, group: str | None = None,
                       max_shards: int = 0, idle_exit: float = 0.0,
                       exclude: Sequence[str] = (),
                       exclude_file: str | Sequence[str] | None = None,
                       scope: Scope | None = None) -> WorkerOptions:
        """A discover worker's options; ``scope``: one the command already built (and so
        checked before it contacted the broker), else built from ``exclude``."""
        from stream_processors.transports.discover_worker import WorkerOptions

        s = self.settings
        if scope is None:
            scope = self.scope(exclude, exclude_file=exclude_file, allow_large=True)
        return WorkerOptions(
            s.kafka, topics, group or f"{topics.prefix}portwatch-discover",
            tarpit_threshold=s.tarpit_threshold, shard_attempts=s.shard_attempts,
            max_shards=max_shards, idle_exit=idle_exit,
            session_timeout_ms=int(s.session_timeout * 1000),
            max_poll_interval_ms=int(s.max_poll_interval * 1000),
            scope=scope)

    def pipeline_options(self, topics: TopicSet) -> PipelineOptions:
        from stream_processors.transports.faust_app import PipelineOptions

        s = self.settings
        return PipelineOptions(s.kafka, topics, identify_concurrency=s.identify_concurrency,
                               sink_buffer=s.sink_buffer, sink_within=s.batch_seconds,
                               commit_interval=s.commit_interval,
                               session_timeout=s.session_timeout)

    def change_stage(self, store: Store, scope: Scope | None = None) -> ChangeStage:
        """The sink's change step (change_hold.ChangeStage) over ``store``; its closure
        re-probes go only to addresses inside ``scope``."""
        from stream_processors.change_hold import ChangeStage
        from stream_processors.history import ReprobeOptions

        return ChangeStage(store, settle=self.settings.change_settle,
                           reprobe=ReprobeOptions(scope=scope))


# Standard input is a file like any other: bounded before it is believed.
MAX_STDIN_TARGETS = 1_000_000
MAX_TARGET_TEXT = 1_000  # characters of one target line (a hostname is at most 253)


STDIN_LINE_CAP = 65_536  # characters of one line of standard input: a target and its comment


def _expand_stdin(targets: Sequence[str], stream: Any = None) -> list[str]:
    """The targets, "-" replaced by the lines of standard input (comments and blank lines
    skipped); TargetError past MAX_STDIN_TARGETS lines or on a line longer than a target."""
    out: list[str] = []
    for t in targets:
        if t != "-":
            out.append(t)
            continue
        source = stream if stream is not None else sys.stdin
        if source is None:  # started with standard input closed (`<&-`)
            raise TargetError("'-' reads targets from standard input, which is closed")
        # each line read at most STDIN_LINE_CAP characters at a time: reading it whole
        # first (`scan - < /dev/zero`) grew the process until memory ran out (a review)
        lines = iter(partial(source.readline, STDIN_LINE_CAP + 1), "")
        for number, raw in enumerate(lines, 1):
            if number > MAX_STDIN_TARGETS:
                raise TargetError(f"standard input: more than {MAX_STDIN_TARGETS:,} lines of "
                                  "targets; use an inventory file or several runs")
            if len(raw) > STDIN_LINE_CAP and not raw.endswith("\n"):
                raise TargetError(f"standard input line {number}: longer than "
                                  f"{STDIN_LINE_CAP:,} characters, not a target")
            try:  # bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
                raw.encode("utf-8")
            except UnicodeEncodeError:
                raise TargetError(f"standard input line {number} is not UTF-8 text (as "
                                  "inventories and exclude files must be)") from None
            if number == 1:
                raw = raw.removeprefix("\ufeff")  # a BOM, as inventories and exclude files
            line = raw.split("#", 1)[0].strip()
            if len(line) > MAX_TARGET_TEXT:
                raise TargetError(f"standard input line {number}: {len(line):,} characters is "
                                  "not a target")
            if line:
                out.append(line)
    return out


__all__ = ["Assembly", "BrokerOptions", "ScanInput", "Proto"]
