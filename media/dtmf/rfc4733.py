"""RFC 4733 telephone-events (DTMF carried in RTP): the receiver's rules and the sender's packets.

A key press is one *event*: a run of RTP packets that all carry the RTP timestamp of the
event's start (§2.5.1.2), each a 4-byte payload (§2.3)::

    event (8 bits) | E | R | volume (6 bits) | duration (16 bits, timestamp units)

The sender repeats it every packetisation interval with a growing duration, and ends it with
usually three identical packets that have the E (end) bit set (§2.5.1.4).

`EventReceiver` turns one stream's payloads into `Digit` reports, each press exactly once:

- at its first end packet; the repeated end packets and any late packet of an event already
  reported are dropped (the last `RECENT` event timestamps are remembered);
- when a new event starts while the previous one never got an end packet (all lost): the
  previous one is reported then, with the longest duration seen;
- a press longer than the 16-bit duration field is sent in segments (§2.5.1.3): the next
  segment's timestamp is the previous one's plus its duration, same event, no end bit on the
  full segment. It stays one press, reported once at its end with the total duration;
- any other timestamp starts a new event. Timestamps are never compared for order, so a
  wrap past 2**32 or a sender that restarts its clock (same SSRC) needs nothing special.

It does not look at RTP headers: the engine strips them, picks the telephone-event payload
type from the SDP, and makes a new receiver for a new SSRC. It does not report a press at its
start (the IVR wants the digit once, not early), and ignores events 16 and up (fax and line
tones, §3.2 of RFC 4734): those are counted as ``bad`` with short payloads.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

from media.dtmf.digit import DIGITS, Digit, check_digit

_EVENT: Final = struct.Struct("!BBH")
END_BIT: Final = 0x80
MAX_DURATION: Final = 0xFFFF
"""The largest duration one event packet can carry (§2.5.1.3)."""
RECENT: Final = 16
"""How many reported event timestamps a receiver remembers to drop their late packets."""


@dataclass(slots=True)
class _Event:
    """The press in progress: its key, level, segment timestamps, duration so far."""

    code: int
    volume: int
    segments: list[int]
    """RTP timestamp of each segment, the current one last (more than one: a long press)."""
    earlier: int = 0
    """Duration of the finished segments, in timestamp units."""
    duration: int = 0
    """Longest duration seen in the current segment."""


class EventReceiver:
    """The telephone-events of one RTP stream (one SSRC), reported once per key press.

    ``rate`` is the telephone-event clock (the SDP ``a=rtpmap:101 telephone-event/8000``).
    ``bad`` counts the payloads dropped: shorter than 4 bytes, or an event code above 15.
    """

    def __init__(self, rate: int = 8000) -> None:
        self.rate = rate
        self.bad = 0
        self._event: _Event | None = None
        self._reported: deque[int] = deque(maxlen=RECENT)
        self._ready: deque[Digit] = deque()

    def feed(self, payload: bytes, timestamp: int) -> Digit | None:
        """Take one packet's payload and RTP timestamp; a digit when a press is complete.

        Two presses can complete on one packet (an unended one, then a new one that is
        already ending): the second is returned by the next `feed` or by `flush`.
        """
        self._take(payload, timestamp & 0xFFFFFFFF)
        return self._ready.popleft() if self._ready else None

    def flush(self) -> Digit | None:
        """The press still in progress or waiting, if any: call when the stream ends or idles.

        A press whose end packets were all lost and that no later event followed is only
        reported here. Call again until it returns None.
        """
        if self._ready:
            return self._ready.popleft()
        if self._event is not None:
            self._finish()
        return self._ready.popleft() if self._ready else None

    def _take(self, payload: bytes, timestamp: int) -> None:
        if len(payload) < _EVENT.size:
            self.bad += 1
            return
        code, flags, duration = _EVENT.unpack_from(payload)
        if code >= len(DIGITS):
            self.bad += 1
            return
        if timestamp in self._reported:
            return
        event = self._event
        if event is not None and timestamp != event.segments[-1]:
            if timestamp in event.segments:
                return
            if self._continues(event, code, timestamp):
                event.earlier += (timestamp - event.segments[-1]) & 0xFFFFFFFF
                event.segments.append(timestamp)
                event.duration = 0
            else:
                self._finish()
                event = None
        if event is None:
            event = self._event = _Event(code, flags & 0x3F, [timestamp])
        event.duration = max(event.duration, duration)
        event.volume = flags & 0x3F
        if flags & END_BIT:
            event.duration = duration
            self._finish()

    def _continues(self, event: _Event, code: int, timestamp: int) -> bool:
        """Is this packet the next segment of a press longer than one packet can say?

        The segment before it got within a second of the 16-bit limit (its last updates may
        be lost, so not exactly to it), and this one starts where that one could have ended.
        """
        return (
            code == event.code
            and event.duration > MAX_DURATION - self.rate
            and event.duration <= (timestamp - event.segments[-1]) & 0xFFFFFFFF <= MAX_DURATION
        )

    def _finish(self) -> None:
        event = self._event
        assert event is not None
        self._event = None
        self._reported.extend(event.segments)
        total = event.earlier + event.duration
        self._ready.append(Digit(DIGITS[event.code], total * 1000 // self.rate, event.volume))


def event_packets(
    digit: str,
    duration_ms: int = 100,
    *,
    volume: int = 10,
    ptime_ms: int = 20,
    rate: int = 8000,
    end_repeats: int = 3,
) -> list[tuple[bytes, bool]]:
    """The payloads that send one key press, each with its RTP marker bit.

    The first packet has the marker (§2.5.1.2); one packet per ``ptime_ms`` follows with the
    duration so far; then ``end_repeats`` end packets with the full duration (§2.5.1.4).
    All share one RTP timestamp, the press's start: the caller sets sequence numbers,
    timestamp and SSRC, and sends one packet per ``ptime_ms`` (the end repeats may go
    together). ``volume`` is in -dBm0 (0-63).

    ValueError for a non-DTMF ``digit``, a volume out of range, or a duration that is not
    positive or does not fit one event (about 8 s at 8 kHz: no segmented presses).
    """
    code = check_digit(digit)
    if not 0 <= volume <= 0x3F:
        raise ValueError(f"volume {volume} out of range 0-63 (-dBm0)")
    if ptime_ms <= 0 or end_repeats < 1:
        raise ValueError(f"ptime_ms {ptime_ms} and end_repeats {end_repeats} must be >= 1")
    duration = duration_ms * rate // 1000
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(
            f"duration {duration_ms} ms out of range 1-{MAX_DURATION * 1000 // rate} ms"
        )
    step = ptime_ms * rate // 1000
    updates = [_EVENT.pack(code, volume, d) for d in range(step, duration, step)]
    ends = [_EVENT.pack(code, END_BIT | volume, duration)] * end_repeats
    return [(payload, i == 0) for i, payload in enumerate(updates + ends)]
