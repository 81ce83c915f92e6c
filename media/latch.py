"""Symmetric RTP latching: which sender a relay port accepts, and where it sends the reply.

A phone behind NAT writes its private address into SDP (`c=IN IP4 10.0.0.5`) but its packets
arrive from the router's public address. A relay that answers to the SDP address gives that
phone no audio; one that answers to whatever sends first hands the call's audio to anyone who
sprays packets at its ports (the RTP Bleed advisories: rtpengine, Asterisk AST-2017-005,
FreeSWITCH). This module models the compromise real relays settled on, as a state machine fed
with (source address, SSRC, now) and no I/O:

- The SDP address is the destination until something is learned.
- Learning happens only in a window that each offer/answer (`set_remote`) opens. The window
  runs `window` seconds from the first packet after it opened, not from the signalling, so
  a phone that starts sending only at answer is still learned.
- In the window, candidates are ranked as rtpengine's "heuristic" learning does: address and
  port equal to the SDP (3), address only (2), port only (1, a NAT that keeps ports), anything
  else (0). A candidate replaces the current one only with a strictly higher rank; an exact
  SDP match ends the window at once. Spraying early therefore cannot beat the real phone when
  it matches the SDP at all, and a flood cannot close the window early (it is time-based).
- After the window the source is locked; other senders are dropped (and counted by the
  caller), except a sender carrying the SSRC of the locked stream (`relatch_on_ssrc`): the
  same phone after a NAT rebinding; an attacker who is not on the path cannot know the SSRC.
- A packet that reaches a port before its phone's first SDP is known (the callee answers and
  starts sending at once; its 200 OK and its first packets race to the switch) has nowhere
  to go and is dropped, but its source is remembered: the offer/answer that follows treats
  it as the first packet of its window if it came at most `window` seconds before. A phone
  that sends RTCP once every 5 s would otherwise not be learned until its second report.
- `strict` accepts only the SDP address, ever.

States: no remote (drop everything); learning (window not started / running); locked.
It does not validate packets (the relay checks the RTP/RTCP version first), count anything,
or refuse the relay's own ports (the relay does, to stop loops).
"""

from __future__ import annotations

import functools
import time
from ipaddress import ip_address

from media.stats import Addr

EXACT = 3  # rank of a source equal to the SDP address and port
EARLY_KEPT = 4  # sources remembered from before the SDP (a spray cannot grow the list)
Early = tuple[Addr, int | None, float]  # a packet before the first SDP: source, SSRC, when


def normalize(host: str, port: int) -> Addr | None:
    """The address as the kernel reports senders, or None for "do not send" (SDP hold).

    RFC 3264 §8.4: a connection address of 0.0.0.0 (old-style hold) or port 0 means no media
    goes there; sending to 0.0.0.0 on Linux would even reach this host.
    """
    compressed = _compressed(host)
    if compressed is None or port == 0:
        return None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return (compressed, port)


@functools.lru_cache(maxsize=4096)
def _compressed(host: str) -> str | None:
    """``host`` as the kernel writes it, None for the unspecified address; ValueError if it is
    no IP address. Cached: the same phones' and gateways' addresses come in every offer."""
    ip = ip_address(host)
    return None if ip.is_unspecified else ip.compressed


