"""Who hears whom: the links between endpoints of one engine, and conferences made of them.

A link (listener ← talker) says that what the talker's phone sends is heard by the
listener's phone. The tick mixes all links of all endpoints at once (`Links.mix`): the links
are kept as a table with a row per listener and a column per talker it hears, listeners with
more talkers first, so the sum is one gather-and-add per column (the first talker of every
listener, then the second of those that have two, …). The loop is over the columns (the
largest number of talkers anyone hears), never over listeners or links; ``np.add.at``, the
obvious scatter-add, and ``np.add.reduceat`` were 100 and 10 times slower on rows of 160
samples. A two-party bridge, a 3-party conference and a supervisor's listen cost the same
kind of work.

A `Conference` turns members and their modes into links. Every member speaks in one of
three ways, which is how supervisor tools are made:

- ``Mode.FULL``: heard by every other member (conference, barge);
- ``Mode.LISTEN``: heard by nobody (the supervisor listening in);
- ``Mode.WHISPER``: heard only by the member named as its ``to`` (the agent).

Each member hears every member that speaks to it, never itself (mix-minus). A two-party
bridge through the engine (transcoding PCMU ↔ PCMA, or a recorded call) is a conference of
two FULL members.

Not done here: gains and automatic level control; the sum is clipped to 16 bits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from media.jitter import FRAME

__all__ = ["Conference", "Links", "Mode"]


class Links:
    """The (listener, talker) pairs of an engine (see the module docstring)."""

    def __init__(self) -> None:
        self._pairs: set[tuple[int, int]] = set()
        self.conferences: set[Conference] = set()  # open ones: a dropped row leaves them too
        # the mixing table (see the module docstring): listener rows, most talkers first;
        # their talkers, one column each; how many listeners have a talker in each column
        self._heard = np.zeros(0, np.int64)
        self._table = np.zeros((0, 0), np.int64)
        self._depth: list[int] = []
        self._out = np.zeros((0, FRAME), np.int32)

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, listener: int, talker: int) -> None:
        if listener != talker:
            self._pairs.add((listener, talker))
            self._refresh()

    def remove(self, listener: int, talker: int) -> None:
        self._pairs.discard((listener, talker))
        self._refresh()

    def drop(self, row: int) -> None:
        """Every link to or from ``row`` (its endpoint is gone), and its conference places:
        the row is reused by the next endpoint, which must not inherit them."""
        for conference in list(self.conferences):
            conference.remove(row)
        self._pairs = {p for p in self._pairs if row not in p}
        self._refresh()

    def set(self, pairs: set[tuple[int, int]], old: set[tuple[int, int]]) -> None:
        """Replace the links ``old`` (a conference's previous ones) with ``pairs``."""
        self._pairs = (self._pairs - old) | {p for p in pairs if p[0] != p[1]}
        self._refresh()

    @property
    def listeners(self) -> np.ndarray:
        """The rows that hear someone (bridged or in a conference)."""
        return self._heard

    def talkers_of(self, listener: int) -> list[int]:
        return sorted(t for lst, t in self._pairs if lst == listener)

    def _refresh(self) -> None:
        heard: dict[int, list[int]] = {}
        for listener, talker in sorted(self._pairs):
            heard.setdefault(listener, []).append(talker)
        order = sorted(heard, key=lambda listener: -len(heard[listener]))
        width = len(heard[order[0]]) if order else 0
        self._heard = np.array(order, np.int64)
        self._table = np.zeros((len(order), width), np.int64)
        for i, listener in enumerate(order):
            self._table[i, : len(heard[listener])] = heard[listener]
        self._depth = [sum(len(t) > column for t in heard.values()) for column in range(width)]

    def mix(
        self, frames: np.ndarray, present: np.ndarray, capacity: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each listener's sum of its talkers' ``frames`` (int32, all rows, in a buffer the next
        call reuses), and which listeners got any.

        ``frames`` holds every row's decoded input of this tick; ``present`` says which rows
        had audio at all (a talker with no packets adds nothing and wakes no listener).
        """
        if len(self._out) != capacity:
            self._out = np.zeros((capacity, FRAME), np.int32)
        out = self._out  # reused: a fresh array this size costs page faults every tick
        out.fill(0)
        heard = np.zeros(capacity, bool)
        if len(self._heard):
            table = self._table
            total = frames[table[:, 0]].astype(np.int32)
            any_present = present[table[:, 0]]
            for column in range(1, table.shape[1]):
                depth = self._depth[column]
                total[:depth] += frames[table[:depth, column]]
                any_present[:depth] |= present[table[:depth, column]]
            out[self._heard] = total
            heard[self._heard] = any_present
        return out, heard


class Mode(enum.Enum):
    FULL = "full"
    LISTEN = "listen"
    WHISPER = "whisper"


@dataclass(slots=True)
class _Member:
    mode: Mode
    to: int | None  # WHISPER: the one member who hears it


class Conference:
    """Members of one mix and how each speaks (see the module docstring)."""

    def __init__(self, links: Links) -> None:
        self._links = links
        self._members: dict[int, _Member] = {}
        self._pairs: set[tuple[int, int]] = set()
        links.conferences.add(self)

    @property
    def members(self) -> list[int]:
        return list(self._members)

    def add(self, row: int, mode: Mode = Mode.FULL, to: int | None = None) -> None:
        """Add ``row``, or change how it speaks if it is a member already."""
        if mode is Mode.WHISPER and to not in self._members:
            raise ValueError(f"whisper: row {to} is not a member of this conference")
        self._members[row] = _Member(mode, to)
        self._relink()

    def remove(self, row: int) -> None:
        if self._members.pop(row, None) is not None:
            for member in self._members.values():
                if member.to == row:  # whispering to someone who left: nobody hears it
                    member.mode, member.to = Mode.LISTEN, None
            self._relink()

    def close(self) -> None:
        self._members.clear()
        self._relink()
        self._links.conferences.discard(self)

    def _relink(self) -> None:
        pairs = set()
        for talker, member in self._members.items():
            for listener in self._members:
                if listener == talker or member.mode is Mode.LISTEN:
                    continue
                if member.mode is Mode.WHISPER and listener != member.to:
                    continue
                pairs.add((listener, talker))
        self._links.set(pairs, self._pairs)
        self._pairs = pairs
