"""A media worker: a process that relays the RTP of the sessions the switch hands it.

Started by `media.workers.RelayPool` (``python -m media.worker FD CONFIG NAME``, or the
daemon's ``softswitch media-worker``, which sets up its logging first): FD is its end of the
control channel (`media.channel`), CONFIG the relay's settings and the engine's (or null: no
engine) as JSON, NAME how its log lines say which worker they come from. It runs one
`media.relay.Relay` on its own uvloop and does what the switch says, in the order said:

    ("adopt", sid, call_id, {side: LocalMedia}, state)   + RTP, RTCP of A, then of B
    ("remote", sid, side, host, port, rtcp_port, ssrc, clock_rate)
    ("hold", sid, side, on)
    ("join", new, keep, side, take, take_side)           both sessions here
    ("detach", sid, side)                                 the leg goes to another worker
    ("adopt_join", new, keep, side, LocalMedia)          + RTP, RTCP of the leg that comes
    ("close", sid)
    ("ping", n)
    ("push", [sid] or None)                               counters now (of those sessions)
    ("snap", sid, token)                                  a session's counters at this point

`state` (after a worker died: the sessions it had are handed to its successor) is
``{side: (remote arguments or None, on hold)}``. The worker tells the switch:

    ("final", sid, SessionStats)     a session closed (close, join, detach, adopt_join)
    ("counts", [(sid, counters)])    every 5 s for the sessions open (RelaySession.counts)
    ("stats", [(sid, SessionStats)]) when asked ("push")
    ("snap", token, SessionStats)    the counters a "snap" asked for (None: no such session)
    ("totals", RelayTotals)          every second, and after a "push" of every session
    ("timeout", sid, MediaTimeout)
    ("pong", n)                      everything sent before the ping is done and answered
    ("error", sid, text)             an order that failed (the session is closed)

With an engine, the orders of `media.worker_engine` too.

The ports were bound and are released by the switch; the worker closes its copies of the
sockets when a session ends. It exits when the channel closes (the switch stopped or died).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, Final

import structlog

from media.channel import Channel, Message
from media.config import RelayConfig
from media.relay import Relay, RelaySession, add_counts
from media.stats import LEG_COUNTERS, LocalMedia, MediaTimeout, Side
from media.worker_engine import EngineOrders, EngineSettings

PUSH_EVERY: Final = 1.0  # seconds between pushes of the totals (what /metrics shows)
# Seconds between pushes of every session's counters: only a worker's death needs them (its
# successor counts on from there); call records get theirs by "push" orders and finals.
STATS_EVERY: Final = 5.0
_WITH_SOCKETS: Final = frozenset({"adopt", "adopt_join", "ep_new"})  # orders that bring some
_CHUNK: Final = 100  # sessions per turn of the loop (and per "counts" message)

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()


class Worker:
    """The worker's side of the channel: orders in, counters and events out."""

    def __init__(
        self, sock: socket.socket, config: RelayConfig, engine: EngineSettings | None = None
    ) -> None:
        self.relay = Relay(config)
        self.sessions: dict[int, RelaySession] = {}
        self.stopped = asyncio.get_running_loop().create_future()
        self.channel = Channel(sock, self.on_message, self._channel_closed)
        self.engine = None if engine is None else EngineOrders(self.channel, engine)
        self._handlers: dict[str, Callable[..., None]] = {
            "adopt": self._adopt,
            "remote": self._remote,
            "hold": self._hold,
            "join": self._join,
            "detach": self._detach,
            "adopt_join": self._adopt_join,
            "close": self._close,
            "ping": self._ping,
            "push": self._send_counters,
            "snap": self._snap,
        }
        if self.engine is not None:
            self._handlers.update(self.engine.handlers())
        self._pushes = 0
        self._pusher = asyncio.get_running_loop().call_later(PUSH_EVERY, self._push)

    def on_message(self, message: Message, socks: list[socket.socket]) -> None:
        op, *args = message
        handler = self._handlers.get(op)
        if handler is None:
            log.error("unknown media control order", op=op)
            for sock in socks:
                sock.close()
            self.channel.send(("error", None, f"unknown order {op!r}"))
            return
        try:
            if op in _WITH_SOCKETS:
                handler(*args, socks=socks)
            else:
                handler(*args)
        except Exception as exc:  # one bad order must not stop the media of every call
            sid = args[0] if args and isinstance(args[0], int) else None
            log.exception("media control order failed", op=op, session=sid)
            self.channel.send(("error", sid, f"{op}: {exc}"))

    def stop(self) -> None:
        self._pusher.cancel()
        if self.engine is not None:
            self.engine.close()
        self.relay.close()
        self.channel.close()
        if not self.stopped.done():
            self.stopped.set_result(None)

    def _channel_closed(self) -> None:
        log.info("media worker stopping: the switch closed the control channel")
        self.stop()

    def _on_timeout(self, sid: int) -> Callable[[MediaTimeout], None]:
        return lambda event: self.channel.send(("timeout", sid, event))

    def _add(self, sid: int, session: RelaySession) -> None:
        session._on_timeout = self._on_timeout(sid)
        self.sessions[sid] = session

    def _final(self, sid: int) -> None:
        session = self.sessions.pop(sid)
        self.channel.send(("final", sid, session.close()))

    def _adopt(
        self,
        sid: int,
        call_id: str,
        local: dict[Side, LocalMedia],
        state: dict[Side, tuple[tuple[Any, ...] | None, bool]] | None,
        *,
        socks: list[socket.socket],
    ) -> None:
        if len(socks) != 4:
            for sock in socks:
                sock.close()
            raise ValueError(f"adopt needs 4 sockets, got {len(socks)}")
        sockets = {
            Side.A: (socks[0], socks[1], local[Side.A]),
            Side.B: (socks[2], socks[3], local[Side.B]),
        }
        session = self.relay.adopt(call_id, sockets)
        self._add(sid, session)
        for side, (remote, on_hold) in (state or {}).items():
            if remote is not None:
                session.set_remote(side, *remote[:3], ssrc=remote[3], clock_rate=remote[4])
            if on_hold:
                session.set_hold(side, True)

    def _remote(
        self,
        sid: int,
        side: Side,
        host: str,
        port: int,
        rtcp_port: int | None,
        ssrc: int | None,
        clock_rate: int,
    ) -> None:
        self.sessions[sid].set_remote(side, host, port, rtcp_port, ssrc=ssrc,
                                      clock_rate=clock_rate)  # fmt: skip

    def _hold(self, sid: int, side: Side, on: bool) -> None:
        self.sessions[sid].set_hold(side, on)

    def _join(self, new: int, keep: int, side: Side, take: int, take_side: Side) -> None:
        kept, taken = self.sessions.pop(keep), self.sessions.pop(take)
        joined = kept.join(side, taken, take_side)
        self.channel.send(("final", keep, kept.close()))
        self.channel.send(("final", take, taken.close()))
        self._add(new, joined)

    def _detach(self, sid: int, side: Side) -> None:
        self.channel.send(("final", sid, self.sessions.pop(sid).detach(side)))

    def _adopt_join(
        self, new: int, keep: int, side: Side, local: LocalMedia, *, socks: list[socket.socket]
    ) -> None:
        if len(socks) != 2:
            for sock in socks:
                sock.close()
            raise ValueError(f"adopt_join needs 2 sockets, got {len(socks)}")
        kept = self.sessions.pop(keep)
        joined = self.relay.adopt_join(kept, side, (socks[0], socks[1], local))
        self.channel.send(("final", keep, kept.close()))
        self._add(new, joined)

    def _close(self, sid: int) -> None:
        if sid in self.sessions:
            self._final(sid)

    def _snap(self, sid: int, token: int) -> None:
        session = self.sessions.get(sid)
        self.channel.send(("snap", token, None if session is None else session.stats()))

    def _ping(self, n: int) -> None:
        self.channel.send(("pong", n))

    def _send_counters(self, sids: list[int] | None = None) -> None:
        """Full figures of sessions `sids` now; None: of every session, then the totals."""
        if sids is None:
            self._report(list(self.sessions), full=True)
            return
        sessions = self.sessions
        self.channel.send(("stats", [(s, sessions[s].stats()) for s in sids if s in sessions]))

    def _push(self) -> None:
        self._pushes += 1
        counts = self._pushes % round(STATS_EVERY / PUSH_EVERY) == 0
        self._report(list(self.sessions), counts=counts)
        self._pusher = asyncio.get_running_loop().call_later(PUSH_EVERY, self._push)

    def _report(
        self, sids: list[int], *, full: bool = False, counts: bool = False,
        live: list[int] | None = None,
    ) -> None:  # fmt: skip
        """The totals, after adding up every session's counters a chunk per turn of the loop
        (thousands of sessions would hold packets up for milliseconds at once); with the
        sessions' counters ("counts") or full figures ("stats") on the way."""
        if live is None:
            live = [0] * len(LEG_COUNTERS)
            self.relay.pull_kernel()
        chunk, rest = sids[:_CHUNK], sids[_CHUNK:]
        sessions = self.sessions
        got = [(s, sessions[s]) for s in chunk if s in sessions]
        rows = []
        for s, session in got:
            row = session.counts()
            add_counts(live, row)
            rows.append((s, row))
        if full:
            self.channel.send(("stats", [(s, session.stats()) for s, session in got]))
        elif counts:
            self.channel.send(("counts", rows))
        if rest:
            more = functools.partial(self._report, rest, full=full, counts=counts, live=live)
            asyncio.get_running_loop().call_soon(more)
            return
        self.channel.send(("totals", self.relay.totals(live)))
        if self.engine is not None:
            self.channel.send(("engine", self.engine.counters()))


async def serve(fd: int, config: RelayConfig, engine: EngineSettings | None = None) -> None:
    worker = Worker(socket.socket(fileno=fd), config, engine)
    loop = asyncio.get_running_loop()
    # The operator's Ctrl-C, or a supervisor's SIGTERM to the whole group (systemd's default),
    # reach the workers too: the switch decides when they stop (it closes the channel once its
    # calls are drained), so the calls' media lasts as long as the calls. SIGKILL still works.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None)
    await worker.stopped


def main(fd: int, config_json: str, name: str) -> None:
    """Run a worker until its channel closes (logging is the starter's to configure)."""
    structlog.contextvars.bind_contextvars(worker=name)
    settings = json.loads(config_json)
    config = RelayConfig(**settings["relay"])
    engine = None if settings["engine"] is None else EngineSettings(**settings["engine"])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; the loop works without
        asyncio.run(serve(fd, config, engine))
    else:
        uvloop.run(serve(fd, config, engine))


if __name__ == "__main__":
    # Run by hand or by a program of its own (the daemon's media-worker sets up logging):
    # warnings and worse, on stderr, so stdout stays the starter's.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
