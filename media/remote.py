"""The media engine in worker processes, as the switch sees it.

With media workers (`media.workers.RelayPool`), each worker runs a `media.engine.MediaEngine`
beside its relay (`media.worker_engine`), and the switch drives it through the objects here,
which have the interface of the in-process ones (`MediaEngine.endpoint`, `.conference`,
`.record`; `EngineEndpoint`'s operations), so call control does not know where its media runs:

- an endpoint goes to the worker of the relay session it faces (``near``), so a call's
  packets between relay and engine stay in one process; the switch binds its socket and keeps
  a copy, as it does for the relay's ports;
- ``play``, ``collect`` and ``record`` are requests answered by the worker when they end;
  cancelling the awaiting task cancels them there;
- a mix belongs to the worker of the first endpoint added; an endpoint of another worker
  cannot join it (`RemoteEngine.near` makes a new endpoint where the mix is);
- digits an endpoint forwards (``on_digit``, ``on_info``) come back as events.

A worker that dies takes its engine state with it; the switch hands its endpoints (same
sockets, format, peer, music) and mixes to the new worker. What was in progress ends as if
stopped: a prompt as interrupted, a collect with no digits, a recording where the file ends
(its last second may be missing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from media.engine import EngineStats
from media.forward import bind_udp
from media.mixer import Mode
from media.recorder import target_path
from media.stats import Addr

if TYPE_CHECKING:
    from media.workers import RelayPool, _Worker

__all__ = ["RemoteConference", "RemoteEndpoint", "RemoteEngine", "RemoteRecording"]

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

_COUNTERS = ("ticks", "late_ticks", "tick_seconds", "packets_in", "packets_out", "digits")


class RemoteEndpoint:
    """An `EngineEndpoint` in a worker (see the module docstring)."""

    def __init__(self, engine: RemoteEngine, worker: _Worker, eid: int) -> None:
        self._engine = engine
        self.worker = worker
        self.row = eid  # what mixes and recordings name it by
        self._sock = bind_udp(engine.host, 0)
        self.address: Addr = self._sock.getsockname()[:2]
        self.peer: Addr | None = None
        self._format: tuple[str, int, int | None] | None = None
        self._music: tuple[str | None] | None = None
        self._on_digit: Callable[[str], None] | None = None
        self._on_info: Callable[[str], None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], Any]] = {}  # rid -> (future, if lost)
        self.closed = False
        self._adopt()

    def __repr__(self) -> str:
        return f"<RemoteEndpoint {self.row} on {self.worker.name} {self.address}>"

    def _adopt(self) -> None:
        """Give the worker the endpoint as the switch knows it (at start, or to a new worker)."""
        self.worker.send(("ep_new", self.row), (self._sock,))
        if self.peer is not None:
            self.worker.send(("ep_attach", self.row, *self.peer))
        if self._format is not None:
            self.worker.send(("ep_format", self.row, *self._format))
        if self._on_digit is not None or self._on_info is not None:
            self._forward()
        if self._music is not None:
            self.worker.send(("ep_music", self.row, *self._music))

    @property
    def on_digit(self) -> Callable[[str], None] | None:
        return self._on_digit

    @on_digit.setter
    def on_digit(self, handler: Callable[[str], None] | None) -> None:
        self._on_digit = handler
        self._forward()

    @property
    def on_info(self) -> Callable[[str], None] | None:
        return self._on_info

    @on_info.setter
    def on_info(self, handler: Callable[[str], None] | None) -> None:
        self._on_info = handler
        self._forward()

    def _forward(self) -> None:
        if not self.closed:
            forward = (
                "ep_forward",
                self.row,
                self._on_digit is not None,
                self._on_info is not None,
            )
            self.worker.send(forward)

    def attach(self, peer: Addr) -> None:
        self.peer = peer
        self._send("ep_attach", *peer)

    def set_format(self, codec: str, pt: int, events_pt: int | None) -> None:
        self._format = (codec, pt, events_pt)
        self._send("ep_format", codec, pt, events_pt)

    def start_music(self, path: str | None = None) -> None:
        self._music = (path,)
        self._send("ep_music", path)

    def stop_music(self) -> None:
        self._music = None
        self._send("ep_music_stop")

    def flush_digits(self) -> None:
        self._send("ep_flush")

    def send_digit(self, digit: str, duration_ms: int = 100) -> None:
        self._send("ep_send_digit", digit, duration_ms)

    def digit(self, digit: str, *, in_audio: bool = False) -> None:
        self._send("ep_digit", digit, in_audio)

    async def play(
        self, prompts: str | Sequence[str], *, language: str | None = None, interrupt: bool = False
    ) -> bool:
        names = [prompts] if isinstance(prompts, str) else list(prompts)
        return bool(await self._request("ep_play", False, names, language, interrupt))

    async def collect(
        self,
        max_digits: int,
        timeout: float,
        terminators: str = "#",
        inter_digit_timeout: float | None = None,
    ) -> str:
        if max_digits < 1:
            raise ValueError("collect: max_digits must be at least 1")
        got = await self._request("ep_collect", "", max_digits, timeout, terminators,
                                  inter_digit_timeout)  # fmt: skip
        return str(got)

    async def record(
        self, path: str | Path, max_seconds: float, *, silence: float = 5.0, terminators: str = "#"
    ) -> float:
        got = await self._request("ep_record", 0.0, str(path), max_seconds, silence, terminators)
        return float(got)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.worker.send(("ep_close", self.row))
        self._engine._closed(self)
        for future, lost in self._pending.values():
            if not future.done():
                future.set_result(lost)

    def release(self) -> None:
        """The worker has closed its copy (or died): the switch's copy of the socket goes."""
        self._sock.close()

    def _send(self, op: str, *args: Any) -> None:
        if not self.closed:
            self.worker.send((op, self.row, *args))

    async def _request(self, op: str, lost: Any, *args: Any) -> Any:
        """Ask the worker and wait for its answer; `lost` is the answer if the worker dies."""
        if self.closed:
            return lost
        rid = self._engine._rid()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, lost)
        self._engine._requests[rid] = self
        self.worker.send((op, self.row, rid, *args))
        try:
            return await future
        except asyncio.CancelledError:
            if not self.closed:
                self.worker.send(("cancel", rid))
            raise
        finally:
            self._pending.pop(rid, None)
            self._engine._requests.pop(rid, None)

    def _answered(self, rid: int, ok: bool, value: Any) -> None:
        entry = self._pending.get(rid)
        if entry is None or entry[0].done():
            return
        if ok:
            entry[0].set_result(value)
        else:
            entry[0].set_exception(RuntimeError(f"media worker: {value}"))

    def _worker_lost(self, worker: _Worker) -> None:
        """Our worker died: what was in progress ends as stopped; go on in ``worker``."""
        for future, lost in self._pending.values():
            if not future.done():
                future.set_result(lost)
        self.worker = worker
        if not self.closed:
            self._adopt()


