"""Kernel forwarding of latched RTP: the relay's fast path moved below the socket layer.

Relaying in userspace costs two system calls and a wake-up per packet; on loopback that is
80 % of the relay's CPU whatever the language (bench/README). Once a stream is latched, its
packets need no decision, so an eBPF program on the interfaces' tcx ingress hook forwards
them as rtpengine's kernel module does: it looks the packet's 4-tuple up in a hash map that
the relay fills, rewrites addresses and ports (checksums updated incrementally, RFC 1624),
counts the packet and follows its RTP stream (RFC 3550 A.1 sequence numbers, A.8 jitter), and
sends it on:

- towards a phone on this host (the destination is a local address and the packet came in
  on loopback): it carries on up the stack, now addressed to that phone's socket;
- towards a phone elsewhere: out of the interface that holds the media address, next hop
  from the kernel's own routing and neighbour tables (`bpf_redirect_neigh`).

What the program does not decide it hands back: a packet whose 4-tuple is not in the map
(not latched yet, a foreign source, RTCP) goes on to the relay's sockets untouched. A packet
of a mapped stream that needs the RFC's slow cases -- a new SSRC, a sequence jump (a restart
to confirm or a burst of loss to count), a route the program cannot take -- marks its entry
"handed back" and goes to the socket too, as does every later packet of that stream, until the
relay has taken the entry's counters back (`RtpPort` in `media.forward`) and installs a
fresh entry. So the relay's counters stay the RFC's, exactly, whichever side counted a packet.

Interfaces that appear later are attached within ten seconds (`follow_interfaces`, from the
relay's tick); a stream whose packets still reach the relay's socket with its entry installed
(an interface the program does not see) is taken back after a few (`RtpPort._bypassed`).

Not done here: RTCP (a few packets per call), IPv6, VLAN-tagged egress, DSCP marking (kernel-
forwarded packets keep the sender's TOS), media addresses that are secondary addresses of an
interface (the egress interface is the one whose primary address is the media address).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import ip_address
from typing import Final

from media import bpf
from media.bpf import R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Asm

Addr = tuple[str, int]

# Helper function ids (include/uapi/linux/bpf.h, __BPF_FUNC_MAPPER).
_MAP_LOOKUP_ELEM: Final = 1
_KTIME_GET_NS: Final = 5
_SKB_STORE_BYTES: Final = 9
_L3_CSUM_REPLACE: Final = 10
_L4_CSUM_REPLACE: Final = 11
_REDIRECT_NEIGH: Final = 152
_F_PSEUDO_HDR: Final = 1 << 4
_F_MARK_MANGLED_0: Final = 1 << 5  # a UDP checksum of 0 ("none") stays 0
_TCX_NEXT: Final = -1  # let the next program, then the stack, have the packet

# struct __sk_buff offsets
_SKB_LEN: Final = 0
_SKB_IFINDEX: Final = 40
_SKB_DATA: Final = 76
_SKB_DATA_END: Final = 80

# Packet offsets: Ethernet (14), IPv4 without options (20), UDP (8), RTP (12).
_ETH_PROTO, _IP_VHL, _IP_LEN, _IP_FRAG, _IP_PROTO, _IP_CSUM = 12, 14, 16, 20, 23, 24
_IP_SADDR, _UDP_CSUM, _RTP = 26, 40, 42
_HEADERS: Final = _RTP  # bytes before the UDP payload
_LO_IFINDEX: Final = 1

# The map: key = the packet's saddr, daddr, sport, dport as they are on the wire.
KEY_SIZE: Final = 12
# Value: the rewrite, then what the program keeps of the stream (host byte order).
_V_IFINDEX, _V_FLAGS, _V_REASON, _V_SSRC, _V_NS_PER_TICK = 12, 16, 20, 24, 28
_V_PACKETS, _V_OCTETS, _V_UNCOUNTED, _V_LAST_NS, _V_CYCLES = 32, 40, 48, 56, 64
_V_MAX_SEQ, _V_LAST_TS, _V_JITTER = 72, 76, 80
VALUE_SIZE: Final = 88
_STATE: Final = struct.Struct("<IIIIIQQQQQIIq")  # from _V_IFINDEX on
_VALUE: Final = struct.Struct("<12x" + _STATE.format[1:])  # the whole value
HANDED_BACK: Final = 1  # flags bit the program sets


class HandBack(IntEnum):
    """Why the program handed a stream back to the relay (`Entry.reason`)."""

    NONE = 0  # it did not
    SSRC = 1  # a packet of another RTP stream (RFC 3550 A.1: a new source)
    SEQUENCE = 2  # a sequence jump: restart or big loss, the relay decides
    ROUTE = 3  # the program cannot deliver where the entry says


_REASONS: Final = tuple(HandBack)  # by value: the program stores 0-3


_MAX_DROPOUT: Final = 3000  # RFC 3550 A.1
_SEQ_JUMP: Final = 65536 - 100


def program(map_fd: int) -> bytes:
    """The tcx ingress program; `map_fd` is the forwarding table (`KEY_SIZE`/`VALUE_SIZE`)."""
    a = Asm()
    a.mov(R6, R1)  # the skb

    def packet(fail: str) -> None:
        """R2 = data, with its 54 bytes checked (after any helper call, pointers are stale)."""
        a.load(R2, 4, R6, _SKB_DATA)
        a.load(R3, 4, R6, _SKB_DATA_END)
        a.mov(R4, R2)
        a.alu("add", R4, _RTP + 12)
        a.jump(">", R4, R3, fail)

    packet("next")
    a.load(R4, 2, R2, _ETH_PROTO)
    a.jump("!=", R4, 0x0008, "next")  # ETH_P_IP, read as little-endian
    a.load(R4, 1, R2, _IP_VHL)
    a.jump("!=", R4, 0x45, "next")  # IPv4 without options
    a.load(R4, 1, R2, _IP_PROTO)
    a.jump("!=", R4, socket.IPPROTO_UDP, "next")
    a.load(R4, 2, R2, _IP_FRAG)
    a.alu("and", R4, 0xFF3F)  # fragment offset and MF
    a.jump("!=", R4, 0, "next")
    a.load(R4, 2, R2, _IP_LEN)  # one whole datagram: no GSO super-packet, no padding
    a.to_host(R4, 16)
    a.alu("add", R4, 14)
    a.load(R5, 4, R6, _SKB_LEN)
    a.jump("!=", R4, R5, "next")
    for i in range(3):  # the key: saddr, daddr, sport + dport
        a.load(R4, 4, R2, _IP_SADDR + 4 * i)
        a.store(R10, -16 + 4 * i, 4, R4)
    a.load_map(R1, map_fd)
    a.mov(R2, R10)
    a.alu("add", R2, -16)
    a.call(_MAP_LOOKUP_ELEM)
    a.jump("==", R0, 0, "next")
    a.mov(R7, R0)  # the entry
    a.load(R4, 4, R7, _V_FLAGS)
    a.jump("&", R4, HANDED_BACK, "next")
    a.load(R4, 4, R7, _V_IFINDEX)
    a.jump("!=", R4, 0, "rtp")
    a.load(R4, 4, R6, _SKB_IFINDEX)  # to a phone on this host: only what came in on loopback
    a.jump("!=", R4, _LO_IFINDEX, "back_route")

    a.label("rtp")
    # Only now the clock: every packet of every interface passes the checks above.
    a.call(_KTIME_GET_NS)
    a.mov(R9, R0)  # arrival time, CLOCK_MONOTONIC ns: the relay's time.monotonic()
    packet("next")
    a.load(R8, 1, R2, _RTP)
    a.alu("and", R8, 0xC0)
    a.jump("!=", R8, 0x80, "uncounted")  # not RTP version 2: forwarded, not followed
    a.load(R8, 1, R2, _RTP + 1)
    a.alu("and", R8, 0xE0)
    a.jump("==", R8, 0xC0, "uncounted")  # RTCP multiplexed (RFC 5761 §4: types 192-223)
    a.load(R8, 4, R2, _RTP + 8)
    a.to_host(R8, 32)
    a.load(R4, 4, R7, _V_SSRC)
    a.jump("!=", R8, R4, "back_ssrc")
    # A.1: udelta = seq - max_seq (mod 2^16)
    a.load(R8, 2, R2, _RTP + 2)
    a.to_host(R8, 16)
    a.load(R4, 4, R7, _V_MAX_SEQ)
    a.mov(R5, R8)
    a.alu("sub", R5, R4)
    a.alu("and", R5, 0xFFFF)
    a.jump("<", R5, _MAX_DROPOUT, "in_order")
    a.jump(">", R5, _SEQ_JUMP, "jitter")  # a duplicate or a late packet: max_seq stays
    a.goto("back_sequence")
    a.label("in_order")
    a.jump(">=", R8, R4, "no_wrap")
    a.load(R5, 8, R7, _V_CYCLES)
    a.alu("add", R5, 65536)
    a.store(R7, _V_CYCLES, 8, R5)
    a.label("no_wrap")
    a.store(R7, _V_MAX_SEQ, 4, R8)
    # A.8: D = (arrival - last arrival) - (ts - last ts), in ns; J16 += |D| - J16 / 16
    a.label("jitter")
    a.load(R8, 4, R2, _RTP + 4)
    a.to_host(R8, 32)
    a.load(R4, 4, R7, _V_LAST_TS)
    a.store(R7, _V_LAST_TS, 4, R8)
    a.alu("sub", R8, R4)
    a.alu("lsh", R8, 32)
    a.alu("arsh", R8, 32)  # a timestamp step near 2^32 is a step back
    a.load(R4, 4, R7, _V_NS_PER_TICK)
    a.alu("mul", R8, R4)
    a.mov(R5, R9)
    a.load(R4, 8, R7, _V_LAST_NS)
    a.alu("sub", R5, R4)
    a.store(R7, _V_LAST_NS, 8, R9)
    a.alu("sub", R5, R8)
    a.jump("s>=", R5, 0, "positive")
    a.alu("neg", R5)
    a.label("positive")
    a.load(R4, 8, R7, _V_JITTER)
    a.mov(R8, R4)
    a.alu("arsh", R8, 4)
    a.alu("sub", R5, R8)
    a.alu("add", R4, R5)
    a.store(R7, _V_JITTER, 8, R4)
    a.goto("count")
    a.label("uncounted")
    a.mov(R4, 1)
    a.atomic_add(R7, _V_UNCOUNTED, 8, R4)
    a.label("count")
    a.mov(R4, 1)
    a.atomic_add(R7, _V_PACKETS, 8, R4)
    a.load(R4, 4, R6, _SKB_LEN)
    a.alu("add", R4, -_HEADERS)
    a.atomic_add(R7, _V_OCTETS, 8, R4)

    # Rewrite: checksums first (from the old values, kept in the key), then the fields.
    def csum(helper: int, off: int, old_at: int, new_at: int, flags: int) -> None:
        a.mov(R1, R6)
        a.mov(R2, off)
        a.load(R3, 4, R10, -16 + old_at)
        a.load(R4, 4, R7, new_at)
        a.mov(R5, flags)
        a.call(helper)

    for field in (0, 4):  # saddr, daddr: in the IP header and in the UDP pseudo-header
        csum(_L3_CSUM_REPLACE, _IP_CSUM, field, field, 4)
        csum(_L4_CSUM_REPLACE, _UDP_CSUM, field, field, _F_PSEUDO_HDR | _F_MARK_MANGLED_0 | 4)
    csum(_L4_CSUM_REPLACE, _UDP_CSUM, 8, 8, _F_MARK_MANGLED_0 | 4)  # both ports, one word
    a.mov(R1, R6)
    a.mov(R2, _IP_SADDR)
    a.mov(R3, R7)
    a.mov(R4, KEY_SIZE)
    a.mov(R5, 0)
    a.call(_SKB_STORE_BYTES)
    a.load(R1, 4, R7, _V_IFINDEX)
    a.jump("==", R1, 0, "next")  # local: on up the stack to the phone's socket
    a.mov(R2, 0)
    a.mov(R3, 0)
    a.mov(R4, 0)
    a.call(_REDIRECT_NEIGH)
    a.exit()

    for reason in HandBack:
        if reason is HandBack.NONE:
            continue
        a.label(f"back_{reason.name.lower()}")
        a.store(R7, _V_REASON, 4, reason)
        a.store(R7, _V_FLAGS, 4, HANDED_BACK)
        a.goto("next")
    a.label("next")
    a.mov(R0, _TCX_NEXT)
    a.exit()
    return a.code()


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream's forwarding entry as the program left it."""

    handed_back: bool
    reason: HandBack
    packets: int
    octets: int
    uncounted: int  # forwarded but not RTP of the followed stream (e.g. multiplexed RTCP)
    last_ns: int  # arrival of the last followed packet, CLOCK_MONOTONIC
    cycles: int
    max_seq: int
    last_ts: int
    jitter: float  # RFC 3550 J, in timestamp units


