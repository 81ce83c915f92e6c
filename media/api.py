"""What the switch needs of the media path: the relay and the engine in its own process
(`media.relay.Relay`, `media.engine.MediaEngine`), or in worker processes
(`media.workers.RelayPool`, `media.remote.RemoteEngine`). The B2BUA is typed against these."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import Any, Protocol

from media.config import RelayConfig
from media.engine import EngineStats
from media.mixer import Mode
from media.relay import TimeoutHandler
from media.stats import Addr, LocalMedia, RelayTotals, SessionStats, Side, StatsCell

__all__ = [
    "ConferenceLike",
    "EndpointLike",
    "EngineLike",
    "RecordingLike",
    "RelayLike",
    "RelaySessionLike",
]


class RelaySessionLike(Protocol):
    call_id: str

    @property
    def closed(self) -> bool: ...

    def local(self, side: Side) -> LocalMedia: ...

    def set_remote(
        self,
        side: Side,
        host: str,
        port: int,
        rtcp_port: int | None = None,
        *,
        ssrc: int | None = None,
        clock_rate: int = 8000,
    ) -> None: ...

    def set_hold(self, side: Side, on: bool) -> None: ...

    # `other` is a session of the same relay (each kind joins only its own).
    def join(self, side: Side, other: Any, other_side: Side) -> RelaySessionLike: ...

    def stats(self) -> SessionStats: ...

    def snapshot(self) -> StatsCell: ...

    def close(self) -> SessionStats: ...


class RelayLike(Protocol):
    config: RelayConfig

    @property
    def local_host(self) -> str: ...

    def allocate(
        self, call_id: str, *, on_timeout: TimeoutHandler | None = None
    ) -> RelaySessionLike: ...

    def totals(self) -> RelayTotals: ...

    def close(self) -> None: ...


class EndpointLike(Protocol):
    """`media.endpoint.EngineEndpoint`, or `media.remote.RemoteEndpoint` in a worker."""

    on_digit: Callable[[str], None] | None
    on_info: Callable[[str], None] | None

    @property
    def row(self) -> int: ...

    @property
    def address(self) -> Addr: ...

    @property
    def closed(self) -> bool: ...

    def attach(self, peer: Addr) -> None: ...

    def set_format(self, codec: str, pt: int, events_pt: int | None) -> None: ...

    def start_music(self, path: str | None = None) -> None: ...

    def stop_music(self) -> None: ...

    def flush_digits(self) -> None: ...

    def send_digit(self, digit: str, duration_ms: int = 100) -> None: ...

    def digit(self, digit: str, *, in_audio: bool = False) -> None: ...

    async def play(
        self, prompts: str | Sequence[str], *, language: str | None = None, interrupt: bool = False
    ) -> bool: ...

    async def collect(
        self,
        max_digits: int,
        timeout: float,
        terminators: str = "#",
        inter_digit_timeout: float | None = None,
    ) -> str: ...

    async def record(
        self, path: str | Path, max_seconds: float, *, silence: float = 5.0, terminators: str = "#"
    ) -> float: ...

    def close(self) -> None: ...


class ConferenceLike(Protocol):
    def add(self, row: int, mode: Mode = Mode.FULL, to: int | None = None) -> None: ...

    def remove(self, row: int) -> None: ...

    def close(self) -> None: ...


class RecordingLike(Protocol):
    path: Path
    paused: bool

    @property
    def done(self) -> asyncio.Future[str]: ...

    @property
    def duration(self) -> float: ...

    def stop(self, why: str = "stopped") -> None: ...


class EngineLike(Protocol):
    """`media.engine.MediaEngine`, or `media.remote.RemoteEngine` over media workers."""

    @property
    def stats(self) -> EngineStats: ...

    @property
    def endpoints(self) -> int: ...

    @property
    def recordings(self) -> Sized: ...

    # `near`: the relay session (or mix) the endpoint will work with; workers put it there.
    def endpoint(self, *, near: object = None) -> EndpointLike: ...

    def conference(self) -> ConferenceLike: ...

    def near(self, row: int, mix: Any) -> bool: ...

    def record(self, path: str | Path, rows: list[int], **options: object) -> RecordingLike: ...

    def close(self) -> None: ...
