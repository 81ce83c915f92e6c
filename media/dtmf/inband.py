"""In-band DTMF: the key tones found in decoded audio, for all sessions of a worker at once.

The fallback when a phone sends neither RFC 4733 events nor INFO: the media clock hands
`InbandDetector.feed` one 20 ms frame (160 samples at 8 kHz) for each session slot, and gets
back the keys that became certain on that frame.

How (every step is NumPy over all rows of the block):

- Spectrum: each tone is measured at its frequency and 1.5 % either side (the deviation
  Q.24 makes a receiver accept; at 3.5 % it is refused), on 20 ms windows every 10 ms, so
  that any 40 ms tone fills at least two whole windows whatever its alignment to the frames.
  The measure is Goertzel's, the DFT at one exact frequency, done as one matrix product of
  each 10 ms half-frame with an 80 x 24 complex basis; a window is the previous half plus
  the next one turned by the phase of 80 samples, so each slot keeps only the 24 values of
  its last half-frame.
- A window holds a key when (thresholds ITU-T Q.24-style, chosen for a G.711 line):
  the strongest row tone and the strongest column tone each beat the others of their group
  by `GROUP_MARGIN_DB`; the two together reach `MIN_LEVEL_DBM0`; the column tone is at most
  `MAX_HIGH_OVER_LOW_DB` above the row tone and at most `MAX_LOW_OVER_HIGH_DB` below it
  (lines lose highs, so the low tone may lead by more); and the two tones are at least
  `MIN_TONE_SHARE` of the window's energy — speech, music and noise spread their energy
  and fail here, and so does a window only partly filled with a tone.
- A key is reported once, when `RUN` consecutive windows hold it (a tone of 40 ms is always
  found, one of 20 ms never, 25-35 ms depending on alignment), and reported again only
  after `GAP` windows without it (a pause of 30 ms always re-arms it; a break of up to 15 ms
  never does, so a lost packet concealed as silence may). A different key needs no pause.

It does not decode G.711, know sessions, or report durations (the IVR needs the key; a
press's length is not measured in-band). Rows are expected every 20 ms while a session is
watched; a slot not fed for a while keeps a stale half-frame, which spoils one window.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from media.dtmf.digit import DIGITS, check_digit

RATE: Final = 8000
FRAME: Final = 160
"""Samples per frame fed (20 ms at 8 kHz)."""
HALF: Final = FRAME // 2
ROW_HZ: Final = (697.0, 770.0, 852.0, 941.0)
COLUMN_HZ: Final = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD: Final = "123A456B789C*0#D"
"""The key at (row, column): ``KEYPAD[4 * row + column]``."""

GROUP_MARGIN_DB: Final = 6.0
MIN_LEVEL_DBM0: Final = -30.0
MAX_HIGH_OVER_LOW_DB: Final = 4.0
MAX_LOW_OVER_HIGH_DB: Final = 8.0
MIN_TONE_SHARE: Final = 0.8
RUN: Final = 2
GAP: Final = 4

DBM0_AMPLITUDE: Final = 32124 * 10 ** (-3.17 / 20)
"""Peak of a 0 dBm0 sine in 16-bit linear: G.711's largest value is +3.17 dBm0 (G.711 §3)."""

SPREAD: Final = 0.015
"""Each tone is probed at its frequency and SPREAD above and below (Q.24 allows ±1.5 %)."""

_PROBES: Final = np.outer(ROW_HZ + COLUMN_HZ, (1 - SPREAD, 1.0, 1 + SPREAD)).ravel()
_BASIS: Final = np.exp(-2j * np.pi * np.outer(np.arange(HALF), _PROBES) / RATE)
# A real matrix whose product with samples gives (re, im) pairs, read back as complex64.
_BASIS_RI: Final = np.stack([_BASIS.real, _BASIS.imag], -1).reshape(HALF, -1).astype(np.float32)
_TURN: Final = np.exp(-2j * np.pi * _PROBES * HALF / RATE).astype(np.complex64)
# |X|^2 of a window for a sine of amplitude A is (A * FRAME / 2)^2; the sine's power is A^2 / 2.
_POWER_PER_DBM0: Final = (DBM0_AMPLITUDE * FRAME / 2) ** 2


