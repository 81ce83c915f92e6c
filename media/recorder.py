"""Recordings: what endpoints receive, written to WAV files as it arrives, 20 ms at a time.

A `Recording` names the endpoint rows it takes its audio from: two rows make a stereo file
(the first row left, the second right: the caller's voice left, the callee's right), one row
or ``mixed=True`` a mono file. What a row "receives" is its phone's voice after the jitter
buffer, so a phone on hold or a dropped packet is silence in the file at the right moment,
and the two channels stay aligned sample for sample.

Files are written progressively by `media.audio.WavWriter`, which fixes the WAV header at
least once a second: a crash of the daemon loses at most the last second. ``pause`` writes
silence instead of audio until ``resume`` (a caller reading a card number), so the file's
timeline stays the call's. A source that leaves (its endpoint closed: a transfer, a hangup)
becomes silence; the recording goes on until it is stopped.

The end of a recording of one phone (voicemail) is decided here too: ``max_seconds``, or
``silence`` seconds below ``SILENCE_LEVEL``, whichever first (`Recording.done`); DTMF
terminators are the endpoint's.

Not done here: compression (files are 16-bit PCM, 32 kB/s stereo), splitting long files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import numpy as np

from media.audio import WavWriter
from media.jitter import FRAME

__all__ = ["SILENCE_LEVEL", "Recording"]

RATE: Final = 8000
SILENCE_LEVEL: Final = 300  # RMS of a 16-bit frame below which a frame counts as silence


def target_path(recordings: Path, path: str | Path) -> Path:
    """Where a recording of ``path`` goes: relative paths under the ``recordings`` folder."""
    target = Path(path)
    return target if target.is_absolute() else recordings / target


class Recording:
    """One file being written from one or two rows (see the module docstring)."""

    def __init__(
        self,
        path: str | Path,
        rows: list[int],
        *,
        mixed: bool = False,
        max_seconds: float | None = None,
        silence: float | None = None,
    ) -> None:
        if not 1 <= len(rows) <= 2:
            raise ValueError(f"a recording takes one or two sources, not {len(rows)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = np.array(rows, np.int64)  # -1: a source that left (silence)
        self.mixed = mixed or len(rows) == 1
        self.writer = WavWriter(self.path, 1 if self.mixed else 2, RATE)
        self.paused = False
        self._max_frames = None if max_seconds is None else int(max_seconds * RATE / FRAME)
        self._silence_frames = None if silence is None else int(silence * RATE / FRAME)
        self._quiet = 0
        self._frames = 0
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    def duration(self) -> float:
        return self._frames * FRAME / RATE

    def leave(self, row: int) -> None:
        """``row``'s endpoint is gone: its channel is silence from now on."""
        self.rows[self.rows == row] = -1

    def take(self, frames: np.ndarray) -> None:
        """Write this tick's frames of the recorded rows, out of every row's ``frames``."""
        block = frames[np.maximum(self.rows, 0)]
        block[self.rows < 0] = 0
        self.write(block)

    def write(self, frames: np.ndarray) -> None:
        """Frames of the sources (int16, one row per source)."""
        if self.done.done():
            return
        if self.paused:
            frames = np.zeros_like(frames)
        if self.mixed:
            mono = np.clip(frames.astype(np.int32).sum(axis=0), -32768, 32767).astype(np.int16)
            self.writer.write(mono)
            level = mono
        else:
            self.writer.write(frames.T)
            level = frames
        self._frames += 1
        if self._silence_frames is not None:
            rms = float(np.sqrt(np.mean(level.astype(np.float32) ** 2)))
            self._quiet = self._quiet + 1 if rms < SILENCE_LEVEL else 0
            if self._quiet >= self._silence_frames:
                self.stop("silence")
        if self._max_frames is not None and self._frames >= self._max_frames:
            self.stop("max_seconds")

    def stop(self, why: str = "stopped") -> None:
        if not self.done.done():
            self.writer.close()
            self.done.set_result(why)