class Latch:
    __slots__ = (
        "_early",
        "_learning",
        "_rank",
        "_want_ssrc",
        "_window",
        "_window_end",
        "dest",
        "expected",
        "relatch_on_ssrc",
        "relatches",
        "source",
        "ssrc",
        "strict",
    )

    def __init__(self, *, window: float, strict: bool, relatch_on_ssrc: bool) -> None:
        self._window = window
        self.strict = strict
        self.relatch_on_ssrc = relatch_on_ssrc
        self.expected: Addr | None = None  # from SDP
        # The sender the relay accepts without asking (compared per packet); None sends every
        # packet through `admit`.
        self.source: Addr | None = None
        self.dest: Addr | None = None  # where packets for this phone go
        self.ssrc: int | None = None  # of the stream from `source`, kept up to date by the relay
        self.relatches = 0
        self._want_ssrc: int | None = None
        self._learning = False
        self._window_end: float | None = None
        self._rank = -1  # of `dest`; -1: nothing learned since the SDP address changed
        # (source, SSRC, when) of packets that came before the first SDP; None after it
        self._early: list[Early] | None = []

    @property
    def learning(self) -> bool:
        return self._learning

    def set_remote(
        self, expected: Addr | None, ssrc: int | None = None, now: float | None = None
    ) -> None:
        """A new offer/answer named `expected` (None: no media to this phone, e.g. hold).

        `now` (the clock `admit` is given; monotonic by default) dates the packets that came
        before any SDP address: those of the last `window` seconds are learned from now."""
        self._want_ssrc = ssrc
        early, self._early = self._early, None
        if self.strict:
            self.expected = self.dest = expected
            self.source = None
            return
        if expected is None:
            # c=0.0.0.0 / port 0: send nothing to this phone, but it may still send (a sendonly
            # hold with music), so the sender it was latched to stays accepted.
            self.expected = self.dest = None
            self._rank = -1
            self._learning = False
            return
        if expected != self.expected or self.dest is None:
            # A new address: forget what was learned, send to the SDP address until a packet
            # teaches better. The same address (a re-INVITE for hold, say) keeps the learned
            # destination, so a NATed phone keeps hearing audio meanwhile.
            self.expected = expected
            self.dest = expected
            self._rank = -1
            self.ssrc = None
        self.source = None  # the next packet, even from the incumbent, restarts the window
        self._learning = True
        self._window_end = None
        if early:
            self._learn_early(early, time.monotonic() if now is None else now)

    def _learn_early(self, early: list[Early], now: float) -> None:
        recent = self._recent(early, now)
        if not recent:
            return
        self._window_end = recent[0][2] + self._window  # the window began with the first
        for addr, ssrc, _ in recent:
            if self._learning:
                self._learn(addr, ssrc)

    def admit(self, addr: Addr, ssrc: int | None, now: float) -> bool:
        """Whether to accept a packet from `addr`, which is not `self.source`; may re-latch."""
        if self.strict:
            if addr == self.expected:
                self.source = addr
                return True
            return False
        if self.dest is None:
            if self._early is not None:
                self._remember(self._early, addr, ssrc, now)
            return False
        if self._learning:
            if self._window_end is None:
                self._window_end = now + self._window
            if now <= self._window_end:
                return self._learn(addr, ssrc)
            self._learning = False
        if (
            self.relatch_on_ssrc
            and ssrc is not None
            and ssrc == self.ssrc
            and self.dest is not None
            and self._rank >= 0
        ):
            self.source = self.dest = addr
            self.relatches += 1
            return True
        return False

    def _remember(self, early: list[Early], addr: Addr, ssrc: int | None, now: float) -> None:
        if early and now - early[0][2] > self._window:  # too old for an SDP that comes now
            early[:] = self._recent(early, now)
        if len(early) < EARLY_KEPT and all(addr != known for known, _, _ in early):
            early.append((addr, ssrc, now))

    def _recent(self, early: list[Early], now: float) -> list[Early]:
        """The early packets an SDP that comes `now` may still learn from."""
        return [packet for packet in early if now - packet[2] <= self._window]

    def _learn(self, addr: Addr, ssrc: int | None) -> bool:
        if self._want_ssrc is not None and ssrc != self._want_ssrc:
            return False
        if addr == self.dest and self._rank >= 0:
            self.source = addr  # the incumbent keeps its place
            return True
        expected = self.expected
        rank = 0
        if expected is not None:
            rank = 2 * (addr[0] == expected[0]) + (addr[1] == expected[1])
        if rank <= self._rank:
            return False
        self.source = self.dest = addr
        self._rank = rank
        self.ssrc = ssrc
        if rank == EXACT:
            self._learning = False  # nothing can rank higher
        return True
