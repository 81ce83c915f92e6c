"""The hot path: the sockets of one relay port and what happens to each packet they receive.

A port (the RTP or the RTCP port of one call leg) faces one phone. Its packets are counted
here and leave through `peer`, the same kind of port on the other leg, towards the other
phone. So `sent` counts what went to the other phone.

An RTP port has two sockets on the same address and port (SO_REUSEPORT):

- `wild`, unconnected: receives from anyone. Every packet on it takes the slow path: the
  sender is checked against the latching rules (`media.latch`), refused ones are counted as
  foreign, accepted ones forwarded.
- `conn`, connected to the latched phone once there is one. Linux delivers a datagram to
  the connected socket whose 4-tuple matches it before any wildcard socket (since 5.7,
  reuseport groups with connected sockets score every member), so the kernel does the source
  check: the fast path is `recv_into`, a peek at the RTP header, `send` -- no address tuple
  is built, compared or parsed, and the route is cached on the socket. Sending to the phone
  goes through `conn` too, so the phone sees one address both ways (symmetric RTP).

Below both, where the host allows it, the kernel itself (`media.kernel`): once a stream is
latched and its SSRC known, `offload` installs an entry for it in an eBPF program's table,
and its packets no longer reach these sockets at all. The port keeps the counters: it takes
the kernel's in every second (`kernel_tick`) and when asked (`pull`), and takes the stream back
(`reclaim`) when the latch changes, the call ends, or the program hands it back because
RFC 3550 needs a decision (a new SSRC, a sequence jump). A packet that reaches `forward`
while an entry is installed is such a hand-back (or one queued before the entry), so the
entry is looked at first.

Each readable event reads one datagram. The event loop polls level-triggered, so a queue that
holds more is reported again at once; reading until EAGAIN would cost an extra failing system
call (and a Python exception) for every wake-up, and at 50 packets/s per socket a wake-up
almost always finds exactly one packet.

Counters are plain ints on the port. Loss and jitter follow RFC 3550: A.1 (sequence number
tracking with MAX_DROPOUT / MAX_MISORDER, restarts believed after two sequential packets),
A.3 (expected - received) and A.8 (interarrival jitter, J += (|D| - J) / 16). The epoll path
reads the clock once per batch of ready sockets, the others once per packet.

What a packet costs (bench/media_relay.py, 2-core VM): about 6-7 us of kernel time for the
receive and the send (most of it the send, which on loopback also delivers to the phone's
socket), the same for rtpengine, and 1.5-2 us of Python for the least a relay can do (`floor`
in the bench); counting and latching add about 1.5 us more. So every increment that can be
a difference is one (`sent` = packets - dropped, `received` = packets - uncounted).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from media.bpf import BpfError
from media.kernel import Entry, HandBack, KernelPath, Stream, key
from media.latch import Latch
from media.stats import Addr, Side

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

_RTP_UNPACK: Final = struct.Struct("!BBHII").unpack_from  # V/P/X/CC, M/PT, seq, ts, SSRC
_U32: Final = struct.Struct("!I").unpack_from
_clock: Final = time.monotonic
_MAX_DROPOUT: Final = 3000  # RFC 3550 A.1
_SEQ_JUMP: Final = 65536 - 100  # RTP_SEQ_MOD - MAX_MISORDER
_MAX_MISSED: Final = 50  # see `RtpPort._bypassed`
# A stream's kernel entry: its key, (our other port, the phone it goes to), its ifindex.
_Plan = tuple[bytes, tuple[Addr, Addr], int]
_TOS_EF: Final = 0xB8  # DSCP EF (RFC 3246), what phones and rtpengine mark voice with


def bind_udp(address: str, port: int, *, reuse: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _TOS_EF)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def _no_packet(buf: bytearray) -> int:
    raise BlockingIOError


class Port:
    """An RTCP port (one socket, every packet on the slow path); `RtpPort` adds the rest."""

    __slots__ = (
        "address",
        "buf",
        "call_id",
        "dropped",
        "dropped_octets",
        "foreign",
        "latch",
        "octets",
        "own",
        "packets",
        "peer",
        "port",
        "sent_base",
        "sent_octets_base",
        "side",
        "tx",
        "view",
        "watch",
        "wild",
    )

    is_rtp = False

    def __init__(
        self,
        wild: socket.socket,
        *,
        latch: Latch,
        buf: bytearray,
        own: Callable[[Addr], bool],
        watch: Callable[[socket.socket, Callable[[], object] | None], None],
        call_id: str,
        side: Side,
    ) -> None:
        self.wild = wild
        self.address, self.port = wild.getsockname()
        self.latch = latch
        self.buf = buf  # shared by all ports: a packet is sent on before the next is read
        self.view = memoryview(buf)
        self.own = own
        self.watch = watch  # (socket, reader) starts watching; (socket, None) stops
        self.call_id = call_id
        self.side = side
        self.peer: Port = self  # the session sets the real one
        # Sends to this port's phone; None until a phone is latched (RTP: a connected socket).
        self.tx: Callable[[memoryview], int] | None = None
        # Every accepted packet is either sent or dropped, so what was sent is a difference
        # (`sent`, `sent_octets`) rather than two more increments per packet.
        self.packets = self.octets = self.dropped = self.dropped_octets = self.foreign = 0
        self.sent_base = self.sent_octets_base = 0  # see `restart_sent`
        watch(wild, self.read_wild)

    @property
    def sent(self) -> int:
        return self.packets - self.dropped - self.sent_base

    @property
    def sent_octets(self) -> int:
        return self.octets - self.dropped_octets - self.sent_octets_base

    def restart_sent(self) -> None:
        """Count in `sent` and `sent_octets` only what is sent from now on."""
        self.sent_base = self.packets - self.dropped
        self.sent_octets_base = self.octets - self.dropped_octets

    def close(self) -> None:
        self.watch(self.wild, None)
        self.wild.close()
        # Paired ports point at each other (and a new one at itself): a reference cycle that
        # only a full garbage collection would free, with its sockets and buffers. Unpaired,
        # a closed call's ports go as soon as the session drops them.
        with contextlib.suppress(AttributeError):  # closed before
            del self.peer

    def sync(self) -> None:
        """Follow a change of the latch (nothing to do with one socket)."""

    def read_wild(self) -> bool:
        """Slow path: a packet from a sender the kernel did not already match for us.
        False when there was nothing to read."""
        try:
            n, addr = self.wild.recvfrom_into(self.buf)
        except OSError:
            return False
        if self.admit(addr, n):
            self.forward(n, _clock())
        return True

    def drain(self, most: int = 8) -> None:
        """Relay what already waits in the socket, up to ``most`` packets: at hang-up, the
        RTCP BYE (RFC 3550 §6.6) a phone sends just before its SIP BYE may still be queued
        here when the BYE, read first in the same loop turn, ends the call."""
        for _ in range(most):
            if not self.read_wild():
                return

    def admit(self, addr: Addr, n: int) -> bool:
        buf = self.buf
        latch = self.latch
        if addr == latch.source:
            return True
        # Only well-formed RTP/RTCP (version 2) may teach an address, and our own ports never
        # do (a loop through the relay, e.g. a phone whose SDP names one of our ports).
        if n < (12 if self.is_rtp else 8) or buf[0] >> 6 != 2 or self.own(addr):
            self.foreign += 1
            return False
        rtcp = not self.is_rtp or 192 <= buf[1] <= 223  # RFC 5761 §4: RTCP types 192-223
        ssrc: int = _U32(buf, 4 if rtcp else 8)[0]
        before = latch.dest
        if not latch.admit(addr, ssrc, _clock()):
            self.foreign += 1
            return False
        if latch.dest != before:
            self._log_latched(addr)
        self.sync()
        return True

    def set_remote(self, expected: Addr | None, ssrc: int | None = None) -> None:
        """A new offer/answer for this port's phone (`Latch.set_remote`); a source it
        learns from packets that came before the first SDP is connected at once."""
        latch = self.latch
        latch.set_remote(expected, ssrc, _clock())
        if latch.source is not None:
            self._log_latched(latch.source, early=True)
        self.sync()  # the next packet goes through the learning rules again

    def _log_latched(self, addr: Addr, *, early: bool = False) -> None:
        expected = self.latch.expected
        _log.info(
            "media latched",
            call_id=self.call_id,
            side=str(self.side),
            rtcp=not self.is_rtp,
            source=f"{addr[0]}:{addr[1]}",
            sdp=None if expected is None else f"{expected[0]}:{expected[1]}",
            before_sdp=early,
        )

    def send_to_phone(self, data: memoryview) -> bool:
        """Send towards this port's phone (called by the peer); False if it went nowhere."""
        tx = self.tx
        try:
            if tx is not None:
                tx(data)
                return True
            dest = self.latch.dest
            if dest is None:
                return False
            self.wild.sendto(data, dest)
        except OSError:
            return False
        return True

    def forward(self, n: int, now: float) -> None:
        """Count the packet in `buf[:n]`, received at `now`, and send it to the other phone."""
        self.packets += 1
        self.octets += n
        if not self.peer.send_to_phone(self.view[:n]):
            self.dropped += 1
            self.dropped_octets += n


