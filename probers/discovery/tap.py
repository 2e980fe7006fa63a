"""Answer accounting for raw TCP sweeps: our own packet socket beside masscan.

Owns: ``AnswerTap``, a Linux ``AF_PACKET`` socket with a kernel BPF filter that
sees every TCP answer (SYN-ACK = open, RST = closed) the targets send back to a
masscan run's ``--adapter-ip``/``--source-port``, and the per-host record of which
ports answered. It sends nothing.

Must not touch: masscan's process (``masscan.py`` runs it), Kafka, storage.

Why (measured on masscan 1.3.2, bench/discovery's veth host, 2 cores): masscan's
own capture is a small libpcap ring read by a thread that also prints and RSTs
every answer; at 20k-100k packets/s it lost 12-55 % of the RSTs a host with every
port closed sends back, and a blocked stdout pipe makes it lose nearly all. Its
open-port list survives only because a target retransmits an unanswered SYN-ACK
1 s later. Knowing which ports *answered* is what lets a sweep retry only the
silent ones, as nmap does, instead of re-sending the whole range: a directly
attached host that RSTs every closed port then needs one pass, and a firewalled
host (everything silent) gets the full second pass it needs. So portwatch reads
the answers itself: a memory-mapped TPACKET_V3 ring of 4-64 MiB (``ring_size``),
a BPF program that drops everything but IPv4 TCP to (adapter IP, source port) in
the kernel, drained from the event loop in batches. A spoofed or stray answer can
only mark a port as answered (it is then not retried) or report an open port that
the connect confirm pass rejects; nothing is trusted as a finding without that confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import mmap
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from schemas.records import PortRange

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_USER = 1
BLOCK_SIZE = 1 << 20
DEFAULT_RING = 64 << 20  # 64 blocks of 1 MiB: ~600,000 answers of headroom
MIN_RING = 4 << 20
FRAME_BYTES = 112  # one answer in a V3 block: 48-byte header + 54-byte frame, aligned
RETIRE_MS = 5  # a part-filled block is handed over after this long
BLOCKS_PER_CALL = 8  # blocks read per event-loop callback: the loop stays responsive
SNAPLEN = 96  # Ethernet + IP (with options) + the TCP fields we read
CLOSED, OPEN = 1, 2
_SYN_ACK = 0x12
_RST = 0x04
# tpacket_block_desc: block_status @8, num_pkts @12, offset_to_first_pkt @16
_BLOCK = struct.Struct("<8xIII")
# tpacket3_hdr: tp_next_offset @0, tp_snaplen @12, tp_mac @24
_FRAME = struct.Struct("<I8xI8xH")
# From the Ethernet header on, for a 20-byte IP header: version/IHL @14,
# source address @26, TCP source port @34, TCP flags @47.
_PACKET = struct.Struct("!14xB11x4s4xH11xB")
_MIN_ANSWER = _PACKET.size  # Ethernet + 20-byte IP + TCP up to the flags


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def bpf_program(local_ip: str, local_port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept unfragmented IPv4 TCP to ``local_ip:local_port``, drop the rest.

    Offsets are for an Ethernet frame (``AF_PACKET``/``SOCK_RAW``); the TCP header
    is found through the IP header length (``ldxb 4*([14]&0xf)``).
    """
    ip = int(ipaddress.IPv4Address(local_ip))
    if not 1 <= local_port <= 65535:
        raise ValueError(f"source port must be 1..65535, got {local_port}")
    drop = 12
    prog = [
        (0x28, 0, 0, 12),  # 0  ldh [12]            ethertype
        (0x15, 0, 0, ETH_P_IP),  # 1  jeq IPv4
        (0x20, 0, 0, 30),  # 2  ld [30]             IP destination
        (0x15, 0, 0, ip),  # 3  jeq local_ip
        (0x30, 0, 0, 23),  # 4  ldb [23]            IP protocol
        (0x15, 0, 0, 6),  # 5  jeq TCP
        (0x28, 0, 0, 20),  # 6  ldh [20]            flags + fragment offset
        (0x45, 0, 0, 0x1FFF),  # 7  jset fragment -> drop
        (0xB1, 0, 0, 14),  # 8  ldxb 4*([14]&0xf)   IP header length
        (0x48, 0, 0, 16),  # 9  ldh [x+16]          TCP destination port
        (0x15, 0, 0, local_port),  # 10 jeq local_port
        (0x06, 0, 0, SNAPLEN),  # 11 ret accept (first SNAPLEN bytes)
        (0x06, 0, 0, 0),  # 12 ret drop
    ]
    out = []
    for i, (code, _jt, _jf, k) in enumerate(prog):
        if code == 0x15:  # jeq: fall through on match, else drop
            out.append((code, 0, drop - i - 1, k))
        elif code == 0x45:  # jset: drop on match, else fall through
            out.append((code, drop - i - 1, 0, k))
        else:
            out.append((code, 0, 0, k))
    return out