@dataclass(frozen=True, slots=True)
class Stream:
    """What the relay knows of a latched stream when it hands it to the kernel."""

    ssrc: int
    rate: float  # RTP clock, Hz
    cycles: int
    max_seq: int
    last_ts: int
    last_arrival: float  # time.monotonic()
    jitter: float  # timestamp units


def _entry(fields: tuple[int, ...]) -> Entry:
    """An entry from its value unpacked by `_VALUE`."""
    (_, flags, reason, _, ns_per_tick, packets, octets, uncounted, last_ns, cycles, max_seq,
     last_ts, jitter16) = fields  # fmt: skip
    return Entry(bool(flags & HANDED_BACK), _REASONS[reason], packets, octets, uncounted,
                 last_ns, cycles, max_seq, last_ts, jitter16 / 16 / ns_per_tick)  # fmt: skip


def key(src: Addr, dst: Addr) -> bytes:
    """saddr, daddr, sport, dport as an IPv4 + UDP header has them: the map key of packets
    from a phone `src` to our port `dst`, and the rewrite of an entry (our port -> a phone)."""
    return socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])


class KernelPath:
    """The program attached to this host's interfaces and its forwarding table.

    One per relay (one per media worker process): its own map and links, gone when `close`d
    or when the process ends. `KernelPath(...)` raises `bpf.BpfError` where the kernel will
    not have it (no CAP_BPF / CAP_NET_ADMIN, no tcx, a kernel older than 6.6).
    """

    def __init__(self, *, address: str, capacity: int) -> None:
        self.address = address
        self._map = bpf.HashMap("softswitch_rtp", KEY_SIZE, VALUE_SIZE, capacity)
        self._links: dict[int, int] = {}  # ifindex -> link descriptor
        self._prog = -1
        self._local: set[str] = set()
        self._egress = 0
        try:
            self._prog = bpf.load_program("softswitch_rtp", program(self._map.fd))
            self.follow_interfaces()
        except BaseException:
            self.close()
            raise

    @property
    def interfaces(self) -> int:
        return len(self._links)

    def follow_interfaces(self) -> None:
        """Attach to interfaces that appeared since the last call (a VLAN, a VPN, a NIC up
        after boot) and learn the host's addresses again (the links of interfaces that went
        away went with them)."""
        present = {index for index, _ in socket.if_nameindex()}
        for index in sorted(present - self._links.keys()):
            try:
                self._links[index] = bpf.attach_tcx_ingress(self._prog, index)
            except bpf.BpfError as e:
                if e.errno != 19 or not self._links:  # ENODEV: it went away meanwhile
                    raise
        for index in self._links.keys() - present:
            os.close(self._links.pop(index))
        addresses = interface_addresses()
        self._local = {addr for addr, _ in addresses} | {self.address}
        # Remote phones are reached out of the interface that holds the media address (none
        # from loopback: a relay bound there only has phones on this host).
        egress = next((index for addr, index in addresses if addr == self.address), 0)
        self._egress = 0 if ip_address(self.address).is_loopback else egress

    def route(self, source: Addr, dest: Addr) -> int | None:
        """The entry's ifindex for packets from `source` relayed to `dest`: 0 to deliver on
        this host, the egress interface for elsewhere, None when the program cannot."""
        if self._is_local(dest[0]):
            return 0 if self._is_local(source[0]) else None
        return self._egress or None

    def _is_local(self, host: str) -> bool:
        return host in self._local or ip_address(host).is_loopback

    def install(self, k: bytes, out: tuple[Addr, Addr], ifindex: int, stream: Stream) -> None:
        """Forward packets matching `k` from `out[0]` (our other port) to `out[1]` (a phone)."""
        ns_per_tick = round(1e9 / stream.rate)
        value = key(*out) + _STATE.pack(
            ifindex, 0, 0, stream.ssrc, ns_per_tick, 0, 0, 0, int(stream.last_arrival * 1e9),
            stream.cycles, stream.max_seq, stream.last_ts,
            round(stream.jitter * ns_per_tick * 16),
        )  # fmt: skip
        self._map.put(k, value)

    def read(self, k: bytes) -> Entry | None:
        raw = self._map.get(k)
        return None if raw is None else _entry(_VALUE.unpack(raw))

    def entries(self) -> dict[bytes, Entry]:
        """Every entry, in a few system calls (one read each would cost thousands of them a
        second: the relay's tick takes every stream's counters in at once)."""
        keys, values, _ = self._map.dump()
        return {
            keys[i * KEY_SIZE : (i + 1) * KEY_SIZE]: _entry(fields)
            for i, fields in enumerate(_VALUE.iter_unpack(values))
        }

    def remove(self, k: bytes) -> Entry | None:
        """Stop forwarding `k`; the entry as it was last (None if there was none)."""
        entry = self.read(k)
        self._map.delete(k)
        return entry

    def trial(self, packet: bytes) -> tuple[int, bytes]:
        """What the program does with `packet` (an Ethernet frame) as if it came in on
        loopback: its verdict (-1: on up the stack, 7: redirected) and the packet after it.
        Counters and entries change as for a real packet; nothing is sent."""
        return bpf.test_run(self._prog, packet)

    def close(self) -> None:
        for link in self._links.values():
            os.close(link)
        self._links.clear()
        if self._prog >= 0:
            os.close(self._prog)
            self._prog = -1
        self._map.close()


def interface_addresses() -> list[tuple[str, int]]:
    """(primary IPv4 address, ifindex) of each interface that has one."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for index, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s, 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            found.append((socket.inet_ntoa(raw[20:24]), index))
    return found
