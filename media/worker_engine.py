"""The media engine of a media worker: the orders about endpoints, mixes and recordings.

`media.worker.Worker` runs one `media.engine.MediaEngine` beside its relay when the switch
asks for one, and this class carries out the switch's orders on it (`media.remote` is the
switch's side). Endpoints, mixes and recordings are named by ids the switch chose:

    ("ep_new", eid)                       + the endpoint's UDP socket (bound by the switch)
    ("ep_attach", eid, host, port)        ("ep_format", eid, codec, pt, events_pt)
    ("ep_music", eid, path)               ("ep_music_stop", eid)
    ("ep_flush", eid)                     ("ep_send_digit", eid, digit, duration_ms)
    ("ep_digit", eid, digit, in_audio)    ("ep_forward", eid, digits, info)
    ("ep_close", eid)
    ("ep_play", eid, rid, names, language, interrupt)
    ("ep_collect", eid, rid, max_digits, timeout, terminators, inter_digit_timeout)
    ("ep_record", eid, rid, path, max_seconds, silence, terminators)
    ("cancel", rid)
    ("mix_new", cid)  ("mix_add", cid, eid, mode, to)  ("mix_remove", cid, eid)  ("mix_close", cid)
    ("rec_new", rid, path, [eid], options)  ("rec_pause", rid, paused)  ("rec_stop", rid)

and tells the switch:

    ("done", rid, ok, value)              an ep_play/collect/record ended (ok False: an error)
    ("rec_done", rid, path, seconds)      a recording ended
    ("digit", eid, digit)                 a digit, for an endpoint whose digits are forwarded
    ("info", eid, digit)                  a digit to send by SIP INFO
    ("engine", {counter: value})          with every push of counters
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from media.channel import Channel
from media.endpoint import EngineEndpoint
from media.engine import MediaEngine
from media.mixer import Conference, Mode
from media.prompts import Prompts
from media.recorder import Recording

__all__ = ["EngineOrders", "EngineSettings"]

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What a worker's engine needs from the switch's configuration (JSON-able)."""

    host: str = "127.0.0.1"
    prompts: str | None = None  # a folder of one's own; None: the packaged prompts
    language: str = "en"
    recordings: str = "recordings"