class RtpPort(Port):
    __slots__ = (
        "bad_seq",
        "base_seq",
        "conn",
        "conn_recv",
        "conn_to",
        "cycles",
        "jitter",
        "kernel",
        "kernel_missed",
        "kernel_packets",
        "kernel_plan",
        "kernel_refused",
        "kernel_seen",
        "last_arrival",
        "last_ts",
        "lost_before",
        "max_seq",
        "rate",
        "ssrc",
        "uncounted",
    )

    is_rtp = True

    def __init__(self, wild: socket.socket, **port: Any) -> None:
        super().__init__(wild, **port)  # Port's keyword arguments
        # Kernel forwarding (`media.kernel`, set by the relay): the entry installed for the
        # latched stream (its key, where it sends, how), its counters already taken in, and a
        # source the kernel could not carry.
        self.kernel: KernelPath | None = None
        self.kernel_plan: _Plan | None = None
        self.kernel_seen = (0, 0, 0)
        self.kernel_refused: Addr | None = None
        self.kernel_packets = 0  # of `packets`, forwarded by the kernel
        self.kernel_missed = 0  # packets that reached the socket with an entry installed
        self.conn: socket.socket | None = None
        self.conn_recv: Callable[[bytearray], int] = _no_packet
        self.conn_to: Addr | None = None
        # RFC 3550 A.1/A.3/A.8 state of the stream from this phone.
        self.rate = 8000.0  # RTP clock, Hz
        self.ssrc = -1  # -1: no stream yet
        self.base_seq = self.max_seq = self.cycles = 0
        # Packets outside the RFC's count of the current stream (`received` is the rest):
        # those before it began, non-RTP ones, the first packet of a sequence jump (A.1).
        self.uncounted = 0
        self.bad_seq = -1
        self.lost_before = 0  # lost in earlier streams (SSRC changes, restarts)
        self.jitter = 0.0  # in timestamp units, as RFC 3550 keeps it
        self.last_arrival = 0.0  # monotonic time of the last RTP packet; 0: none yet
        self.last_ts = 0

    @property
    def received(self) -> int:
        """RFC 3550 A.1 `received` of the current stream (duplicates and late ones included)."""
        return self.packets - self.uncounted

    def lost(self) -> int:
        if self.ssrc < 0:
            return self.lost_before
        expected = self.cycles + self.max_seq - self.base_seq + 1
        return self.lost_before + max(0, expected - self.received)

    def close(self) -> None:
        self.reclaim()
        self._disconnect()
        super().close()

    def admit(self, addr: Addr, n: int) -> bool:
        self.latch.ssrc = self.ssrc if self.ssrc >= 0 else None
        return super().admit(addr, n)

    def sync(self) -> None:
        """Keep the connected socket on the accepted source, or have none; send through it
        only while that source is also where packets for this phone go."""
        want = self.latch.source
        if want != self.conn_to:
            self._disconnect()
            if want is not None:
                self._connect(want)
        conn = self.conn
        self.tx = conn.send if conn is not None and self.latch.dest == self.conn_to else None
        if self.kernel is not None:
            self.offload()
            peer = self.peer
            if isinstance(peer, RtpPort):
                peer.offload()  # it forwards to this port's phone, whose address may have moved

    def offload(self, *, drain: bool = False) -> None:
        """Have the kernel forward the latched stream, or stop it, as the latch now says.

        An entry needs a latched source with its stream known (SSRC) and a destination on the
        other side; it is replaced when any of them changes. `drain`: first relay what the
        connected socket already holds, so that no packet overtakes another (not while a
        packet is in the shared buffer: from the packet path, the few that could be queued
        behind a latch change or a new SSRC may arrive after the kernel's).
        """
        kernel = self.kernel
        if kernel is None:
            return
        plan = self._kernel_plan(kernel)
        if plan == self.kernel_plan:
            return
        self.reclaim()
        if plan is None:
            return
        if drain:
            self._drain()
        k, out, ifindex = plan
        try:
            kernel.install(k, out, ifindex, Stream(
                ssrc=self.ssrc, rate=self.rate, cycles=self.cycles, max_seq=self.max_seq,
                last_ts=self.last_ts, last_arrival=self.last_arrival, jitter=self.jitter,
            ))  # fmt: skip
        except BpfError as e:  # the table is full, say: this stream stays in Python
            _log.warning("media kernel entry refused", call_id=self.call_id, error=str(e))
            self.kernel_refused = self.latch.source
            return
        self.kernel_plan, self.kernel_seen, self.kernel_missed = plan, (0, 0, 0), 0

    def _kernel_plan(self, kernel: KernelPath) -> _Plan | None:
        source = self.latch.source
        peer = self.peer
        if (
            source is None
            or source != self.conn_to
            or source == self.kernel_refused
            or self.ssrc < 0
            or not isinstance(peer, RtpPort)
        ):
            return None
        dest = peer.latch.dest
        if dest is None:
            return None
        ifindex = kernel.route(source, dest)
        if ifindex is None:
            return None
        return key(source, (self.address, self.port)), ((peer.address, peer.port), dest), ifindex

    def kernel_tick(self, entries: Mapping[bytes, Entry]) -> None:
        """Once a second or so, with the whole kernel table (`KernelPath.entries`): `pull`,
        and hand a latched stream over (again) if the relay agrees (`offload`)."""
        self.pull(entries)
        if self.kernel_plan is None and self.latch.source is not None:
            self.offload(drain=True)

    def pull(self, entries: Mapping[bytes, Entry] | None = None) -> None:
        """Bring the counters (and the last arrival, for media timeouts) up to date with the
        kernel's, from `entries` (the whole table, read once for many ports) or by reading
        this port's; take back a stream the kernel handed back."""
        plan = self.kernel_plan
        if plan is None or self.kernel is None:
            return
        entry = self.kernel.read(plan[0]) if entries is None else entries.get(plan[0])
        if entry is None or entry.handed_back:
            self.reclaim()
        else:
            self._absorb(entry)

    def _bypassed(self) -> None:
        """A packet of an installed stream reached the socket without being handed back: one
        queued before the entry, or the stream comes in where the program does not see it (an
        interface it is not attached to). The latter would cost a table read per packet: after
        a few, the stream stays with the relay."""
        self.kernel_missed += 1
        if self.kernel_missed > _MAX_MISSED:
            _log.warning("media kernel forwarding bypassed", call_id=self.call_id,
                         side=str(self.side), source=str(self.latch.source))  # fmt: skip
            self.reclaim()
            self.kernel_refused = self.latch.source

    def reclaim(self) -> None:
        """Stop kernel forwarding of this port's stream, counters taken in."""
        plan = self.kernel_plan
        if plan is None or self.kernel is None:
            return
        self.kernel_plan = None
        entry = self.kernel.remove(plan[0])
        if entry is None:
            return
        self._absorb(entry)
        if entry.handed_back:
            if entry.reason == HandBack.ROUTE:
                self.kernel_refused = self.latch.source
            _log.debug("media handed back", call_id=self.call_id, side=str(self.side),
                       reason=entry.reason.name)  # fmt: skip

    def _absorb(self, entry: Entry) -> None:
        seen_packets, seen_octets, seen_uncounted = self.kernel_seen
        self.kernel_seen = (entry.packets, entry.octets, entry.uncounted)
        self.packets += entry.packets - seen_packets
        self.kernel_packets += entry.packets - seen_packets
        self.octets += entry.octets - seen_octets
        self.uncounted += entry.uncounted - seen_uncounted
        if entry.packets > entry.uncounted:
            # The kernel followed the stream: its RFC 3550 state is the current one.
            self.cycles, self.max_seq, self.last_ts = entry.cycles, entry.max_seq, entry.last_ts
            self.last_arrival = entry.last_ns / 1e9
            self.jitter = entry.jitter

    def _drain(self) -> None:
        conn = self.conn
        if conn is None:
            return
        for _ in range(64):
            try:
                n = conn.recv_into(self.buf)
            except OSError:
                return
            self.forward(n, _clock())

    def _connect(self, want: Addr) -> None:
        try:
            conn = bind_udp(self.address, self.port, reuse=True)
        except OSError as e:
            # Out of descriptors, say: the wildcard socket still relays, only slower.
            _log.warning("media fast path unavailable", call_id=self.call_id, error=str(e))
            return
        try:
            conn.connect(want)
        except OSError as e:
            conn.close()
            _log.warning("media fast path unavailable", call_id=self.call_id, error=str(e))
            return
        self.conn, self.conn_to, self.conn_recv = conn, want, conn.recv_into
        self.watch(conn, self.read_conn)
        # Between bind and connect the socket was an unconnected member of the group and may
        # have been handed a datagram from anyone: check what it holds now like any other.
        while True:
            try:
                n, addr = conn.recvfrom_into(self.buf)
            except OSError:
                break
            if self.admit(addr, n):
                self.forward(n, _clock())

    def _disconnect(self) -> None:
        conn = self.conn
        if conn is not None:
            self.watch(conn, None)
            conn.close()
            self.conn = self.conn_to = self.tx = None
            self.conn_recv = _no_packet

    def read_conn(self) -> None:
        """Fast path: a packet from the latched phone (the kernel checked the source)."""
        conn = self.conn
        if conn is None:
            return
        try:
            n = conn.recv_into(self.buf)
        except OSError:  # EAGAIN, or an ICMP error (e.g. port unreachable) reported here
            return
        self.forward(n, _clock())

    def forward(self, n: int, now: float) -> None:
        # Per packet: what RFC 3550 needs and nothing more. A packet of the stream being
        # followed costs one unpack, the A.1 sequence step and the A.8 jitter step; `received`
        # and `sent` are differences (`uncounted`, `dropped`), not increments.
        if self.kernel_plan is not None:
            self.pull()  # the kernel handed the stream back, or this packet came before it
            if self.kernel_plan is not None:
                self._bypassed()
        self.packets += 1
        self.octets += n
        if n >= 12:
            b0, b1, seq, ts, ssrc = _RTP_UNPACK(self.buf)
            # RTP v2 and not RTCP multiplexed on this port (RFC 5761 §4: types 192-223).
            if ssrc == self.ssrc and b0 & 0xC0 == 0x80 and b1 & 0xE0 != 0xC0:
                max_seq = self.max_seq
                udelta = (seq - max_seq) & 0xFFFF
                if udelta < _MAX_DROPOUT:
                    if seq < max_seq:
                        self.cycles += 65536
                    self.max_seq = seq
                elif udelta <= _SEQ_JUMP:
                    self._jump(seq)
                # Otherwise a duplicate or a late packet: received, max_seq stays.
                # A.8: D = (Rj - Ri) - (Sj - Si) in timestamp units. A difference near
                # 2**32 is the 32-bit timestamp wrapping.
                d = (now - self.last_arrival) * self.rate - (ts - self.last_ts)
                if d < 0:
                    d = -d
                if d > 2147483648.0:
                    d = 4294967296.0 - d
                self.jitter += (d - self.jitter) * 0.0625
                self.last_arrival = now
                self.last_ts = ts
            elif b0 & 0xC0 == 0x80 and b1 & 0xE0 != 0xC0:
                self._new_stream(seq, ts, ssrc, now)
            else:
                self.uncounted += 1  # RTCP multiplexed, or not RTP: forwarded only
        else:
            self.uncounted += 1
        tx = self.peer.tx
        if tx is None:
            if not self.peer.send_to_phone(self.view[:n]):
                self.dropped += 1
                self.dropped_octets += n
            return
        try:
            tx(self.view[:n])
        except OSError:
            self.dropped += 1
            self.dropped_octets += n

    def _jump(self, seq: int) -> None:
        if seq == self.bad_seq:
            # Two in a row after a big jump: the sender restarted its sequence (A.1).
            self._settle()
            self.base_seq = self.max_seq = seq
            self.uncounted = self.packets - 1
        else:
            self.bad_seq = (seq + 1) & 0xFFFF
            self.uncounted += 1

    def _new_stream(self, seq: int, ts: int, ssrc: int, now: float) -> None:
        """A new SSRC: the first packet, or the phone started another stream."""
        if self.ssrc >= 0:
            self._settle()
        self.ssrc = ssrc
        self.base_seq = self.max_seq = seq
        self.uncounted = self.packets - 1
        self.last_arrival = now
        self.last_ts = ts
        if self.kernel is not None:
            self.offload()  # from the next packet on

    def _settle(self) -> None:
        """Bank the losses of the run that ends before this packet; reset the sequence state."""
        self.uncounted += 1  # this packet, already counted in `packets`, is not of that run
        self.lost_before = self.lost()
        self.cycles = 0
        self.bad_seq = -1