def ring_size(answers: int) -> int:
    """Ring bytes for a run expecting ``answers``: room for all of them, 4-64 MiB.

    A ring is allocated and freed per shard (64 MiB costs ~15-150 ms to set up and
    ~25 ms to free); drained as answers arrive, it only needs to absorb a burst.
    """
    return max(MIN_RING, min(DEFAULT_RING, answers * FRAME_BYTES))


def attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    insns = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    fprog = _SockFprog(len(program), ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


class AnswerTap:
    """Which (host, port) pairs answered a raw TCP sweep, and which were SYN-ACKs.

    ``open()`` before masscan starts (raises ``OSError`` when a packet socket cannot
    be opened: not root, no such adapter); ``attach(loop)`` drains it from the event
    loop; ``close()`` always. ``on_open(ip, port)`` is called for each first
    SYN-ACK of a port. Answers from addresses outside ``hosts`` are ignored.

    The socket has a ``TPACKET_V3`` ring mapped into this process: the kernel
    writes answers into 1 MiB blocks and hands a block over when it is full or
    ``RETIRE_MS`` old, so a million answers cost a few hundred wake-ups, not a
    million ``recv`` calls (a 16-host sweep is ~1 M RSTs).
    """

    def __init__(
        self,
        adapter: str,
        local_ip: str,
        local_port: int,
        hosts: Iterable[str],
        *,
        ring_bytes: int = DEFAULT_RING,
        on_open: Callable[[str, int], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.local_ip = local_ip
        self.local_port = local_port
        self.blocks = max(2, ring_bytes // BLOCK_SIZE)
        self.on_open = on_open
        self._state: dict[bytes, bytearray] = {}
        self._names: dict[bytes, str] = {}
        for ip in hosts:
            key = ipaddress.IPv4Address(ip).packed
            self._state[key] = bytearray(65536)
            self._names[key] = ip
        self.answered = 0  # distinct (host, port) pairs that answered
        self._goal = 0  # ``answered`` at which ``_goal_reached`` is set (see expect())
        self._goal_reached: asyncio.Event | None = None
        self.packets = 0  # answers read, duplicates and strays included
        self.last_answer_at = 0.0
        self._sock: socket.socket | None = None
        self._ring: mmap.mmap | None = None
        self._next_block = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing yet
        ring: mmap.mmap | None = None
        try:
            attach_filter(sock, bpf_program(self.local_ip, self.local_port))
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame = 2048  # V3 packs frames of any size into blocks; the kernel checks this
            req = struct.pack(
                "<7I", BLOCK_SIZE, self.blocks, frame, BLOCK_SIZE // frame * self.blocks,
                RETIRE_MS, 0, 0,
            )
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            ring = mmap.mmap(sock.fileno(), BLOCK_SIZE * self.blocks, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((self.adapter, ETH_P_IP))  # filtered from the first packet on
            sock.setblocking(False)
        except BaseException:
            if ring is not None:
                ring.close()
            sock.close()
            raise
        self._sock, self._ring = sock, ring

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is None:
            raise RuntimeError("AnswerTap.attach() before open()")
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self.drain)

    def close(self, *, background: bool = False) -> None:
        """Stop reading and release the socket and ring. Releasing a packet socket
        waits for an RCU grace period (~25 ms); ``background=True`` does it in a
        daemon thread so a short scan does not wait for it."""
        sock, ring = self._sock, self._ring
        if sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        self._sock = self._ring = None
        if background:
            threading.Thread(target=_release, args=(sock, ring), daemon=True).start()
        else:
            _release(sock, ring)

    def __enter__(self) -> AnswerTap:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drain(self) -> int:
        """Read the blocks the kernel has handed over (at most ``BLOCKS_PER_CALL``);
        return how many answers they held."""
        ring, state = self._ring, self._state
        if ring is None:
            return 0
        n = 0
        for _ in range(BLOCKS_PER_CALL):
            base = self._next_block * BLOCK_SIZE
            status, count, off = _BLOCK.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                break
            off += base
            try:
                for _ in range(count):
                    step, snaplen, mac = _FRAME.unpack_from(ring, off)
                    if snaplen >= _MIN_ANSWER:
                        self._record(ring, off + mac, snaplen, state)
                    off += step
            finally:  # whatever a frame held, the block goes back to the kernel
                n += count
                ring[base + 8 : base + 12] = b"\0\0\0\0"  # TP_STATUS_KERNEL
                self._next_block = (self._next_block + 1) % self.blocks
        if n:
            self.packets += n
            self.last_answer_at = time.monotonic()
        return n

    def _record(
        self, ring: mmap.mmap, at: int, snaplen: int, state: dict[bytes, bytearray]
    ) -> None:
        vihl, src, port, flags = _PACKET.unpack_from(ring, at)
        if vihl != 0x45:  # IP options (the TCP header is further on) or junk
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20 or snaplen < 14 + ihl + 14:
                return
            t = at + 14 + ihl
            port = ring[t] << 8 | ring[t + 1]
            flags = ring[t + 13]
        ports = state.get(src)
        if ports is None:
            return
        if flags & _RST:
            kind = CLOSED
        elif flags & _SYN_ACK == _SYN_ACK:
            kind = OPEN
        else:
            return
        if self._set(ports, port, kind) and self.on_open is not None:
            self.on_open(self._names[src], port)

    def _set(self, ports: bytearray, port: int, kind: int) -> bool:
        """Record an answer; True when it is the port's first SYN-ACK."""
        was = ports[port]
        if was >= kind:
            return False
        ports[port] = kind
        if not was:
            self.answered += 1
            if self.answered == self._goal and self._goal_reached is not None:
                self._goal_reached.set()
        return kind == OPEN

    def mark(self, ip: str, port: int, kind: int = OPEN) -> None:
        """Record an answer seen elsewhere (masscan's own output)."""
        ports = self._state.get(ipaddress.IPv4Address(ip).packed)
        if ports is not None:
            self._set(ports, port, kind)

    def expect(self, answers: int) -> asyncio.Event:
        """An event set once ``answers`` more (host, port) pairs have answered: the
        moment a masscan run has nothing left to send or wait for."""
        self._goal = self.answered + answers
        self._goal_reached = asyncio.Event()
        if answers <= 0:
            self._goal_reached.set()
        return self._goal_reached

    def state(self, ip: str, port: int) -> int:
        ports = self._state.get(ipaddress.IPv4Address(ip).packed)
        return ports[port] if ports is not None else 0

    def silent(self, ip: str, ranges: Iterable[PortRange]) -> list[int]:
        """Ports of ``ranges`` that ``ip`` has not answered (yet)."""
        ports = self._state[ipaddress.IPv4Address(ip).packed]
        out: list[int] = []
        for r in ranges:
            i = ports.find(0, r.first, r.last + 1)
            while i >= 0:
                out.append(i)
                i = ports.find(0, i + 1, r.last + 1)
        return out

    def silent_count(self, ip: str, ranges: Iterable[PortRange]) -> int:
        ports = self._state[ipaddress.IPv4Address(ip).packed]
        return sum(ports[r.first : r.last + 1].count(0) for r in ranges)

    @property
    def hosts(self) -> list[str]:
        return list(self._names.values())

    def count(self, ip: str, kind: int) -> int:
        return self._state[ipaddress.IPv4Address(ip).packed].count(kind)


def _release(sock: socket.socket, ring: mmap.mmap | None) -> None:
    if ring is not None:
        ring.close()
    sock.close()


def compact(ports: Iterable[int]) -> tuple[PortRange, ...]:
    """Sorted, merged ranges of a port collection: (1,2,3,7) -> 1-3, 7."""
    out: list[PortRange] = []
    first = last = -2
    for p in sorted(set(ports)):
        if p == last + 1:
            last = p
            continue
        if first >= 0:
            out.append(PortRange(first, last))
        first = last = p
    if first >= 0:
        out.append(PortRange(first, last))
    return tuple(out)


__all__ = ["CLOSED", "OPEN", "AnswerTap", "attach_filter", "bpf_program", "compact", "ring_size"]