# Per-slot counters, one int8 column each, in this order: the key the last window held
# (-1: none) and for how many windows in a row; the key last reported (-1: none, or
# forgotten after a pause) and for how many windows it has been absent.
_FRESH: Final = np.array([-1, 0, -1, 0], np.int8)


def _ratio(db: float) -> float:
    return float(10 ** (db / 10))


class InbandDetector:
    """Tone detection state for ``capacity`` session slots; see the module docstring."""

    def __init__(self, capacity: int) -> None:
        self.capacity = 0
        self._spectrum = np.zeros((0, len(_PROBES)), np.complex64)
        """The last half-frame at each probe frequency."""
        self._energy = np.zeros(0, np.float32)
        """The last half-frame's sum of squares."""
        self._counters = np.zeros((0, len(_FRESH)), np.int8)
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Make room for slots up to ``capacity`` (never shrinks); new slots start reset."""
        extra = capacity - self.capacity
        if extra <= 0:
            return
        probes = np.zeros((extra, len(_PROBES)), np.complex64)
        self._spectrum = np.concatenate([self._spectrum, probes])
        self._energy = np.concatenate([self._energy, np.zeros(extra, np.float32)])
        self._counters = np.concatenate([self._counters, np.tile(_FRESH, (extra, 1))])
        self.capacity = capacity

    def reset(self, row: int) -> None:
        """Forget slot ``row``'s past: a new session takes it."""
        self._spectrum[row] = 0
        self._energy[row] = 0
        self._counters[row] = _FRESH

    def feed(
        self, rows: npt.NDArray[np.integer], frames: npt.NDArray[np.int16]
    ) -> list[tuple[int, str]]:
        """One 20 ms frame for each slot of ``rows`` (distinct, < capacity): the keys found.

        ``frames`` is int16 of shape ``(len(rows), 160)``. Returns (row, key) pairs, in the
        order of ``rows``, for the keys that became certain on this frame.
        """
        slots = np.asarray(rows, dtype=np.intp)
        if slots.ndim != 1 or frames.shape != (len(slots), FRAME):
            raise ValueError(
                f"frames of shape {frames.shape} for {slots.shape} rows: "
                f"expected ({len(slots)}, {FRAME}) int16 and a 1-D row list"
            )
        if len(slots) == 0:
            return []
        if slots.min() < 0 or slots.max() >= self.capacity:
            raise ValueError(f"row out of range 0-{self.capacity - 1}: grow() first")
        found = self._count(slots, self._keys(slots, frames))
        hits = np.flatnonzero(found >= 0)
        return [(int(slots[i]), KEYPAD[found[i]]) for i in hits]

    def _keys(
        self, rows: npt.NDArray[np.intp], frames: npt.NDArray[np.int16]
    ) -> npt.NDArray[np.int8]:
        """The key each of the frame's two windows holds (index into `KEYPAD`), or -1."""
        halves = frames.astype(np.float32).reshape(-1, HALF)
        spectrum = (halves @ _BASIS_RI).view(np.complex64).reshape(len(rows), 2, -1)
        energy = np.einsum("ij,ij->i", halves, halves).reshape(len(rows), 2)
        first, second = spectrum[:, 0], spectrum[:, 1]
        windows = np.empty_like(spectrum)
        np.multiply(first, _TURN, out=windows[:, 0])
        windows[:, 0] += self._spectrum[rows]
        np.multiply(second, _TURN, out=windows[:, 1])
        windows[:, 1] += first
        window_energy = energy.copy()
        window_energy[:, 0] += self._energy[rows]
        window_energy[:, 1] += energy[:, 0]
        self._spectrum[rows] = second
        self._energy[rows] = energy[:, 1]

        # Power of each tone: the best of its three probes. Then tone-major, so that the
        # steps below work on whole (rows, 2) planes instead of short inner axes.
        probes = (windows.real**2 + windows.imag**2).reshape(len(rows), 2, 8, 3)
        power = np.maximum(np.maximum(probes[..., 0], probes[..., 1]), probes[..., 2])
        tones = power.transpose(2, 0, 1)
        row, low, low_next = _strongest(tones[:4])
        column, high, high_next = _strongest(tones[4:])
        both = low + high
        margin = _ratio(GROUP_MARGIN_DB)
        ok = (
            (low >= margin * low_next)
            & (high >= margin * high_next)
            & (both >= _POWER_PER_DBM0 * _ratio(MIN_LEVEL_DBM0))
            & (high <= _ratio(MAX_HIGH_OVER_LOW_DB) * low)
            & (low <= _ratio(MAX_LOW_OVER_HIGH_DB) * high)
            # Parseval: a window that is nothing but the two sines has 2 * both / FRAME of
            # |X|^2 for each unit of sum(x^2).
            & (2 * both >= MIN_TONE_SHARE * FRAME * window_energy)
        )
        return np.where(ok, 4 * row + column, -1).astype(np.int8)

    def _count(
        self, rows: npt.NDArray[np.intp], keys: npt.NDArray[np.int8]
    ) -> npt.NDArray[np.int8]:
        """Run the slots' counters over the frame's windows: the key reported per row, or -1."""
        held, run, reported, absent = self._counters[rows].T
        found = np.full(len(rows), -1, np.int8)
        for key in keys.T:
            # Arithmetic on booleans rather than np.where: these arrays are often tiny, and
            # then the per-call cost of each NumPy function is what counts.
            run = np.minimum(run * (key == held) + 1, RUN + 1) * (key >= 0)
            held = key
            absent = np.minimum((absent + 1) * (key != reported), GAP)
            reported[absent >= GAP] = -1
            new = (run == RUN) & (key != reported)
            found[new] = reported[new] = key[new]
            absent[new] = 0
        self._counters[rows] = np.stack([held, run, reported, absent], 1)
        return found