class Poller:
    """Watches many media sockets (a relay's, or the media engine's endpoints') through one
    epoll set of its own.

    The set's descriptor is itself watched by the event loop, so a loop wake-up costs one
    Python callback and one `epoll_wait` for all ready media sockets together, instead of a
    callback through the loop's machinery per socket. Latched RTP (the connected sockets:
    nearly every packet) is read right here; other sockets get their reader called.
    `batch` bounds the packets handled per wake-up so signalling in the same loop still runs.
    """

    def __init__(self, batch: int = 256) -> None:
        self._epoll = select.epoll()
        self._batch = batch
        self.fast: dict[int, RtpPort] = {}
        self.slow: dict[int, Callable[[], object]] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def close(self) -> None:
        self._epoll.close()

    def watch(self, sock: socket.socket, reader: Callable[[], object] | None) -> None:
        fd = sock.fileno()
        if reader is None:
            self.fast.pop(fd, None)
            self.slow.pop(fd, None)
            self._epoll.unregister(fd)
            return
        owner = getattr(reader, "__self__", None)
        if isinstance(owner, RtpPort) and reader == owner.read_conn:
            self.fast[fd] = owner
        else:
            self.slow[fd] = reader
        self._epoll.register(fd, select.EPOLLIN)

    def ready(self) -> None:
        fast = self.fast
        slow = self.slow
        # One arrival time for the batch: the packets of one stream are never two in a batch
        # (20 ms apart), and a batch lasts less than the queueing it reflects.
        now = _clock()
        for fd, _ in self._epoll.poll(0, self._batch):
            port = fast.get(fd)
            if port is None:
                reader = slow.get(fd)
                if reader is not None:
                    reader()
                continue
            try:
                n = port.conn_recv(port.buf)
            except OSError:  # EAGAIN, or an ICMP error (e.g. port unreachable) reported here
                continue
            port.forward(n, now)