class RemoteConference:
    """A `media.mixer.Conference` in the worker of its first member."""

    def __init__(self, engine: RemoteEngine, cid: int) -> None:
        self._engine = engine
        self.cid = cid
        self.worker: _Worker | None = None
        self.members: dict[int, tuple[str, int | None]] = {}  # eid -> (mode, to)
        self.closed = False

    def add(self, row: int, mode: Mode = Mode.FULL, to: int | None = None) -> None:
        endpoint = self._engine._endpoints[row]
        if self.worker is None:
            self.worker = endpoint.worker
            self.worker.send(("mix_new", self.cid))
        elif endpoint.worker is not self.worker:
            raise ValueError(f"{endpoint!r} is in another worker than the mix")
        self.members[row] = (mode.value, to)
        self.worker.send(("mix_add", self.cid, row, mode.value, to))

    def remove(self, row: int) -> None:
        if self.members.pop(row, None) is not None and self.worker is not None:
            self.worker.send(("mix_remove", self.cid, row))

    def close(self) -> None:
        if not self.closed and self.worker is not None:
            self.worker.send(("mix_close", self.cid))
        self.closed = True
        self._engine.mixes.pop(self.cid, None)

    def _worker_lost(self, worker: _Worker) -> None:
        self.worker = worker
        worker.send(("mix_new", self.cid))
        for row, (mode, to) in self.members.items():
            worker.send(("mix_add", self.cid, row, mode, to))


class RemoteRecording:
    """A `media.recorder.Recording` in a worker: ``path``, ``duration``, ``paused``, ``done``,
    ``stop()``, as that one's."""

    def __init__(self, engine: RemoteEngine, worker: _Worker, rid: int, path: Path) -> None:
        self._engine = engine
        self.worker = worker
        self.rid = rid
        self.path = path
        self._paused = False
        self._started = time.monotonic()
        self._duration: float | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def duration(self) -> float:
        """Seconds written (until the worker reports it: the time since the start)."""
        if self._duration is not None:
            return self._duration
        return time.monotonic() - self._started

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        self._paused = paused
        self.worker.send(("rec_pause", self.rid, paused))

    def stop(self, why: str = "stopped") -> None:
        if not self.done.done():
            self.worker.send(("rec_stop", self.rid))

    def _ended(self, seconds: float | None, why: str) -> None:
        self._duration = self.duration if seconds is None else seconds
        self._engine.recordings.pop(self.rid, None)
        if not self.done.done():
            self.done.set_result(why)


