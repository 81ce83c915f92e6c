"""Media workers: the relay's sessions spread over N processes, driven from the switch.

One Python process forwards RTP at what one core allows (``bench/media_relay.py``): the
switch's own loop carries signalling too. `RelayPool` has the interface of `media.relay.Relay`
(``allocate``, ``local_host``, ``totals``, ``close``; sessions with ``local``, ``set_remote``,
``set_hold``, ``join``, ``stats``, ``close``), and puts the packets in worker processes
(`media.worker`), each with its own relay and event loop, so media uses every core. With
``engine=`` each worker runs a media engine too, driven through `RemoteEngine` (`media.remote`).

What stays in the switch, and why:

- **The ports.** The pool binds every leg's sockets itself (`media.relay.bind_pair`) and hands
  the worker duplicates over the control channel (`media.channel`). So ``allocate`` is as
  synchronous as the relay's (the SDP needs the ports at once), a port is released only after
  the worker closed its copy (no two processes ever serve one port), and **a worker that dies
  loses no call**: its sessions are handed, with the addresses the SDP gave and their hold
  state, to the worker started in its place. Packets that arrived meanwhile wait in the
  sockets; the counters go on from the last figures the dead worker sent (at most 5 s of them
  are lost) and latching starts over, as after an offer/answer.
- **Placement.** Every session of a call goes to one worker (a handled call's sessions are
  joined in place); a new call goes to the worker with the fewest sessions.
- **Joins across workers** (an attended transfer of two calls on two workers): the worker of
  the leg that moves closes its copy (``detach``), the other adopts the leg from the switch's
  copy (``adopt_join``). The phone keeps its port; a packet or two in flight at that moment
  may go to the phone that is leaving.

Counters: workers send their totals each second (``/metrics`` adds them up, with those of
workers that died), every session's figures every 5 s (a chunk per turn of their loop, so
packets are not held up) and a session's final ones at close. So ``stats()`` of an open
session may be seconds old; ``snapshot()`` gives the figures of one moment once the worker
has answered, and the call record waits for ``settle(call_id)`` (every order sent so far
answered, that call's counters fresh) before it reads them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from itertools import count
from socket import socket
from typing import Any, Final

import structlog

from media.channel import Channel, Message, pair
from media.config import RelayConfig
from media.latch import normalize
from media.ports import PortAllocator, PortsExhausted
from media.relay import JITTER_BOUNDS_MS, TimeoutHandler, bind_pair
from media.remote import RemoteEngine
from media.stats import (
    LEG_COUNTERS,
    LegStats,
    LocalMedia,
    MediaTimeout,
    RelayTotals,
    SessionStats,
    Side,
    StatsCell,
)
from media.worker_engine import EngineSettings

__all__ = ["MediaUnavailable", "RelayPool", "WorkerSession"]

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

Command = Callable[[int, str, str], list[str]]  # (channel fd, relay config JSON, name) -> argv
SETTLE_TIMEOUT: Final = 2.0  # a worker that does not answer a ping by then is not waited for
RESTART_DELAY: Final = 1.0  # a worker that died young is restarted after this
_YOUNG: Final = 5.0
_OUT: Final = ("packets_out", "bytes_out", "rtcp_packets_out")
_ENGINE_EVENTS: Final = frozenset({"done", "rec_done", "digit", "info", "engine"})


class MediaUnavailable(OSError):
    """No media worker is running (all died and are being restarted): answer the call 503."""


def default_command(fd: int, config: str, name: str) -> list[str]:
    return [sys.executable, "-m", "media.worker", str(fd), config, name]


class _Leg:
    """The switch's side of one leg: its sockets (kept for the life of the leg), what the SDP
    said, and the counters it had in earlier workers or sessions (`base`)."""

    __slots__ = ("base", "local", "on_hold", "port", "remote", "rtcp", "rtp")

    def __init__(self, port: int, rtp: socket, rtcp: socket, local: LocalMedia) -> None:
        self.port = port
        self.rtp = rtp
        self.rtcp = rtcp
        self.local = local
        self.remote: tuple[Any, ...] | None = None  # set_remote's arguments
        self.on_hold = False
        self.base: LegStats | None = None


class WorkerSession:
    """A relay session that lives in a worker; the switch's handle on it (see the module)."""

    def __init__(
        self,
        pool: RelayPool,
        worker: _Worker,
        sid: int,
        call_id: str,
        legs: dict[Side, _Leg],
        on_timeout: TimeoutHandler | None,
    ) -> None:
        self._pool = pool
        self.worker = worker
        self.sid = sid
        self.call_id = call_id
        self._legs = legs
        self._on_timeout = on_timeout
        self._snapshot: SessionStats | None = None  # the last figures the worker sent ...
        self._counts: tuple[int, ...] | None = None  # ... or its last counts, if newer
        self._final: SessionStats | None = None
        self._bases: dict[Side, LegStats | None] | None = None  # frozen at close
        self._moved: set[Side] = set()
        self._handover: _Leg | None = None  # a leg that went to another worker's session
        self._cells: list[StatsCell] = []  # snapshots taken after close: the final is theirs

    @property
    def closed(self) -> bool:
        return self._bases is not None

    def local(self, side: Side) -> LocalMedia:
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
        """As `RelaySession.set_remote`; bad arguments raise here, before the worker."""
        self._check_open()
        normalize(host, port)
        if rtcp_port is not None:
            normalize(host, rtcp_port)
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        remote = (host, port, rtcp_port, ssrc, clock_rate)
        self._legs[side].remote = remote
        self.worker.send(("remote", self.sid, side, *remote))

    def set_hold(self, side: Side, on: bool) -> None:
        self._check_open()
        self._legs[side].on_hold = on
        self.worker.send(("hold", self.sid, side, on))

    def join(self, side: Side, other: WorkerSession, other_side: Side) -> WorkerSession:
        """As `RelaySession.join`, in one worker or across two (see the module)."""
        self._check_open()
        other._check_open()
        if other is self:
            raise ValueError("a session cannot be joined with itself")
        return self._pool._join(self, side, other, other_side)

    def stats(self) -> SessionStats:
        if self._final is not None:
            return self._final
        return self._with_bases(self._latest(), self._bases)

    def snapshot(self) -> StatsCell:
        """The counters now: the worker's figures for this moment replace the latest reported
        ones in the cell when they arrive (before `RelayPool.settle` returns)."""
        cell = StatsCell(self.stats())
        if self._final is None:
            if self._bases is None:
                self._pool._snapshot(self, cell)
            else:
                self._cells.append(cell)
        return cell

    def close(self) -> SessionStats:
        """Stop relaying; the final counters follow from the worker (`RelayPool.settle`)."""
        if self._bases is None:
            self._closing()
            self.worker.send(("close", self.sid))
        return self.stats()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"media session of call {self.call_id} is closed")

    def _closing(self) -> None:
        self._bases = {side: leg.base for side, leg in self._legs.items()}
        self._pool._left(self)

    def _finished(self, final: SessionStats | None) -> None:
        """The worker closed the session (or died): final counters; release what stayed."""
        if self._final is not None:
            return
        if self._bases is None:
            self._closing()
        self._final = self._with_bases(final or self._latest(), self._bases)
        self._pool._settled(self)
        for cell in self._cells:
            cell.stats = self._final
        if self._handover is not None and final is not None:
            moved = final.a if self._legs[Side.A] is self._handover else final.b
            self._handover.base = _plus(self._handover.base, _no_out(moved))
        for side, leg in self._legs.items():
            if side not in self._moved:
                self._pool._release(leg)

    def _latest(self) -> SessionStats | None:
        """The last figures the worker reported (full ones, or the counts of its periodic
        report, whichever came later): what a dead worker's successor counts on from."""
        counts, self._counts = self._counts, None
        if counts is None:
            return self._snapshot
        legs = {}
        before = self._snapshot
        for side, leg in self._legs.items():
            width = len(LEG_COUNTERS)
            values = counts[:width] if side is Side.A else counts[width:]
            named: dict[str, Any] = dict(zip(LEG_COUNTERS, values, strict=True))
            known = None if before is None else (before.a if side is Side.A else before.b)
            legs[side] = replace(known or _zero(side, leg), **named)
        self._snapshot = SessionStats(call_id=self.call_id, a=legs[Side.A], b=legs[Side.B])
        return self._snapshot

    def _with_bases(
        self, now: SessionStats | None, bases: dict[Side, LegStats | None] | None
    ) -> SessionStats:
        legs = {}
        for side, leg in self._legs.items():
            base = leg.base if bases is None else bases[side]
            current = None if now is None else (now.a if side is Side.A else now.b)
            legs[side] = _plus(base, current or _zero(side, leg))
        return SessionStats(call_id=self.call_id, a=legs[Side.A], b=legs[Side.B])


