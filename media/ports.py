"""The pool of RTP/RTCP port pairs a relay hands to call legs.

Sans-IO: it never binds a socket and never reads the clock; the relay passes `now` (monotonic
seconds) and tells it about ports it could not bind. A pair is named by its RTP port (even);
RTCP is the next port.

Two rules shape the order ports come out in:

- Start in random order, so a scanner cannot guess the next call's ports (RTP Bleed attacks
  spray packets at likely ports while a call is being set up).
- Reuse first-in first-out, and never before `quarantine` seconds after release: a phone of a
  finished call that still sends for a moment must not be learned as the source of a new call.
"""

from __future__ import annotations

import random
from collections import deque


class PortsExhausted(Exception):
    """No port pair is free: every pair is in use or resting in quarantine."""


class PortAllocator:
    def __init__(
        self,
        first: int,
        pairs: int,
        quarantine: float,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if first & 1:
            raise ValueError(f"the first RTP port must be even, got {first}")
        self.first = first
        self.last = first + 2 * pairs - 1  # the last RTCP port
        self.quarantine = quarantine
        ports = list(range(first, first + 2 * pairs, 2))
        (rng or random.SystemRandom()).shuffle(ports)
        self._free: deque[int] = deque(ports)
        self._resting: deque[tuple[float, int]] = deque()  # (free again at, port), in time order
        self._in_use: set[int] = set()

    def take(self, now: float) -> int:
        """Hand out the RTP port of a free pair, the longest-rested first."""
        self._wake(now)
        if not self._free:
            raise PortsExhausted(
                f"media ports {self.first}-{self.last} exhausted: {len(self._in_use)} pairs in "
                f"use, {len(self._resting)} resting after release (quarantine "
                f"{self.quarantine:g} s); widen media.port_min/port_max"
            )
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int, now: float) -> None:
        """Give a pair back; it rests in quarantine before it can be taken again."""
        self._in_use.remove(port)
        self._resting.append((now + self.quarantine, port))

    def bound(self, port: int) -> bool:
        """Whether `port` (RTP or RTCP) belongs to a pair that is in use now."""
        return port & ~1 in self._in_use

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def free(self, now: float) -> int:
        self._wake(now)
        return len(self._free)

    def resting(self, now: float) -> int:
        self._wake(now)
        return len(self._resting)

    def _wake(self, now: float) -> None:
        resting = self._resting
        while resting and resting[0][0] <= now:
            self._free.append(resting.popleft()[1])
