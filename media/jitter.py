"""Jitter buffers of all a media engine's endpoints, as arrays with one row per endpoint slot.

What comes in from a phone is RTP in 20 ms packets that arrive late, early, twice, out of
order, or not at all. The engine's clock (``media.engine``) takes exactly one frame per
endpoint every 20 ms; in between sits this buffer.

Each row holds ``DEPTH`` cells, each the raw bytes of one received packet: the socket reads
straight into the next cell of the row (round robin, no copy), and the cell is tagged with the
packet's extended sequence number (RFC 3550 §A.1: 16-bit numbers unwrapped against the last
one seen). Playout is by sequence number, for all rows at once: the tick looks for the cell
whose tag is the row's next number (`JitterBuffers.playout`), so reordering inside the depth
is undone by the lookup itself. A row starts playing ``DELAY`` frames behind the first packet
(40 ms of jitter absorbed); a packet older than the playout point is dropped as late; a jump
of more than ``RESYNC`` frames either way (a new stream, a phone coming back from hold with a
new clock) restarts the row there. A missing frame is concealed by the previous one at half
level, once, then silence (the cheap packet-loss concealment of G.711 Appendix I's spirit,
not its algorithm); a row that missed ``DEPTH`` frames in a row stops until its next packet.

Not done here: adaptive depth (the delay is fixed), time-stretching, packets other than
20 ms of 8 kHz audio (shorter payloads are padded with silence, longer ones cut).
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["CELL", "DELAY", "DEPTH", "FRAME", "HEADER", "JitterBuffers"]

FRAME: Final = 160  # samples (and G.711 bytes) in 20 ms at 8 kHz
HEADER: Final = 12  # a fixed RTP header; cells hold the payload right after it
CELL: Final = 512  # bytes a cell can take: a larger packet is cut, which is not G.711 at 20 ms
DEPTH: Final = 8  # cells per row: 160 ms
DELAY: Final = 2  # frames of playout delay after a (re)start
RESYNC: Final = 50  # frames: a jump larger than this either way is a new stream (1 s)


class JitterBuffers:
    """Receive cells and playout state of ``capacity`` rows (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.cells = np.zeros((capacity, DEPTH, CELL), np.uint8)
        self.tags = np.full((capacity, DEPTH), -1, np.int64)  # extended seq of each cell
        self.next = np.zeros(capacity, np.int64)  # the extended seq played at the next tick
        self.started = np.zeros(capacity, bool)
        self.misses = np.zeros(capacity, np.int32)  # frames missed in a row
        self.last = np.zeros((capacity, FRAME), np.int16)  # the previous frame, to conceal
        # per-row bookkeeping touched once per packet: plain lists are faster than arrays
        self._views = self._cell_views()  # [row][cell]: where recv_into writes
        self._tags = [[-1] * DEPTH for _ in range(capacity)]  # `tags`, to look up per packet
        self._write = [0] * capacity  # the cell the next packet is read into
        self._ext = [-1] * capacity  # the last extended seq seen (-1: none yet)
        self.late = [0] * capacity  # packets dropped as too late (or duplicates)
        self.received = [0] * capacity

    def grow(self, capacity: int) -> None:
        """Make room for ``capacity`` rows, keeping every existing row as it is."""
        extra = capacity - self.capacity
        if extra <= 0:
            return
        self.cells = np.concatenate([self.cells, np.zeros((extra, DEPTH, CELL), np.uint8)])
        self.tags = np.concatenate([self.tags, np.full((extra, DEPTH), -1, np.int64)])
        self.next = np.concatenate([self.next, np.zeros(extra, np.int64)])
        self.started = np.concatenate([self.started, np.zeros(extra, bool)])
        self.misses = np.concatenate([self.misses, np.zeros(extra, np.int32)])
        self.last = np.concatenate([self.last, np.zeros((extra, FRAME), np.int16)])
        for column in (self._write, self.late, self.received):
            column.extend([0] * extra)
        self._ext.extend([-1] * extra)
        self._tags.extend([-1] * DEPTH for _ in range(extra))
        self._views = self._cell_views()  # the cells array is a new one
        self.capacity = capacity

    def _cell_views(self) -> list[list[memoryview]]:
        cells = self.cells
        return [[memoryview(cells[row, c]) for c in range(DEPTH)] for row in range(len(cells))]

    def reset(self, row: int) -> None:
        """Forget everything of ``row`` (a new endpoint takes the slot)."""
        self.tags[row] = -1
        self._tags[row] = [-1] * DEPTH
        self.started[row] = False
        self.misses[row] = 0
        self.last[row] = 0
        self._write[row] = 0
        self._ext[row] = -1
        self.late[row] = 0
        self.received[row] = 0

    def cell(self, row: int) -> memoryview:
        """Where the row's next packet is to be read (by ``socket.recv_into``)."""
        return self._views[row][self._write[row]]

    def put(self, row: int, seq: int, length: int) -> None:
        """The packet just read into ``cell(row)`` has sequence number ``seq``: keep it."""
        cell = self._write[row]
        if length < HEADER + FRAME:  # a short payload: pad with silence (the codec's)
            self.cells[row, cell, max(length, HEADER) : HEADER + FRAME] = self._pad(row, cell)
        last = self._ext[row]
        if last < 0:
            ext = seq
        else:
            delta = (seq - last) & 0xFFFF
            ext = last + (delta - 0x10000 if delta >= 0x8000 else delta)
        self._ext[row] = max(ext, last)
        self.received[row] += 1
        nxt = int(self.next[row])
        tags = self._tags[row]
        if not self.started[row] or abs(ext - nxt) > RESYNC:
            self.tags[row] = -1
            tags[:] = [-1] * DEPTH
            self.next[row] = ext - DELAY
            self.started[row] = True
            self.misses[row] = 0
        elif ext < nxt or ext in tags:
            self.late[row] += 1
            # it was read over this cell: whatever the cell held is gone, and must not play
            self.tags[row, cell] = tags[cell] = -1
            return
        self.tags[row, cell] = tags[cell] = ext
        self._write[row] = (cell + 1) % DEPTH

    def _pad(self, row: int, cell: int) -> int:
        """The silence byte of the codec whose payload type the cell's header names."""
        return 0xD5 if self.cells[row, cell, 1] & 0x7F == 8 else 0xFF

    def playout(self, rows: np.ndarray, decode: np.ndarray, codecs: np.ndarray) -> np.ndarray:
        """The next frame of each of ``rows``, decoded (int16, one row each), and advance.

        ``decode`` is a (codecs, 256) table of linear samples, ``codecs`` the row's index into
        it. A row with nothing to play gets its concealment (see the module docstring).
        """
        started = self.started[rows]
        match = self.tags[rows] == self.next[rows, None]
        have = match.any(axis=1) & started
        cells = match.argmax(axis=1)
        payload = self.cells[rows, cells, HEADER : HEADER + FRAME]
        frames = decode[codecs[rows, None], payload]
        misses = np.where(have, 0, self.misses[rows] + 1)
        conceal = np.where((misses == 1)[:, None], self.last[rows] >> 1, 0).astype(np.int16)
        frames = np.where(have[:, None], frames, conceal)
        self.last[rows] = frames
        self.misses[rows] = misses
        self.next[rows] += started
        self.started[rows] = started & (misses < DEPTH)
        return frames