class _Worker:
    """One worker process and its channel, as the pool sees them."""

    def __init__(self, pool: RelayPool, name: str) -> None:
        self.name = name
        self.sessions: set[WorkerSession] = set()  # open or closing: final not in yet
        self.totals: RelayTotals | None = None
        self.started = time.monotonic()
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._totals_waiters: list[asyncio.Future[None]] = []
        mine, theirs = pair()
        try:
            self.process = subprocess.Popen(
                pool.command(theirs.fileno(), pool.config_json, name), pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        self.channel = Channel(mine, lambda m, s: pool._message(self, m, s),
                               lambda: pool._died(self))  # fmt: skip
        log.info("media worker started", worker=name, pid=self.process.pid)

    @property
    def alive(self) -> bool:
        return not self.channel.closed

    def send(self, message: Message, socks: tuple[socket, ...] = ()) -> None:
        self.channel.send(message, socks)

    def ping(self, n: int) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._pings[n] = future
        self.send(("ping", n))
        return future

    def pong(self, n: int) -> None:
        future = self._pings.pop(n, None)
        if future is not None and not future.done():
            future.set_result(None)

    def next_totals(self) -> asyncio.Future[None]:
        """Done when the worker's next totals come."""
        future = asyncio.get_running_loop().create_future()
        self._totals_waiters.append(future)
        return future

    def totals_came(self) -> None:
        waiters, self._totals_waiters = self._totals_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def forget_pings(self) -> None:
        for future in self._pings.values():
            if not future.done():
                future.set_result(None)
        self._pings.clear()
        self.totals_came()


class RelayPool:
    """`media.relay.Relay`'s interface over N worker processes (see the module docstring).

    Create it inside the running event loop and `await started()` before the first call;
    `close()` then `await wait_closed()` to stop.
    `command` builds a worker's command line (the daemon's sets up its logging first).
    """

    def __init__(
        self,
        config: RelayConfig | None = None,
        workers: int = 2,
        *,
        on_timeout: TimeoutHandler | None = None,
        command: Command = default_command,
        engine: EngineSettings | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"media workers must be at least 1, got {workers}")
        self.config = config = config or RelayConfig()
        settings = {"relay": asdict(config), "engine": None if engine is None else asdict(engine)}
        self.config_json = json.dumps(settings)
        self.command = command
        self.ports = PortAllocator(config.first_pair, config.pairs, config.quarantine)
        self._loop = asyncio.get_running_loop()
        self._on_timeout = on_timeout
        self._ids = count(1)
        self._open: dict[str, set[WorkerSession]] = {}  # call id -> its open sessions
        self._unsettled: dict[str, set[WorkerSession]] = {}  # ... and those closing
        self._by_id: dict[int, WorkerSession] = {}  # open or closing sessions
        # snapshot token -> (session, its cell, the legs' bases then): `WorkerSession.snapshot`
        self._cells: dict[int, tuple[WorkerSession, StatsCell, dict[Side, LegStats | None]]] = {}
        self._sessions_total = 0
        self._allocation_failures = 0
        self._restarts = 0
        self._dead = _TotalsSum()
        self._closed = False
        self._names = count(1)
        self.workers: list[_Worker] = [_Worker(self, self._name()) for _ in range(workers)]
        # The media engine in the workers (prompts, DTMF, recording, mixing), if asked for.
        self.engine: RemoteEngine | None = None
        if engine is not None:
            self.engine = RemoteEngine(self, engine.host, engine.recordings)

    @property
    def local_host(self) -> str:
        return self.config.local_host

    @property
    def sessions(self) -> frozenset[WorkerSession]:
        return frozenset(s for group in self._open.values() for s in group)

    @property
    def restarts(self) -> int:
        """Workers that died and were started again."""
        return self._restarts

    def allocate(self, call_id: str, *, on_timeout: TimeoutHandler | None = None) -> WorkerSession:
        """Bind two port pairs and hand them to a worker; raises `PortsExhausted`, or
        `MediaUnavailable` while no worker runs."""
        if self._closed:
            raise RuntimeError("the relay is closed")
        worker = self._place(call_id)
        legs: dict[Side, _Leg] = {}
        try:
            for side in Side:
                port, rtp, rtcp = bind_pair(self.config, self.ports)
                legs[side] = _Leg(port, rtp, rtcp, LocalMedia(self.config.sdp_address, port,
                                                              port + 1))  # fmt: skip
        except (PortsExhausted, OSError):
            self._allocation_failures += 1
            for leg in legs.values():
                self._release(leg)
            raise
        session = self._session(worker, call_id, legs, on_timeout or self._on_timeout)
        self._adopt(session, None)
        return session

    async def started(self, timeout: float = 30.0) -> None:
        """Wait until every worker runs (answers a ping); `MediaUnavailable` if one does not."""
        n = next(self._ids)
        pings = [w.ping(n) for w in self.workers]
        _, late = await asyncio.wait(pings, timeout=timeout)
        dead = [w.name for w in self.workers if not w.alive]
        if late or dead:
            raise MediaUnavailable(f"media workers did not start: {', '.join(dead) or 'no answer'}")

    async def settle(self, call_id: str | None = None) -> None:
        """Wait until every worker has answered every order sent so far (finals included).
        With `call_id`, only until that call's counters are final, or fresh for its sessions
        still open (what its call record needs): no wait at all once they are. `totals`
        follow within a second (`refresh` to have them now)."""
        workers = self.workers
        if call_id is not None:
            for session in self._open.get(call_id, ()):  # closing ones send finals anyway
                session.worker.send(("push", [session.sid]))
            waiting = {s.worker for s in self._unsettled.get(call_id, ())}
            waiting.update(entry[0].worker for entry in self._cells.values())
            workers = [w for w in workers if w in waiting]
        n = next(self._ids)
        pings = [w.ping(n) for w in workers if w.alive]
        if pings:
            await asyncio.wait(pings, timeout=SETTLE_TIMEOUT)

    async def refresh(self) -> None:
        """Have every worker send every session's figures and its totals now."""
        waits = []
        for worker in self.workers:
            if worker.alive:
                waits.append(worker.next_totals())
                worker.send(("push", None))
        if waits:
            await asyncio.wait(waits, timeout=SETTLE_TIMEOUT)

    def totals(self) -> RelayTotals:
        total = _TotalsSum()
        total.add(self._dead.totals)
        for worker in self.workers:
            if worker.totals is not None:
                total.add(asdict(worker.totals))
        clock = time.monotonic()
        return RelayTotals(
            **total.totals,
            sessions=len(self.sessions),
            sessions_total=self._sessions_total,
            allocation_failures=self._allocation_failures,
            pairs_in_use=self.ports.in_use,
            pairs_free=self.ports.free(clock),
            pairs_resting=self.ports.resting(clock),
        )

    def close(self) -> None:
        """Close every session and the workers' channels (the workers then exit)."""
        if self._closed:
            return
        self._closed = True
        for worker in self.workers:
            worker.channel.close()
            for session in list(worker.sessions):
                session._finished(None)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait for the worker processes to exit (killed after `timeout`)."""
        for worker in self.workers:
            try:
                await asyncio.to_thread(worker.process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("media worker did not stop: killed", worker=worker.name)
                worker.process.kill()
                await asyncio.to_thread(worker.process.wait)

    # -- sessions ----------------------------------------------------------------------

    def _name(self) -> str:
        return f"media-{next(self._names)}"

    def _place(self, call_id: str | None) -> _Worker:
        for session in self._open.get(call_id, ()) if call_id is not None else ():
            if session.worker.alive:
                return session.worker
        alive = [w for w in self.workers if w.alive]
        if not alive:
            self._allocation_failures += 1
            raise MediaUnavailable("no media worker is running (restarting)")
        return min(alive, key=lambda w: len(w.sessions))

    def _session(
        self,
        worker: _Worker,
        call_id: str,
        legs: dict[Side, _Leg],
        on_timeout: TimeoutHandler | None,
    ) -> WorkerSession:
        session = WorkerSession(self, worker, next(self._ids), call_id, legs, on_timeout)
        self._open.setdefault(call_id, set()).add(session)
        self._unsettled.setdefault(call_id, set()).add(session)
        self._by_id[session.sid] = session
        worker.sessions.add(session)
        self._sessions_total += 1
        return session

    def _adopt(self, session: WorkerSession, state: dict[Side, Any] | None) -> None:
        legs = session._legs
        socks = (legs[Side.A].rtp, legs[Side.A].rtcp, legs[Side.B].rtp, legs[Side.B].rtcp)
        local = {side: leg.local for side, leg in legs.items()}
        session.worker.send(("adopt", session.sid, session.call_id, local, state), socks)

    def _join(
        self, keep: WorkerSession, side: Side, take: WorkerSession, take_side: Side
    ) -> WorkerSession:
        kept, taken = keep._legs[side], take._legs[take_side]
        keep._moved.add(side)
        take._moved.add(take_side)
        keep._closing()  # their final counters count the moved legs as they were
        take._closing()
        for leg in (kept, taken):
            leg.base = None if leg.base is None else _no_out(leg.base)
        worker = keep.worker
        legs = {side: kept, side.other: taken}
        joined = self._session(worker, keep.call_id, legs, keep._on_timeout)
        if take.worker is worker:
            worker.send(("join", joined.sid, keep.sid, side, take.sid, take_side))
        else:
            take._handover = taken
            take.worker.send(("detach", take.sid, take_side))
            worker.send(("adopt_join", joined.sid, keep.sid, side, taken.local),
                        (taken.rtp, taken.rtcp))  # fmt: skip
            if taken.remote is not None:
                worker.send(("remote", joined.sid, side.other, *taken.remote))
            if taken.on_hold:
                worker.send(("hold", joined.sid, side.other, True))
        log.info("media joined", call_id=keep.call_id, joined=take.call_id,
                 across_workers=take.worker is not worker)  # fmt: skip
        return joined

    def _snapshot(self, session: WorkerSession, cell: StatsCell) -> None:
        token = next(self._ids)
        bases = {side: leg.base for side, leg in session._legs.items()}
        self._cells[token] = (session, cell, bases)
        session.worker.send(("snap", session.sid, token))

    def _settled(self, session: WorkerSession) -> None:
        """`session`'s final counters are in (or its worker died)."""
        group = self._unsettled.get(session.call_id)
        if group is not None:
            group.discard(session)
            if not group:
                del self._unsettled[session.call_id]

    def _left(self, session: WorkerSession) -> None:
        """`session` is closed for the switch (its final counters may still be on the way)."""
        group = self._open.get(session.call_id)
        if group is not None:
            group.discard(session)
            if not group:
                del self._open[session.call_id]

    def _release(self, leg: _Leg) -> None:
        leg.rtp.close()
        leg.rtcp.close()
        self.ports.release(leg.port, time.monotonic())

    # -- what workers say --------------------------------------------------------------

    def _message(self, worker: _Worker, message: Message, socks: list[socket]) -> None:
        for sock in socks:  # workers send none; never leak one
            sock.close()
        op = message[0]
        if op == "counts":
            for sid, counts in message[1]:
                session = self._by_id.get(sid)
                if session is not None:
                    session._counts = counts
        elif op == "stats":
            for sid, stats in message[1]:
                session = self._by_id.get(sid)
                if session is not None:
                    session._snapshot, session._counts = stats, None
        elif op == "final":
            session = self._by_id.pop(message[1], None)
            if session is not None:
                worker.sessions.discard(session)
                session._finished(message[2])
        elif op == "snap":
            taken = self._cells.pop(message[1], None)
            if taken is not None and message[2] is not None:
                session, cell, bases = taken
                cell.stats = session._with_bases(message[2], bases)
        elif op == "totals":
            worker.totals = message[1]
            worker.totals_came()
        elif op == "timeout":
            self._timeout(message[1], message[2])
        elif op == "pong":
            worker.pong(message[1])
        elif op in _ENGINE_EVENTS:
            if self.engine is not None:
                self.engine.message(worker, message)
        elif op == "error":
            log.error("media worker refused an order", worker=worker.name, session=message[1],
                      error=message[2])  # fmt: skip
        else:
            log.error("unknown message from a media worker", worker=worker.name, op=op)

    def _timeout(self, sid: int, event: MediaTimeout) -> None:
        session = self._by_id.get(sid)
        if session is None or session.closed:
            return
        handler = session._on_timeout
        if handler is not None:
            self._loop.call_soon(handler, event)

    def _died(self, worker: _Worker) -> None:
        """A worker's channel closed: start another and hand it the worker's sessions."""
        worker.forget_pings()
        # Snapshots it will never answer keep the figures they had.
        self._cells = {t: v for t, v in self._cells.items() if v[0].worker is not worker}
        if worker.totals is not None:
            self._dead.add(asdict(worker.totals))
            worker.totals = None
        if self._closed:
            return
        code = worker.process.poll()
        log.error("media worker died", worker=worker.name, pid=worker.process.pid,
                  exit_code=code, sessions=len(worker.sessions))  # fmt: skip
        young = time.monotonic() - worker.started < _YOUNG
        if young:
            self._loop.call_later(RESTART_DELAY, self._replace, worker)
        else:
            self._replace(worker)

    def _replace(self, dead: _Worker) -> None:
        if self._closed:
            return
        # Reap the dead process (a thread: it may not have exited when its channel closed).
        self._loop.run_in_executor(None, dead.process.wait)
        try:
            worker = _Worker(self, self._name())
        except OSError as e:
            log.error("media worker cannot start", error=str(e))
            self._loop.call_later(RESTART_DELAY, self._replace, dead)
            return
        self.workers[self.workers.index(dead)] = worker
        self._restarts += 1
        for session in list(dead.sessions):
            dead.sessions.discard(session)
            if session.closed:
                self._by_id.pop(session.sid, None)
                session._finished(None)
                continue
            now = session._latest()
            for side, leg in session._legs.items():
                if now is not None:
                    leg.base = _plus(leg.base, now.a if side is Side.A else now.b)
            session._snapshot = None
            session.worker = worker
            worker.sessions.add(session)
            state = {side: (leg.remote, leg.on_hold) for side, leg in session._legs.items()}
            self._adopt(session, state)
        log.info("media sessions handed to a new worker", worker=worker.name,
                 sessions=len(worker.sessions))  # fmt: skip
        if self.engine is not None:
            self.engine.worker_lost(dead, worker)

    def _after_worker(self, worker: _Worker, then: Callable[[], None]) -> None:
        """Call ``then`` once ``worker`` has done what it was sent so far (or died)."""
        worker.ping(next(self._ids)).add_done_callback(lambda _: then())


class _TotalsSum:
    """RelayTotals' counters added up (the pool's own figures come from elsewhere)."""

    _OWN: Final = ("sessions", "sessions_total", "allocation_failures", "pairs_in_use",
                   "pairs_free", "pairs_resting")  # fmt: skip

    def __init__(self) -> None:
        self.totals: dict[str, Any] = {
            f.name: 0 for f in fields(RelayTotals) if f.name not in self._OWN
        }
        self.totals["jitter_buckets"] = (0,) * (len(JITTER_BOUNDS_MS) + 1)
        self.totals["jitter_sum_ms"] = 0.0

    def add(self, totals: dict[str, Any]) -> None:
        for name, value in self.totals.items():
            extra = totals[name]
            if name == "jitter_buckets":
                self.totals[name] = tuple(a + b for a, b in zip(value, extra, strict=True))
            else:
                self.totals[name] = value + extra


def _zero(side: Side, leg: _Leg) -> LegStats:
    remote = None
    if leg.remote is not None:
        remote = normalize(leg.remote[0], leg.remote[1])
    return LegStats(side=side, local=leg.local, packets_in=0, bytes_in=0, packets_out=0,
                    bytes_out=0, rtcp_packets_in=0, rtcp_packets_out=0, lost=0, jitter_ms=0.0,
                    foreign_packets=0, dropped_packets=0, kernel_packets=0, remote=remote,
                    latched=None,
                    rtcp_latched=None, ssrc=None, last_packet_at=None,
                    on_hold=leg.on_hold)  # fmt: skip


def _plus(base: LegStats | None, now: LegStats) -> LegStats:
    """`now` with the counters of `base` (an earlier worker or session) added in."""
    if base is None:
        return now
    added: dict[str, Any] = {
        name: getattr(base, name) + getattr(now, name) for name in LEG_COUNTERS
    }
    return replace(now, **added)


def _no_out(stats: LegStats) -> LegStats:
    """What a leg sent so far went to a phone that left: a join counts "out" afresh."""
    zeros: dict[str, Any] = dict.fromkeys(_OUT, 0)
    return replace(stats, **zeros)