class RemoteEngine:
    """`MediaEngine`'s interface over the engines of a pool's workers (module docstring)."""

    def __init__(self, pool: RelayPool, host: str, recordings: str | Path) -> None:
        self._pool = pool
        self.host = host
        self.recordings_dir = Path(recordings).resolve()
        self._endpoints: dict[int, RemoteEndpoint] = {}
        self.mixes: dict[int, RemoteConference] = {}
        self.recordings: dict[int, RemoteRecording] = {}
        self._requests: dict[int, RemoteEndpoint] = {}
        self._counters: dict[str, dict[str, float]] = {}  # worker name -> its engine's
        self._gone = EngineStats()  # counters of workers that died

    @property
    def stats(self) -> EngineStats:
        """The workers' engines' counters added up (as of their last report)."""
        total = EngineStats()
        for name in _COUNTERS:
            value = getattr(self._gone, name)
            value += sum(c.get(name, 0) for c in self._counters.values())
            setattr(total, name, value)
        return total

    @property
    def endpoints(self) -> int:
        return len(self._endpoints)

    def endpoint(self, *, near: object = None) -> RemoteEndpoint:
        """An endpoint in the worker of the relay session ``near`` (else the least busy)."""
        worker = getattr(near, "worker", None)
        if worker is None or not worker.alive:
            worker = self._pool._place(None)
        endpoint = RemoteEndpoint(self, worker, self._rid())
        self._endpoints[endpoint.row] = endpoint
        return endpoint

    def conference(self) -> RemoteConference:
        mix = RemoteConference(self, self._rid())
        self.mixes[mix.cid] = mix
        return mix

    def near(self, row: int, mix: RemoteConference) -> bool:
        """Whether the endpoint of ``row`` can join ``mix`` (same worker, or an empty mix)."""
        return mix.worker is None or self._endpoints[row].worker is mix.worker

    def record(self, path: str | Path, rows: list[int], **options: object) -> RemoteRecording:
        worker = self._endpoints[rows[0]].worker
        rid = self._rid()
        recording = RemoteRecording(self, worker, rid, target_path(self.recordings_dir, path))
        self.recordings[rid] = recording
        worker.send(("rec_new", rid, str(recording.path), rows, options))
        return recording

    def close(self) -> None:
        for endpoint in list(self._endpoints.values()):
            endpoint.close()

    # -- from the pool ---------------------------------------------------------------------

    def _rid(self) -> int:
        return next(self._pool._ids)

    def _closed(self, endpoint: RemoteEndpoint) -> None:
        # The socket copy goes once the worker has closed its own (ordered after ep_close).
        self._pool._after_worker(endpoint.worker, endpoint.release)
        self._endpoints.pop(endpoint.row, None)

    def message(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        op = message[0]
        if op == "done":
            endpoint = self._requests.get(message[1])
            if endpoint is not None:
                endpoint._answered(message[1], message[2], message[3])
        elif op == "rec_done":
            recording = self.recordings.get(message[1])
            if recording is not None:
                recording._ended(message[3], "stopped")
        elif op in ("digit", "info"):
            endpoint = self._endpoints.get(message[1])
            if endpoint is not None:
                handler = endpoint.on_digit if op == "digit" else endpoint.on_info
                if handler is not None:
                    handler(message[2])
        elif op == "engine":
            self._counters[worker.name] = message[1]

    def worker_lost(self, dead: _Worker, worker: _Worker) -> None:
        """``dead`` died and ``worker`` took its place: hand over endpoints and mixes."""
        counters = self._counters.pop(dead.name, {})
        for name in _COUNTERS:
            setattr(self._gone, name, getattr(self._gone, name) + counters.get(name, 0))
        for recording in list(self.recordings.values()):
            if recording.worker is dead:
                recording._ended(None, "worker died")
        moved = [e for e in self._endpoints.values() if e.worker is dead]
        for endpoint in moved:
            endpoint._worker_lost(worker)
        for mix in self.mixes.values():
            if mix.worker is dead:
                mix._worker_lost(worker)
        if moved:
            log.info("media endpoints handed to a new worker", worker=worker.name,
                     endpoints=len(moved))  # fmt: skip
