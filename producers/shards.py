"""Shard planner: cut the host x port space into shards, walked in a seeded order.

Owns: turning (targets, port ranges, protocol) into ``Shard`` records of a
configurable size, in a deterministic pseudo-random order (naabu's seeded walk,
STYLE.md): the same seed gives the same shards in the same order, a checkpoint
``(seed, index)`` resumes an interrupted scan at the first shard not done, and
consecutive shards hit different hosts and port blocks so that no host sees a
burst of consecutive ports. Must not send packets or talk to Kafka.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.records import PortRange, Proto, Shard, Target

DEFAULT_PORTS_PER_SHARD = 65_535  # one whole host sweep per shard by default
DEFAULT_HOSTS_PER_SHARD = 16


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
        order = list(self.targets)
        random.Random(self.seed ^ 0x5EED).shuffle(order)  # spread each /24 across shards
        blocks = split_ports(self.ports, self.ports_per_shard)
        cells = self._cells()
        for index in range(start, len(cells)):
            h, p = cells[index]
            group = tuple(order[h * self.hosts_per_shard:(h + 1) * self.hosts_per_shard])
            yield Shard(scan_id=self.scan_id, shard_id=f"{self.scan_id}:{self.proto.value}:{index}",
                        targets=group, ports=blocks[p], proto=self.proto, seed=self.seed,
                        index=index, total=len(cells))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """(seed, index): everything before ``next_index`` is done."""

    scan_id: str
    seed: int
    next_index: int

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps({"scan_id": self.scan_id, "seed": self.seed,
                                   "next_index": self.next_index}))
        tmp.replace(path)  # atomic: a crash never leaves half a checkpoint

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint | None:
        try:
            data = json.loads(Path(path).read_text())
            return cls(str(data["scan_id"]), int(data["seed"]), int(data["next_index"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"checkpoint {path} is corrupt: {exc}") from None
