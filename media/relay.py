"""The RTP/RTCP relay: a port pair per call leg, packets forwarded between the two legs.

Each `RelaySession` has two legs (A: caller, B: callee); each leg has an RTP socket on an even
port and an RTCP socket on the next one, bound on the media address. A packet that phone A
sends to its leg's RTP port leaves through leg B's RTP port towards phone B, so each phone
sees one address for everything it sends and receives (symmetric RTP).

The per-packet work is in `media.forward` (the hot path: one `recv_into` a shared buffer,
one `struct` peek at the RTP header, one `send`, counters as plain ints), latching rules in
`media.latch` (sans-IO), the port pool in `media.ports`. Sockets are watched with the event
loop's `add_reader`. With `media.kernel` (config `kernel: auto`, the default), latched
streams are forwarded by an eBPF program instead and never wake this process; the relay
takes the kernel's counters in every second, in one read of its whole table (before the
timeout check, so a stream the kernel carries keeps its call alive), and a session's own
when its `stats` are asked for (a hang-up's call record is exact).

Timeouts: a leg that sent RTP and then went quiet for `timeout` s ends the call (one
`MediaTimeout`); a leg on hold, or one that has not sent anything yet, gets `silent_timeout`
instead (rtpengine's split: a phone that never sends is as dead as one that stopped, but it
may also be a gateway that suppresses silence, so it gets the long limit). Quiet time counts
from the later of the last RTP packet and the last offer/answer or hold change of that leg,
and only once the leg has a remote address (before that the call is still being set up, and
signalling timers own it). RTCP alone does not keep a leg alive.

Transfer: `RelaySession.join` makes one session of a leg of each of two sessions (an attended
transfer joins the transferee's leg of one call with the target's leg of the other), so those
two phones talk on through the ports they already send to, with no re-INVITE; the two legs
left over are released. A blind transfer needs nothing new: `set_remote` on the transferor's
leg points it at the target's phone, and latching follows.

It does not parse SDP or transcode; the B2BUA passes addresses in and takes ports and
counters out. In a media worker process (`media.workers`) the switch binds the ports and the
relay `adopt`s the sockets; a leg moves between two workers' relays by `detach` and
`adopt_join`. IPv4 only for now.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import time
from collections.abc import Callable, Mapping
from ipaddress import ip_address
from typing import Any, Final, TypeVar

import structlog

from media.bpf import BpfError
from media.config import RelayConfig
from media.forward import Poller, Port, RtpPort, bind_udp
from media.kernel import Entry, KernelPath
from media.latch import Latch, normalize
from media.ports import PortAllocator, PortsExhausted
from media.stats import (
    LEG_COUNTERS,
    Addr,
    LegStats,
    LocalMedia,
    MediaTimeout,
    RelayTotals,
    SessionStats,
    Side,
    StatsCell,
)

__all__ = ["PortsExhausted", "Relay", "RelaySession", "add_counts", "bind_pair"]

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

# Upper bounds (ms) of the jitter histogram in `RelayTotals.jitter_buckets` (+Inf follows).
JITTER_BOUNDS_MS: Final = (1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0)

_P = TypeVar("_P", bound=Port)

TimeoutHandler = Callable[[MediaTimeout], object]


def bind_pair(
    config: RelayConfig, ports: PortAllocator
) -> tuple[int, socket.socket, socket.socket]:
    """Take a pair from `ports` and bind its RTP socket (SO_REUSEPORT, for the connected
    fast-path socket beside it: `media.forward`) and its RTCP socket: (RTP port, RTP, RTCP).

    A port another program holds is skipped (and rests in quarantine like any other).
    """
    for _ in range(64):
        port = ports.take(time.monotonic())
        try:
            rtp_sock = bind_udp(config.address, port, reuse=True)
        except OSError as e:
            ports.release(port, time.monotonic())
            if e.errno != errno.EADDRINUSE:
                raise
            continue
        try:
            rtcp_sock = bind_udp(config.address, port + 1)
        except OSError as e:
            rtp_sock.close()
            ports.release(port, time.monotonic())
            if e.errno != errno.EADDRINUSE:
                raise
            continue
        return port, rtp_sock, rtcp_sock
    raise PortsExhausted("64 media port pairs in a row were taken by other programs")


def _fmt(addr: Addr | None) -> str | None:
    return None if addr is None else f"{addr[0]}:{addr[1]}"


class _Leg:
    __slots__ = ("adopted", "local", "on_hold", "remote", "rtcp", "rtp", "side", "since")

    def __init__(self, side: Side, local: LocalMedia, rtp: RtpPort, rtcp: Port) -> None:
        self.side = side
        self.local = local
        self.rtp = rtp
        self.rtcp = rtcp
        self.remote: Addr | None = None
        self.on_hold = False
        self.since: float | None = None  # last offer/answer or hold change; None: no SDP yet
        self.adopted = False  # its sockets were bound elsewhere: no port of our pool


class RelaySession:
    """The media of one call: two legs, each with its own RTP/RTCP port pair.

    Made by `Relay.allocate`; the local ports are known at once, for the SDP the B2BUA sends
    each phone. Not thread-safe: use it from the event loop the relay runs in.
    """

    def __init__(
        self,
        relay: Relay,
        call_id: str,
        legs: dict[Side, _Leg],
        on_timeout: TimeoutHandler | None,
    ) -> None:
        self._relay = relay
        self.call_id = call_id
        self._legs = legs
        self._on_timeout = on_timeout
        self._timed_out = False
        self._final: SessionStats | None = None
        self._moved: set[Side] = set()  # legs handed to another session by `join`

    @property
    def closed(self) -> bool:
        return self._final is not None

    def local(self, side: Side) -> LocalMedia:
        """The address and ports to write into the SDP sent to the phone of `side`."""
        return self._legs[side].local

    def set_remote(
        self,
        side: Side,
        host: str,
        port: int,
        rtcp_port: int | None = None,
        *,
        ssrc: int | None = None,
        clock_rate: int = 8000,
    ) -> None:
        """The phone of `side` receives at `host:port` (its SDP); opens the learning window.

        `rtcp_port` defaults to `port + 1` (RFC 3550 §11); pass the `a=rtcp` port, or `port`
        itself for rtcp-mux. `ssrc` (from `a=ssrc`, if the SDP has one) must then match before
        a source is learned. `clock_rate` is the RTP clock of the negotiated codec, for jitter.
        Host 0.0.0.0 or port 0 means "send nothing to this phone" (RFC 3264 hold).
        """
        self._check_open()
        leg = self._legs[side]
        remote = normalize(host, port)
        rtcp = None
        if remote is not None:
            rtcp = normalize(host, port + 1 if rtcp_port is None else rtcp_port)
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        leg.remote = remote
        leg.rtp.set_remote(remote, ssrc)
        leg.rtcp.set_remote(rtcp)
        leg.rtp.rate = float(clock_rate)
        leg.since = time.monotonic()
        _log.debug("media remote", call_id=self.call_id, side=str(side), remote=_fmt(remote))

    def set_hold(self, side: Side, on: bool) -> None:
        """The phone of `side` is (or is no longer) expected to be silent: a call on hold.

        Only the timeout changes; packets keep flowing both ways if phones send them.
        """
        self._check_open()
        leg = self._legs[side]
        leg.on_hold = on
        leg.since = time.monotonic()

    def join(self, side: Side, other: RelaySession, other_side: Side) -> RelaySession:
        """A new session of this session's leg `side` and `other`'s leg `other_side`.

        The phone on `side` keeps its ports and its side; the phone of `other`'s leg gets the
        other side of the new session, and keeps its ports too. Both old sessions are closed
        (their final counters include the moved legs as they were), releasing only the legs
        that did not move. A moved leg's "in" counts on from where it was; its "out" restarts
        at 0, since what it sent before went to a phone that left.
        """
        self._check_open()
        other._check_open()
        if other is self:
            raise ValueError("a session cannot be joined with itself")
        return self._relay._join(self, side, other, other_side)

    def detach(self, side: Side) -> SessionStats:
        """Close the session, the leg `side` included but not released: its phone goes on in
        another relay (`Relay.adopt_join`), and the ports stay with whoever bound them."""
        self._check_open()
        self._moved.add(side)
        final = self.close()
        leg = self._legs[side]
        leg.rtp.close()
        leg.rtcp.close()
        return final

    def counts(self) -> tuple[int, ...]:
        """Leg A's counters then leg B's, in `LEG_COUNTERS` order: `stats` without the objects
        (what a media worker sends the switch every few seconds for each session). What the
        kernel forwarded is in as of the last `Relay.pull_kernel` (`stats` reads its own)."""
        return self._counts(Side.A) + self._counts(Side.B)

    def _pull(self, entries: Mapping[bytes, Entry] | None = None) -> None:
        """Take in what the kernel forwarded for this session (see `media.kernel`)."""
        for leg in self._legs.values():
            leg.rtp.pull(entries)

    def _counts(self, side: Side) -> tuple[int, ...]:
        leg, other = self._legs[side], self._legs[side.other]
        rtp, rtcp = leg.rtp, leg.rtcp
        return (rtp.packets, rtp.octets, other.rtp.sent, other.rtp.sent_octets, rtcp.packets,
                other.rtcp.sent, rtp.lost(), rtp.foreign + rtcp.foreign,
                rtp.dropped + rtcp.dropped, rtp.kernel_packets)  # fmt: skip

    def stats(self) -> SessionStats:
        if self._final is not None:
            return self._final
        self._pull()
        return SessionStats(
            call_id=self.call_id, a=self._leg_stats(Side.A), b=self._leg_stats(Side.B)
        )

    def snapshot(self) -> StatsCell:
        """The counters now, kept (a leg that ends, a transfer: what the call record splits)."""
        return StatsCell(self.stats())

    def close(self) -> SessionStats:
        """Stop relaying, release the ports, and return the final counters (call record)."""
        if self._final is not None:
            return self._final
        for side, leg in self._legs.items():
            if side not in self._moved:
                leg.rtcp.drain()
        final = self.stats()
        self._final = final
        self._relay._closed(self, final)
        return final

    def _check_open(self) -> None:
        if self._final is not None:
            raise RuntimeError(f"media session of call {self.call_id} is closed")

    def _leg_stats(self, side: Side) -> LegStats:
        leg = self._legs[side]
        rtp = leg.rtp
        last_at = None
        if rtp.last_arrival:
            last_at = time.time() - (time.monotonic() - rtp.last_arrival)
        counts: dict[str, Any] = dict(zip(LEG_COUNTERS, self._counts(side), strict=True))
        return LegStats(
            side=side,
            local=leg.local,
            **counts,
            jitter_ms=rtp.jitter / rtp.rate * 1000.0,
            remote=leg.remote,
            latched=rtp.latch.dest,
            rtcp_latched=leg.rtcp.latch.dest,
            ssrc=None if rtp.ssrc < 0 else rtp.ssrc,
            last_packet_at=last_at,
            on_hold=leg.on_hold,
        )

    def _check_timeout(self, now: float, timeout: float, silent_timeout: float) -> None:
        if self._timed_out or self._final is not None:
            return
        for leg in self._legs.values():
            if leg.since is None:
                continue  # no SDP yet: the call is still being set up
            last = leg.rtp.last_arrival
            quiet = now - max(last, leg.since)
            limit = silent_timeout if leg.on_hold or not last else timeout
            if quiet > limit:
                self._timed_out = True
                event = MediaTimeout(
                    call_id=self.call_id, side=leg.side, silent_for=quiet, on_hold=leg.on_hold
                )
                _log.info(
                    "media timeout",
                    call_id=self.call_id,
                    side=str(leg.side),
                    silent_for=round(quiet, 1),
                    on_hold=leg.on_hold,
                )
                self._relay._timed_out(self, event)
                return


class Relay:
    """All relay sessions of one process, the port pool and the media-timeout clock.

    Create it inside the running event loop that will carry the media. `on_timeout` gets every
    `MediaTimeout` unless `allocate` was given its own handler for that session. On Linux the
    media sockets are watched through one epoll set of the relay's own (`media.forward.Poller`)
    that the loop watches as a single descriptor; `epoll=False` makes the relay register every
    socket with the loop instead (what it does where there is no epoll).
    """

    def __init__(
        self,
        config: RelayConfig | None = None,
        *,
        on_timeout: TimeoutHandler | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        epoll: bool | None = None,
    ) -> None:
        self.config = config = config or RelayConfig()
        self._loop = loop or asyncio.get_running_loop()
        self._on_timeout = on_timeout
        self.ports = PortAllocator(config.first_pair, config.pairs, config.quarantine)
        bound = ip_address(config.address)
        self._host = None if bound.is_unspecified else bound.compressed
        self._buf = bytearray(65536)  # one receive buffer: a packet leaves before the next
        self._poller: Poller | None = None
        if epoll if epoll is not None else hasattr(select, "epoll"):
            self._poller = Poller()
            self._loop.add_reader(self._poller.fileno(), self._poller.ready)
        self.kernel = _kernel_path(config)
        self._ticks = 0
        self._sessions: set[RelaySession] = set()
        self._adopted: set[int] = set()  # RTP ports of legs whose sockets we were given
        self._sessions_total = 0
        self._allocation_failures = 0
        self._timeouts = 0
        self._done = [0] * len(LEG_COUNTERS)  # counters of closed sessions, in that order
        self._jitter_buckets = [0] * (len(JITTER_BOUNDS_MS) + 1)
        self._jitter_sum = 0.0
        self._check_every = min(1.0, config.timeout / 4, config.silent_timeout / 4)
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            self._check_every, self._check_timeouts
        )

    @property
    def local_host(self) -> str:
        """The address this host's own media peers (the media engine) use to reach the relay."""
        return self.config.local_host

    @property
    def sessions(self) -> frozenset[RelaySession]:
        return frozenset(self._sessions)

    def allocate(self, call_id: str, *, on_timeout: TimeoutHandler | None = None) -> RelaySession:
        """Bind two port pairs (A and B leg) and start relaying between them.

        Raises `PortsExhausted` when the range has no free pair (the B2BUA should answer the
        call with 503) and `RuntimeError` after `close()`.
        """
        if self._timer is None:
            raise RuntimeError("the relay is closed")
        legs: dict[Side, _Leg] = {}
        try:
            for side in Side:
                legs[side] = self._leg(call_id, side)
        except (PortsExhausted, OSError):
            self._allocation_failures += 1
            for leg in legs.values():
                self._release(leg)
            raise
        session = self._session(call_id, legs, on_timeout)
        _log.debug(
            "media allocated",
            call_id=call_id,
            a=legs[Side.A].local.rtp_port,
            b=legs[Side.B].local.rtp_port,
        )
        return session

    def adopt(
        self,
        call_id: str,
        sockets: Mapping[Side, tuple[socket.socket, socket.socket, LocalMedia]],
        *,
        on_timeout: TimeoutHandler | None = None,
    ) -> RelaySession:
        """A session on sockets bound elsewhere: (RTP, RTCP, what the SDP names) per side.

        A media worker relays this way: the switch binds the ports (so it knows them at once
        and keeps them if the worker dies) and hands the worker its descriptors. Closing the
        session closes the sockets given; the ports are the binder's to release.
        """
        if self._timer is None:
            raise RuntimeError("the relay is closed")
        legs = {
            side: self._make_leg(call_id, side, rtp, rtcp, local, adopted=True)
            for side, (rtp, rtcp, local) in sockets.items()
        }
        return self._session(call_id, legs, on_timeout)

    def adopt_join(
        self,
        keep: RelaySession,
        side: Side,
        sockets: tuple[socket.socket, socket.socket, LocalMedia],
    ) -> RelaySession:
        """`RelaySession.join` with a leg that another relay gave up (`RelaySession.detach`):
        a new session of `keep`'s leg `side` and a leg on `sockets`."""
        keep._check_open()
        rtp, rtcp, local = sockets
        taken = self._make_leg(keep.call_id, side.other, rtp, rtcp, local, adopted=True)
        return self._joined(keep, side, taken)

    def _session(
        self, call_id: str, legs: dict[Side, _Leg], on_timeout: TimeoutHandler | None
    ) -> RelaySession:
        a, b = legs[Side.A], legs[Side.B]
        a.rtp.peer, b.rtp.peer = b.rtp, a.rtp
        a.rtcp.peer, b.rtcp.peer = b.rtcp, a.rtcp
        session = RelaySession(self, call_id, legs, on_timeout or self._on_timeout)
        self._sessions.add(session)
        self._sessions_total += 1
        return session

    def totals(self, live: list[int] | None = None) -> RelayTotals:
        """Counters of the sessions closed and open. `live`: the open sessions' `counts`
        already added up (by `add_counts`; a media worker does it a chunk at a time)."""
        if live is None:
            self.pull_kernel()
            live = [0] * len(self._done)
            for session in self._sessions:
                add_counts(live, session.counts())
        t = [done + now for done, now in zip(self._done, live, strict=True)]
        clock = time.monotonic()
        return RelayTotals(
            sessions=len(self._sessions),
            sessions_total=self._sessions_total,
            allocation_failures=self._allocation_failures,
            timeouts=self._timeouts,
            pairs_in_use=self.ports.in_use,
            pairs_free=self.ports.free(clock),
            pairs_resting=self.ports.resting(clock),
            rtp_packets_in=t[0],
            rtp_bytes_in=t[1],
            rtp_packets_out=t[2],
            rtp_bytes_out=t[3],
            rtcp_packets_in=t[4],
            rtcp_packets_out=t[5],
            lost=t[6],
            foreign_packets=t[7],
            dropped_packets=t[8],
            rtp_packets_kernel=t[9],
            jitter_buckets=tuple(self._jitter_buckets),
            jitter_sum_ms=self._jitter_sum,
        )

    def pull_kernel(self) -> None:
        """Every open session's counters up to date with what the kernel forwarded, from one
        read of its whole table (before adding them all up: `totals`, a worker's report)."""
        if self.kernel is not None:
            entries = self.kernel.entries()
            for session in self._sessions:
                session._pull(entries)

    def _join(
        self, keep: RelaySession, side: Side, take: RelaySession, take_side: Side
    ) -> RelaySession:
        taken = take._legs[take_side]
        take._moved.add(take_side)
        take.close()
        return self._joined(keep, side, taken)

    def _joined(self, keep: RelaySession, side: Side, taken: _Leg) -> RelaySession:
        """A new session of `keep`'s leg `side` and `taken` (a leg of a closed session)."""
        kept = keep._legs[side]
        keep._moved.add(side)
        keep.close()
        joined = taken.rtp.call_id
        taken.side = side.other
        for port in (taken.rtp, taken.rtcp):
            port.side, port.call_id = side.other, keep.call_id
        kept.rtp.reclaim()  # the kernel's entries forward to the phones that leave
        taken.rtp.reclaim()
        for port in (kept.rtp, kept.rtcp, taken.rtp, taken.rtcp):
            # What a moved port sent so far went to a phone that left (the closed sessions'
            # "out" of the released legs counts it): from here on it counts towards the new one.
            port.restart_sent()
        kept.rtp.peer, taken.rtp.peer = taken.rtp, kept.rtp
        kept.rtcp.peer, taken.rtcp.peer = taken.rtcp, kept.rtcp
        kept.rtp.offload()
        taken.rtp.offload()
        now = time.monotonic()
        for leg in (kept, taken):
            if leg.since is not None:
                leg.since = now  # quiet time counts from the join
        legs = {side: kept, side.other: taken}
        session = RelaySession(self, keep.call_id, legs, keep._on_timeout)
        self._sessions.add(session)
        _log.info("media joined", call_id=keep.call_id, joined=joined,
                  kept=kept.local.rtp_port, taken=taken.local.rtp_port)  # fmt: skip
        return session

    def close(self) -> None:
        """Close every session and stop the timeout clock."""
        for session in list(self._sessions):
            session.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poller is not None:
            self._loop.remove_reader(self._poller.fileno())
            self._poller.close()
            self._poller = None
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    def _leg(self, call_id: str, side: Side) -> _Leg:
        port, rtp_sock, rtcp_sock = bind_pair(self.config, self.ports)
        local = LocalMedia(self.config.sdp_address, port, port + 1)
        return self._make_leg(call_id, side, rtp_sock, rtcp_sock, local)

    def _make_leg(
        self, call_id: str, side: Side, rtp_sock: socket.socket, rtcp_sock: socket.socket,
        local: LocalMedia, *, adopted: bool = False,
    ) -> _Leg:  # fmt: skip
        config = self.config

        def make(kind: type[_P], sock: socket.socket) -> _P:
            latch = Latch(
                window=config.latch_window,
                strict=config.strict_source,
                relatch_on_ssrc=config.relatch_on_ssrc,
            )
            return kind(sock, latch=latch, buf=self._buf, own=self._own, watch=self._watch,
                        call_id=call_id, side=side)  # fmt: skip

        if adopted:
            rtp_sock.setblocking(False)
            rtcp_sock.setblocking(False)
            self._adopted.add(local.rtp_port)
        rtp = make(RtpPort, rtp_sock)
        rtp.kernel = self.kernel  # latched RTP may go through it; RTCP always comes here
        leg = _Leg(side, local, rtp, make(Port, rtcp_sock))
        leg.adopted = adopted
        return leg

    def _watch(self, sock: socket.socket, reader: Callable[[], object] | None) -> None:
        if self._poller is not None:
            self._poller.watch(sock, reader)
        elif reader is None:
            self._loop.remove_reader(sock.fileno())
        else:
            self._loop.add_reader(sock.fileno(), reader)

    def _own(self, addr: Addr) -> bool:
        host = self._host
        port = addr[1]
        return (host is None or addr[0] == host) and (
            self.ports.bound(port) or port & ~1 in self._adopted
        )

    def _release(self, leg: _Leg) -> None:
        leg.rtp.close()
        leg.rtcp.close()
        if leg.adopted:
            self._adopted.discard(leg.local.rtp_port)
        else:
            self.ports.release(leg.local.rtp_port, time.monotonic())

    def _closed(self, session: RelaySession, final: SessionStats) -> None:
        self._sessions.discard(session)
        # A leg moved to another session by `join` is counted (and released) by that one.
        released = [s for s in (final.a, final.b) if s.side not in session._moved]
        for side, leg in session._legs.items():
            if side not in session._moved:
                self._release(leg)
        for leg_stats in released:
            for i, value in enumerate(_leg_totals(leg_stats)):
                self._done[i] += value
        for leg_stats in released:
            if leg_stats.packets_in:
                jitter = leg_stats.jitter_ms
                self._jitter_sum += jitter
                bucket = sum(1 for bound in JITTER_BOUNDS_MS if jitter > bound)
                self._jitter_buckets[bucket] += 1
        _log.debug("media closed", call_id=session.call_id)

    def _follow_interfaces(self, kernel: KernelPath) -> None:
        try:
            kernel.follow_interfaces()
        except (BpfError, OSError) as e:
            _log.warning("media kernel forwarding: a new interface refused", error=str(e))

    def _timed_out(self, session: RelaySession, event: MediaTimeout) -> None:
        self._timeouts += 1
        handler = session._on_timeout
        if handler is not None:
            # Through the loop, so a failing handler cannot stop the timeout clock.
            self._loop.call_soon(handler, event)

    def _check_timeouts(self) -> None:
        if self.kernel is not None:
            self._ticks += 1
            if self._ticks % 10 == 0:
                self._follow_interfaces(self.kernel)
            entries = self.kernel.entries()
            for session in self._sessions:
                for leg in session._legs.values():
                    leg.rtp.kernel_tick(entries)
        now = time.monotonic()
        config = self.config
        for session in list(self._sessions):
            session._check_timeout(now, config.timeout, config.silent_timeout)
        self._timer = self._loop.call_later(self._check_every, self._check_timeouts)


def _kernel_path(config: RelayConfig) -> KernelPath | None:
    """The kernel fast path the config asks for, if this host lets us have it."""
    if config.kernel == "off":
        return None
    if ip_address(config.address).is_unspecified:
        reason = f"media.address {config.address} binds every interface (kernel forwarding "
        reason += "matches packets by our address: name one)"
    else:
        try:
            kernel = KernelPath(address=config.address, capacity=max(2, config.pairs))
        except (BpfError, OSError) as e:
            reason = str(e).splitlines()[0]
        else:
            _log.info("media kernel forwarding", interfaces=kernel.interfaces)
            return kernel
    if config.kernel == "on":
        raise RuntimeError(f"media.kernel is on, but kernel forwarding is unavailable: {reason}")
    _log.warning("media kernel forwarding unavailable", reason=reason)
    return None


def add_counts(total: list[int], counts: tuple[int, ...]) -> None:
    """Add a session's `counts` (both legs) into `total` (one leg's width)."""
    width = len(total)
    for i, value in enumerate(counts):
        total[i % width] += value


def _leg_totals(leg: LegStats) -> tuple[int, ...]:
    return tuple(getattr(leg, name) for name in LEG_COUNTERS)
