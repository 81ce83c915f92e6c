"""Playback of prompts and music into endpoints, 20 ms at a time for all of them at once.

Every sound an engine plays lives once in its `SampleBank`: one int16 array at 8 kHz, each
sound a (start, length) span of it, added the first time it is played and then shared by
every endpoint that plays it. A `Players` row says what one endpoint is playing: the span,
how far it got, whether it loops (music on hold), and what comes after (a phrase such as
"you are number" + "5" + "in the queue" is a list of spans). The tick takes the next 160
samples of every playing row with one gather (`Players.frames`); Python runs only when a row
reaches the end of a span.

Music starts and stops without clicks: the first frame of a start is faded in and the frame
of a stop faded out (a linear ramp over 20 ms), so the waveform never jumps.

Not done here: mixing two sounds on one endpoint (a new play replaces the old one), volume,
sounds at rates other than 8 kHz (``media.audio`` converts files when they are loaded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from media.jitter import FRAME

__all__ = ["Players", "SampleBank", "Span"]

_OFFSETS: Final = np.arange(FRAME, dtype=np.int64)
_RAMP_UP: Final = np.linspace(0.0, 1.0, FRAME, dtype=np.float32)
_RAMP_DOWN: Final = _RAMP_UP[::-1].copy()


@dataclass(frozen=True, slots=True)
class Span:
    """One sound in the bank."""

    start: int
    length: int


class SampleBank:
    """Every sound an engine has played, once (see the module docstring)."""

    def __init__(self) -> None:
        self.samples = np.zeros(FRAME, np.int16)  # a frame of silence first
        self._spans: dict[Hashable, Span] = {}

    def get(self, key: Hashable) -> Span | None:
        return self._spans.get(key)

    def add(self, key: Hashable, samples: np.ndarray) -> Span:
        """The span of ``samples`` (int16, 8 kHz, mono), stored under ``key`` unless it is."""
        span = self._spans.get(key)
        if span is None:
            span = Span(len(self.samples), len(samples))
            self.samples = np.concatenate([self.samples, samples.astype(np.int16, copy=False)])
            self._spans[key] = span
        return span


@dataclass(slots=True)
class _Play:
    loop: bool
    done: asyncio.Future[bool] | None  # True: played to the end; False: stopped
    fading_out: bool = False
    queue: list[Span] = field(default_factory=list)


class Players:
    """What every endpoint row is playing (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.start = np.zeros(capacity, np.int64)
        self.length = np.ones(capacity, np.int64)
        self.offset = np.zeros(capacity, np.int64)
        self.loop = np.zeros(capacity, bool)
        self.fade = np.zeros(capacity, np.int8)  # +1: fade in this frame; -1: fade out
        self._plays: dict[int, _Play] = {}
        self._rows = np.zeros(0, np.int64)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.start = np.concatenate([self.start, np.zeros(extra, np.int64)])
        self.length = np.concatenate([self.length, np.ones(extra, np.int64)])
        self.offset = np.concatenate([self.offset, np.zeros(extra, np.int64)])
        self.loop = np.concatenate([self.loop, np.zeros(extra, bool)])
        self.fade = np.concatenate([self.fade, np.zeros(extra, np.int8)])
        self.capacity = capacity

    @property
    def rows(self) -> np.ndarray:
        """The rows playing something, sorted."""
        return self._rows

    def playing(self, row: int) -> bool:
        return row in self._plays

    def play(
        self, row: int, spans: Sequence[Span], *, loop: bool = False, fade: bool = False
    ) -> asyncio.Future[bool]:
        """Play ``spans`` one after the other on ``row`` (replacing what it played).

        The future is True when the last span has been sent, False if it was stopped.
        """
        self.stop(row, fade=False)
        done = asyncio.get_running_loop().create_future()
        spans = [s for s in spans if s.length > 0]
        if not spans:
            done.set_result(True)
            return done
        self._plays[row] = _Play(loop, done, queue=spans[1:])
        self._begin(row, spans[0], loop)
        self.fade[row] = 1 if fade else 0
        self._refresh()
        return done

    def stop(self, row: int, *, fade: bool = True) -> None:
        """Stop ``row``: after one faded frame, or at once."""
        play = self._plays.get(row)
        if play is None:
            return
        if fade and not play.fading_out:
            play.fading_out = True
            self.fade[row] = -1
            return
        del self._plays[row]
        self._refresh()
        if play.done is not None and not play.done.done():
            play.done.set_result(False)

    def frames(self, rows: np.ndarray, bank: np.ndarray) -> np.ndarray:
        """The next frame of each of ``rows`` (all playing), and advance them."""
        rel = self.offset[rows, None] + _OFFSETS
        length = self.length[rows, None]
        looping = self.loop[rows, None]
        rel = np.where(looping, rel % length, rel)
        frames = np.where(
            rel < length, bank[self.start[rows, None] + np.minimum(rel, length - 1)], 0
        )
        fade = self.fade[rows]
        if fade.any():
            ramp = np.where(fade[:, None] > 0, _RAMP_UP, np.where(fade[:, None] < 0, _RAMP_DOWN, 1))
            frames = (frames * ramp).astype(np.int16)
        self.offset[rows] += FRAME
        self._after(rows, fade)
        return frames.astype(np.int16, copy=False)

    def _after(self, rows: np.ndarray, fade: np.ndarray) -> None:
        """Rows whose frame was a fade-out or the end of a span: on to what comes next."""
        ended = (self.offset[rows] >= self.length[rows]) & ~self.loop[rows]
        self.fade[rows] = np.where(fade > 0, 0, fade)
        for row in rows[ended | (fade < 0)].tolist():
            play = self._plays[row]
            if play.fading_out:
                self.stop(row, fade=False)
            elif play.queue:
                self._begin(row, play.queue.pop(0), play.loop)
            else:
                del self._plays[row]
                self._refresh()
                if play.done is not None and not play.done.done():
                    play.done.set_result(True)

    def _begin(self, row: int, span: Span, loop: bool) -> None:
        self.start[row] = span.start
        self.length[row] = span.length
        self.offset[row] = 0
        self.loop[row] = loop

    def _refresh(self) -> None:
        self._rows = np.array(sorted(self._plays), dtype=np.int64)
