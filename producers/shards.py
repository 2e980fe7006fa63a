"""Shard planner: cut the host x port space into shards, walked in a seeded order.

Owns: turning (targets, port ranges, protocol) into ``Shard`` records of a
configurable size, in a deterministic pseudo-random order (naabu's seeded walk,
STYLE.md): the same seed gives the same shards in the same order, a checkpoint
``(seed, index)`` resumes an interrupted scan at the first shard not done, and
consecutive shards hit different hosts and port blocks so that no host sees a
burst of consecutive ports. Must not send packets or talk to Kafka.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from producers.textfiles import FileReadError, describe, read_bounded
from schemas.records import PortRange, Proto, Shard, Target

DEFAULT_PORTS_PER_SHARD = 65_535  # one whole host sweep per shard by default
DEFAULT_HOSTS_PER_SHARD = 16

# A checkpoint is a few hundred bytes: a file far larger is not one (and is not read whole)
MAX_CHECKPOINT_BYTES = 1 << 20


def new_scan_id() -> str:
    """A scan id that sorts by start time and never collides: ``20261201T214400-1a2b3c4d``."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


# What a scan id may be: what new_scan_id makes, and a name a user gives `produce
# --scan-id` (its documented example is "nightly-1"). The id is stored in every row and
# shown on the terminal, and shard ids append ":tcp:N" to it: no control characters, no
# ':', and bounded, so a checkpoint that says otherwise was not written by portwatch.
SCAN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_scan_id(text: object) -> bool:
    return isinstance(text, str) and SCAN_ID.fullmatch(text) is not None


def is_resumable_scan_id(text: object) -> bool:
    """What a checkpoint's scan id may be: any id an earlier portwatch wrote (``produce
    --scan-id`` took any text then: 'nightly:1' must still resume), but printable and
    bounded (no escape reaches the terminal, no megabyte id reaches every row)."""
    return isinstance(text, str) and 0 < len(text) <= 200 and text.isprintable()


def split_ports(ranges: Sequence[PortRange], size: int) -> list[tuple[PortRange, ...]]:
    """Cut port ranges into blocks of at most ``size`` ports (a block may span ranges)."""
    if size < 1:
        raise ValueError("shard port size must be at least 1")
    blocks: list[tuple[PortRange, ...]] = []
    current: list[PortRange] = []
    room = size
    for r in ranges:
        first = r.first
        while first <= r.last:
            take = min(room, r.last - first + 1)
            current.append(PortRange(first, first + take - 1))
            first += take
            room -= take
            if room == 0:
                blocks.append(tuple(current))
                current, room = [], size
    if current:
        blocks.append(tuple(current))
    return blocks