class EngineOrders:
    def __init__(self, channel: Channel, settings: EngineSettings) -> None:
        self.channel = channel
        self.engine = MediaEngine(
            settings.host,
            prompts=Prompts(Path(settings.prompts)) if settings.prompts else None,
            language=settings.language,
            recordings=settings.recordings,
        )
        self.endpoints: dict[int, EngineEndpoint] = {}
        self.mixes: dict[int, Conference] = {}
        self.recordings: dict[int, Recording] = {}
        self.tasks: dict[int, asyncio.Task[Any]] = {}

    def handlers(self) -> dict[str, Callable[..., None]]:
        return {
            "ep_new": self._ep_new,
            "ep_attach": lambda eid, host, port: self.endpoints[eid].attach((host, port)),
            "ep_format": lambda eid, *fmt: self.endpoints[eid].set_format(*fmt),
            "ep_music": lambda eid, path: self.endpoints[eid].start_music(path),
            "ep_music_stop": lambda eid: self.endpoints[eid].stop_music(),
            "ep_flush": lambda eid: self.endpoints[eid].flush_digits(),
            "ep_send_digit": lambda eid, d, ms: self.endpoints[eid].send_digit(d, ms),
            "ep_digit": lambda eid, d, in_audio: self.endpoints[eid].digit(d, in_audio=in_audio),
            "ep_forward": self._ep_forward,
            "ep_close": self._ep_close,
            "ep_play": self._ep_play,
            "ep_collect": self._ep_collect,
            "ep_record": self._ep_record,
            "cancel": self._cancel,
            "mix_new": self._mix_new,
            "mix_add": self._mix_add,
            "mix_remove": self._mix_remove,
            "mix_close": self._mix_close,
            "rec_new": self._rec_new,
            "rec_pause": self._rec_pause,
            "rec_stop": self._rec_stop,
        }

    def counters(self) -> dict[str, float]:
        s, e = self.engine.stats, self.engine
        return {"endpoints": e.endpoints, "recordings": len(e.recordings), "ticks": s.ticks,
                "late_ticks": s.late_ticks, "tick_seconds": s.tick_seconds,
                "packets_in": s.packets_in, "packets_out": s.packets_out,
                "digits": s.digits}  # fmt: skip

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for endpoint in self.endpoints.values():
            endpoint.close()
        self.engine.close()

    # -- endpoints -------------------------------------------------------------------------

    def _ep_new(self, eid: int, *, socks: list[socket.socket]) -> None:
        if len(socks) != 1:
            for sock in socks:
                sock.close()
            raise ValueError(f"ep_new needs 1 socket, got {len(socks)}")
        self.endpoints[eid] = self.engine.endpoint(socks[0])

    def _ep_forward(self, eid: int, digits: bool, info: bool) -> None:
        endpoint, send = self.endpoints[eid], self.channel.send
        endpoint.on_digit = (lambda d: send(("digit", eid, d))) if digits else None
        endpoint.on_info = (lambda d: send(("info", eid, d))) if info else None

    def _ep_close(self, eid: int) -> None:
        endpoint = self.endpoints.pop(eid, None)
        if endpoint is not None:
            endpoint.close()

    def _ep_play(self, eid: int, rid: int, names: list[str], language: str | None,
                 interrupt: bool) -> None:  # fmt: skip
        self._run(rid, self.endpoints[eid].play(names, language=language, interrupt=interrupt))

    def _ep_collect(self, eid: int, rid: int, max_digits: int, timeout: float,
                    terminators: str, inter: float | None) -> None:  # fmt: skip
        self._run(rid, self.endpoints[eid].collect(max_digits, timeout, terminators, inter))

    def _ep_record(self, eid: int, rid: int, path: str, max_seconds: float, silence: float,
                   terminators: str) -> None:  # fmt: skip
        work = self.endpoints[eid].record(path, max_seconds, silence=silence,
                                          terminators=terminators)  # fmt: skip
        self._run(rid, work)

    def _run(self, rid: int, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks[rid] = task

        def done(task: asyncio.Task[Any]) -> None:
            self.tasks.pop(rid, None)
            if task.cancelled():
                return  # the switch cancelled it and waits for nothing
            error = task.exception()
            if error is None:
                self.channel.send(("done", rid, True, task.result()))
            else:
                log.error("media operation failed", rid=rid, error=repr(error))
                self.channel.send(("done", rid, False, f"{type(error).__name__}: {error}"))

        task.add_done_callback(done)

    def _cancel(self, rid: int) -> None:
        task = self.tasks.pop(rid, None)
        if task is not None:
            task.cancel()

    # -- mixes and recordings --------------------------------------------------------------

    def _mix_new(self, cid: int) -> None:
        self.mixes[cid] = self.engine.conference()

    def _mix_add(self, cid: int, eid: int, mode: str, to: int | None) -> None:
        row = self.endpoints[eid].row
        to_row = None if to is None else self.endpoints[to].row
        self.mixes[cid].add(row, Mode(mode), to=to_row)

    def _mix_remove(self, cid: int, eid: int) -> None:
        # An endpoint that closed has left its mixes already (MediaEngine.release).
        mix, endpoint = self.mixes.get(cid), self.endpoints.get(eid)
        if mix is not None and endpoint is not None:
            mix.remove(endpoint.row)

    def _mix_close(self, cid: int) -> None:
        mix = self.mixes.pop(cid, None)
        if mix is not None:
            mix.close()

    def _rec_new(self, rid: int, path: str, eids: list[int], options: dict[str, Any]) -> None:
        rows = [self.endpoints[eid].row for eid in eids]
        recording = self.engine.record(path, rows, **options)
        self.recordings[rid] = recording

        def ended(_: object) -> None:
            self.recordings.pop(rid, None)
            self.channel.send(("rec_done", rid, str(recording.path), recording.duration))

        recording.done.add_done_callback(ended)

    def _rec_pause(self, rid: int, paused: bool) -> None:
        recording = self.recordings.get(rid)
        if recording is not None:
            recording.paused = paused

    def _rec_stop(self, rid: int) -> None:
        recording = self.recordings.get(rid)
        if recording is not None:
            recording.stop()
