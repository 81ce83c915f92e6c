"""Who hears whom: the links between endpoints of one engine, and conferences made of them.

A link (listener ← talker) says that what the talker's phone sends is heard by the
listener's phone. The tick mixes all links of all endpoints at once: the listener rows' sum
of their talkers' frames is one scatter-add over the link table (`Links.mix`), so a
two-party bridge, a 3-party conference and a supervisor's listen cost the same kind of work,
with no Python per link.

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
        self.listeners = np.zeros(0, np.int64)
        self.talkers = np.zeros(0, np.int64)

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
        """Every link to or from ``row`` (its endpoint is gone)."""
        self._pairs = {p for p in self._pairs if row not in p}
        self._refresh()

    def set(self, pairs: set[tuple[int, int]], old: set[tuple[int, int]]) -> None:
        """Replace the links ``old`` (a conference's previous ones) with ``pairs``."""
        self._pairs = (self._pairs - old) | {p for p in pairs if p[0] != p[1]}
        self._refresh()

    def talkers_of(self, listener: int) -> list[int]:
        return sorted(t for lst, t in self._pairs if lst == listener)

    def _refresh(self) -> None:
        pairs = sorted(self._pairs)
        self.listeners = np.array([p[0] for p in pairs], np.int64)
        self.talkers = np.array([p[1] for p in pairs], np.int64)

    def mix(
        self, frames: np.ndarray, present: np.ndarray, capacity: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each listener's sum of its talkers' ``frames`` (int32, all rows), and which got any.

        ``frames`` holds every row's decoded input of this tick; ``present`` says which rows
        had audio at all (a talker with no packets adds nothing and wakes no listener).
        """
        out = np.zeros((capacity, FRAME), np.int32)
        heard = np.zeros(capacity, bool)
        if len(self.listeners):
            np.add.at(out, self.listeners, frames[self.talkers])
            heard[self.listeners[present[self.talkers]]] = True
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