def _strongest(
    group: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Of four tone planes: which is strongest, its power, and the runner-up's power.

    Comparisons instead of sort/argmax along a length-4 axis (several times faster in
    NumPy). On a tie the index is meaningless, but then the margin test fails anyway.
    """
    a, b, c, d = group
    ab, ba = np.maximum(a, b), np.minimum(a, b)
    cd, dc = np.maximum(c, d), np.minimum(c, d)
    top = np.maximum(ab, cd)
    runner_up = np.maximum(np.minimum(ab, cd), np.maximum(ba, dc))
    index = (b == top).view(np.int8) + 2 * (c == top).view(np.int8) + 3 * (d == top).view(np.int8)
    return index, top, runner_up


def tone(
    digit: str,
    ms: int,
    rate: int = RATE,
    level_dbm0: float = -10,
    *,
    twist_db: float = 0.0,
    phase: float = 0.0,
) -> npt.NDArray[np.int16]:
    """The two sines of ``digit`` for ``ms`` milliseconds, int16 (in-band sending, tests).

    ``level_dbm0`` is the level of each tone; ``twist_db`` raises the column (high) tone
    above the row (low) tone by that much, or lowers it when negative. ``phase`` (radians)
    starts the row tone off zero. ValueError for a non-DTMF key.
    """
    key = KEYPAD.index(DIGITS[check_digit(digit)])
    low_hz, high_hz = ROW_HZ[key // 4], COLUMN_HZ[key % 4]
    t = np.arange(ms * rate // 1000) / rate
    amplitude = DBM0_AMPLITUDE * 10 ** (level_dbm0 / 20)
    wave = np.sin(2 * np.pi * low_hz * t + phase) + 10 ** (twist_db / 20) * np.sin(
        2 * np.pi * high_hz * t
    )
    return np.clip(np.rint(amplitude * wave), -32768, 32767).astype(np.int16)