@dataclass(frozen=True, slots=True)
class ShardPlan:
    scan_id: str
    targets: tuple[Target, ...]
    ports: tuple[PortRange, ...]
    proto: Proto = Proto.TCP
    seed: int = 0
    hosts_per_shard: int = DEFAULT_HOSTS_PER_SHARD
    ports_per_shard: int = DEFAULT_PORTS_PER_SHARD

    def _cells(self) -> list[tuple[int, int]]:
        host_groups = -(-len(self.targets) // self.hosts_per_shard)
        port_blocks = len(split_ports(self.ports, self.ports_per_shard))
        cells = [(h, p) for p in range(port_blocks) for h in range(host_groups)]
        random.Random(self.seed).shuffle(cells)
        return cells

    def __len__(self) -> int:
        return len(self._cells())

    def shards(self, start: int = 0) -> Iterator[Shard]:
        """Shards in walk order from ``start`` (a checkpoint's index) to the end."""
        # In a canonical order first, then shuffled by the seed (spread each /24 across
        # shards): the same targets given in another order walk the same shards, so a
        # checkpoint (whose fingerprint sorts them) resumes the hosts it stopped at
        order = sorted(self.targets, key=lambda t: (t.ip, t.target, t.organization, t.asset))
        random.Random(self.seed ^ 0x5EED).shuffle(order)
        blocks = split_ports(self.ports, self.ports_per_shard)
        cells = self._cells()
        for index in range(start, len(cells)):
            h, p = cells[index]
            group = tuple(order[h * self.hosts_per_shard:(h + 1) * self.hosts_per_shard])
            yield Shard(scan_id=self.scan_id, shard_id=f"{self.scan_id}:{self.proto.value}:{index}",
                        targets=group, ports=blocks[p], proto=self.proto, seed=self.seed,
                        index=index, total=len(cells))


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """One scan: its TCP plan and its UDP plan (either may be absent), one seed.

    ``fingerprint`` names the work (targets, ports per protocol, shard sizes, seed), so
    a checkpoint of other work is never "resumed". Used alike by ``portwatch scan``
    (embedded) and ``portwatch produce`` (distributed): one plan, one checkpoint format.
    """

    scan_id: str
    seed: int
    plans: tuple[ShardPlan, ...]

    @classmethod
    def build(cls, scan_id: str, seed: int, targets: Sequence[Target],
              tcp_ports: Sequence[PortRange], udp_ports: Sequence[PortRange], *,
              hosts_per_shard: int = DEFAULT_HOSTS_PER_SHARD,
              ports_per_shard: int = DEFAULT_PORTS_PER_SHARD,
              udp_shard: tuple[int, int] | None = None) -> ScanPlan:
        """``udp_shard``: (hosts, ports) per UDP shard when they differ from TCP's (a UDP
        shard must fit its deadline at the UDP rate)."""
        udp_hosts, udp_ports_per = udp_shard or (hosts_per_shard, ports_per_shard)
        plans = [ShardPlan(scan_id, tuple(targets), tuple(ports), proto, seed,
                           *((udp_hosts, udp_ports_per) if proto is Proto.UDP
                             else (hosts_per_shard, ports_per_shard)))
                 for proto, ports in ((Proto.TCP, tcp_ports), (Proto.UDP, udp_ports)) if ports]
        return cls(scan_id, seed, tuple(plans))

    @property
    def fingerprint(self) -> str:
        work = {
            "walk": 2,  # the shard walk's version: 2 orders the targets before the shuffle
            "seed": self.seed,
            "targets": sorted([t.ip, t.target, t.organization, t.asset]
                              for t in (self.plans[0].targets if self.plans else ())),
            "plans": [[p.proto.value, [[r.first, r.last] for r in p.ports],
                       p.hosts_per_shard, p.ports_per_shard] for p in self.plans],
        }
        raw = json.dumps(work, separators=(",", ":"), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:24]

    @property
    def probe_count(self) -> int:
        return sum(sum(len(r) for r in p.ports) * len(p.targets) for p in self.plans)

    def start(self, checkpoint: Checkpoint | None) -> Checkpoint:
        """Where this plan starts: ``checkpoint`` when it is this plan's (CheckpointError
        when it was written for other work), else the beginning."""
        if checkpoint is None:
            return Checkpoint(self.scan_id, self.seed, self.fingerprint, {})
        where = f"checkpoint {checkpoint.path}" if checkpoint.path else "the checkpoint"
        if checkpoint.fingerprint != self.fingerprint or checkpoint.seed != self.seed:
            raise CheckpointError(
                f"{where} was written for other work (scan {checkpoint.scan_id}: other "
                "targets, ports, UDP ports, shard sizes or seed): run the same command as "
                "before to resume it, or remove it")
        # An index past the plan's shards would "resume" a scan as done without scanning
        # anything (and the finished scan then removes the file): not one portwatch wrote.
        sizes = {p.proto.value: len(p) for p in self.plans}
        if any(index > sizes.get(proto, 0) for proto, index in checkpoint.next_index.items()):
            raise CheckpointError(f"{where} is not a portwatch checkpoint: a shard index is "
                                  "past the plan's shards; move it away to start over")
        return checkpoint


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, or was written for other work (one line)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Progress of one ``ScanPlan``: per protocol, every shard before ``next_index`` is
    done. Saved atomically after each finished (embedded) or acknowledged
    (distributed) shard; the same format for ``scan`` and ``produce``."""

    scan_id: str
    seed: int
    fingerprint: str
    next_index: Mapping[str, int]
    path: str = field(default="", compare=False)  # where it was read from, for messages

    def index(self, proto: Proto) -> int:
        return int(self.next_index.get(proto.value, 0))

    def advanced(self, proto: Proto, next_index: int) -> Checkpoint:
        return replace(self, next_index={**self.next_index, proto.value: next_index})

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(f"{path}.tmp")
        try:
            tmp.write_text(json.dumps({"scan_id": self.scan_id, "seed": self.seed,
                                       "fingerprint": self.fingerprint,
                                       "next_index": dict(self.next_index)}))
            tmp.replace(path)  # atomic: a crash never leaves half a checkpoint
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {os.fspath(path)}: "
                                  f"{exc.strerror or exc}") from None

    @staticmethod
    def check_writable(path: str | os.PathLike[str]) -> None:
        """CheckpointError (one line) when a checkpoint could not be saved at ``path``:
        asked before the scan starts, not after its first shard."""
        folder = Path(path).parent
        if not folder.is_dir():
            raise CheckpointError(f"cannot write checkpoint {os.fspath(path)}: no directory "
                                  f"{os.fspath(folder)}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CheckpointError(f"cannot write checkpoint {os.fspath(path)}: "
                                  f"{os.fspath(folder)} is not writable")
        for written in (Path(path), Path(f"{os.fspath(path)}.tmp")):  # (save writes both)
            if written.exists() and not written.is_file():
                raise CheckpointError(f"cannot write checkpoint {os.fspath(path)}: "
                                      f"{os.fspath(written)} is not a file")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint | None:
        """The checkpoint at ``path``, None when there is none; CheckpointError (one
        line) when the file is not a checkpoint."""
        try:
            if not os.path.exists(path):  # a dangling link too: no checkpoint yet
                return None
            # bounded: `--checkpoint /dev/zero` read until memory ran out (a review)
            data = json.loads(read_bounded(path, MAX_CHECKPOINT_BYTES).decode("utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("next_index"), dict):
                raise TypeError("not a checkpoint object")
            indexes = {str(k): v for k, v in data["next_index"].items() if k in ("tcp", "udp")}
            # int() read 1.7 as 1 and 1e30 as a huge index: an index is an integer as
            # written, a seed too (True is an int to Python, not to a checkpoint)
            if any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                   for v in indexes.values()) \
                    or not isinstance(data["seed"], int) or isinstance(data["seed"], bool):
                raise ValueError("index or seed not a non-negative integer")
            if not is_resumable_scan_id(data["scan_id"]):
                raise ValueError("not a scan id")
            return cls(str(data["scan_id"]), data["seed"], str(data["fingerprint"]),
                       indexes, os.fspath(path))
        except FileReadError as exc:
            if exc.kind == "directory":
                raise CheckpointError(f"checkpoint {os.fspath(path)} is a directory") from None
            raise CheckpointError(describe(exc, f"checkpoint {os.fspath(path)}")) from None
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError,
                UnicodeDecodeError, RecursionError):
            raise CheckpointError(f"checkpoint {os.fspath(path)} is not a portwatch checkpoint: "
                                  "give another --checkpoint path, or move this file away to "
                                  "start over") from None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {os.fspath(path)}: "
                                  f"{exc.strerror or exc}") from None
