"""The switch's own end of a call leg's audio: what prompts, digits and recordings go through.

When the switch answers a call itself (call control, ``switch.b2bua.control``), the phone's
audio does not go to another phone: the leg's relay session has the phone on one side and an
endpoint of the media engine on the other. The relay forwards between them as it would
between two phones (latching, counters, timeouts all stay the relay's), and the endpoint is
just another RTP peer
at a local address: it receives what the relay forwards and sends to the relay's port facing
it (`attach`). Bridging two legs of one codec joins their relay sessions
(``RelaySession.join``) and takes the endpoints out; legs that need the engine between them
(PCMU to PCMA, a recorded call, a supervisor) stay on their endpoints and are linked in the
engine's mixer instead.

`EngineEndpoint` is the endpoint of ``media.engine``: its socket feeds the engine's jitter
buffer, RFC 4733 events go to a ``media.dtmf.EventReceiver``, and the engine's clock does
the rest. Its operations are small awaitables:

- ``play(prompts)``: prompts by name (in the engine's or the given language) or WAV paths,
  one after the other; returns True when the last was sent, False when a digit interrupted
  it (``interrupt=True``) or it was stopped;
- ``start_music()`` / ``stop_music()``: music on hold, looped, faded in and out;
- ``collect(max_digits, timeout, terminators, inter_digit_timeout)``: digits pressed, from
  RFC 4733, SIP INFO (``digit`` fed by the signalling) or tones in the audio; digits pressed
  during a prompt are kept for the next collect (type-ahead), as phones users expect;
- ``record(path, max_seconds, silence, terminators)``: the phone's voice to a WAV file until
  one of those ends it; returns the seconds recorded;
- ``send_digit(digit)``: an RFC 4733 event to the phone, or through ``on_info`` (SIP INFO)
  when the phone did not offer telephone-event.

Not done here: SRTP, other codecs, sending RTCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from media.dtmf import DIGITS, EventReceiver, event_packets, tone
from media.forward import bind_udp
from media.jitter import HEADER
from media.recorder import Recording
from media.stats import Addr

if TYPE_CHECKING:
    from media.engine import MediaEngine

__all__ = ["EngineEndpoint"]

EVENTS_IDLE = 0.3  # s without RFC 4733 packets after which a press is taken as ended


class EngineEndpoint:
    """One endpoint of a ``MediaEngine`` (see the module docstring)."""

    def __init__(self, engine: MediaEngine, row: int, sock: socket.socket | None = None) -> None:
        self.engine = engine
        self.row = row
        if sock is not None:
            sock.setblocking(False)
        self._sock: socket.socket | None = sock if sock is not None else bind_udp(engine.host, 0)
        self._address: Addr = self._sock.getsockname()[:2]
        self.peer: Addr | None = None
        self.voice_pt = 0
        self.events_pt: int | None = None
        self.bad = 0  # packets that were not RTP, or of a payload type not agreed
        self.on_digit: Callable[[str], None] | None = None  # every digit, as it comes
        self.on_info: Callable[[str], None] | None = None  # sends a digit by SIP INFO
        self._receiver = EventReceiver()
        self._event_ssrc: int | None = None
        self._idle: asyncio.TimerHandle | None = None  # flushes the receiver when events stop
        self._digits: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._events: deque[tuple[bytes, bool]] = deque()  # RFC 4733 packets to send
        self._event_ts = 0
        self._interruptible: asyncio.Future[bool] | None = None
        self._recording: tuple[Recording, str] | None = None  # ended by these digits
        engine.watch(self._sock, self._read)

    def __repr__(self) -> str:
        return f"<EngineEndpoint row={self.row} {self._address[0]}:{self._address[1]}>"

    @property
    def address(self) -> Addr:
        return self._address

    @property
    def packets(self) -> int:
        return self.engine.jitter.received[self.row] if self._sock is not None else 0

    @property
    def closed(self) -> bool:
        return self._sock is None

    def attach(self, peer: Addr) -> None:
        if self._sock is None:
            return
        self._sock.connect(peer)
        self.peer = peer
        self.engine.senders[self.row] = self._sock.send
        self.engine.sending[self.row] = True

    def set_format(self, codec: str, pt: int, events_pt: int | None) -> None:
        self.voice_pt, self.events_pt = pt, events_pt
        self.engine.set_codec(self.row, codec, pt, inband=events_pt is None)

    # -- receiving -------------------------------------------------------------------------

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        engine = self.engine
        jitter = engine.jitter
        cell = jitter.cell(self.row)
        try:
            n = sock.recv_into(cell)
        except OSError:  # EAGAIN, or an ICMP error reported on the connected socket
            return
        engine.stats.packets_in += 1
        if n < HEADER or cell[0] >> 6 != 2:
            self.bad += 1
            return
        pt = cell[1] & 0x7F
        start = HEADER + 4 * (cell[0] & 0x0F)
        if cell[0] & 0x10 and n >= start + 4:  # header extension (RFC 3550 §5.3.1)
            start += 4 + 4 * int.from_bytes(cell[start + 2 : start + 4], "big")
        if cell[0] & 0x20 and n > start:  # padding
            n -= cell[n - 1]
        if start > n:
            self.bad += 1
            return
        if pt == self.voice_pt:
            if start != HEADER:
                cell[HEADER : HEADER + n - start] = bytes(cell[start:n])
            jitter.put(self.row, int.from_bytes(cell[2:4], "big"), n - start + HEADER)
        elif pt == self.events_pt:
            ssrc = int.from_bytes(cell[8:12], "big")
            if ssrc != self._event_ssrc:
                self._events_stopped()  # what the old stream left unfinished
                self._receiver = EventReceiver()
                self._event_ssrc = ssrc
            got = self._receiver.feed(bytes(cell[start:n]), int.from_bytes(cell[4:8], "big"))
            if got is not None:
                self.digit(got.digit)
            # A press whose end packets were all lost is reported once the events stop.
            if self._idle is not None:
                self._idle.cancel()
            self._idle = self.engine.loop.call_later(EVENTS_IDLE, self._events_stopped)
        else:
            self.bad += 1

    def _events_stopped(self) -> None:
        self._idle = None
        while (got := self._receiver.flush()) is not None:
            self.digit(got.digit)

    def digit(self, digit: str, *, in_audio: bool = False) -> None:
        """The phone pressed ``digit`` (``in_audio``: heard as tones, which a bridged phone
        hears as they are, so they are not sent on as events too)."""
        self.engine.stats.digits += 1
        recording = self._recording
        if recording is not None and digit in recording[1]:
            recording[0].stop("terminator")  # the key that ends a message is used up by it
            return
        self._digits.append(digit)
        if self.on_digit is not None and not in_audio:
            self.on_digit(digit)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        playing = self._interruptible
        if playing is not None and not playing.done():
            self.engine.players.stop(self.row, fade=False)

    # -- sending ---------------------------------------------------------------------------

    def send_event(self, seq: int, ts: int, ssrc: int) -> bool:
        """Send the next RFC 4733 packet of the digit being sent (the engine's clock calls);
        whether more are waiting."""
        payload, marker = self._events.popleft()
        if marker:
            self._event_ts = ts
        pt = self.events_pt if self.events_pt is not None else 101
        header = bytes((0x80, pt | (0x80 if marker else 0))) + seq.to_bytes(2, "big")
        packet = header + self._event_ts.to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload
        if self._sock is not None:
            with contextlib.suppress(OSError):  # a full buffer, ICMP: RTP is lossy by design
                self._sock.send(packet)
        return bool(self._events)

    def send_digit(self, digit: str, duration_ms: int = 100) -> None:
        """Press ``digit`` towards the phone, in the form the phone negotiated."""
        if digit not in DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        if self.events_pt is not None:
            self._events.extend(event_packets(digit, duration_ms))
            self.engine.eventful.add(self.row)
        elif self.on_info is not None:
            self.on_info(digit)
        else:  # no telephone-event, no signalling: the tone itself, in the audio
            span = self.engine.samples(f"tone {digit} {duration_ms}", tone(digit, duration_ms))
            self.engine.players.play(self.row, [span])

    # -- operations ------------------------------------------------------------------------

    async def play(
        self, prompts: str | Sequence[str], *, language: str | None = None, interrupt: bool = False
    ) -> bool:
        names = [prompts] if isinstance(prompts, str) else list(prompts)
        spans = [self.engine.sound(name, language) for name in names]
        if interrupt and self._digits:
            return False
        done = self.engine.players.play(self.row, spans)
        if interrupt:
            self._interruptible = done
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self.engine.players.stop(self.row)
            raise
        finally:
            if self._interruptible is done:
                self._interruptible = None

    def start_music(self, path: str | None = None) -> None:
        """Music on hold (the packaged one, or the WAV at ``path``), looped, faded in."""
        span = self.engine.sound(path or str(self.engine.prompts.moh()))
        self.engine.players.play(self.row, [span], loop=True, fade=True)

    def stop_music(self) -> None:
        self.engine.players.stop(self.row, fade=True)

    def flush_digits(self) -> None:
        self._digits.clear()

    async def collect(
        self,
        max_digits: int,
        timeout: float,
        terminators: str = "#",
        inter_digit_timeout: float | None = None,
    ) -> str:
        """Digits until ``max_digits``, a terminator (not returned) or a timeout.

        ``timeout`` waits for the first digit, ``inter_digit_timeout`` (default: ``timeout``)
        for each next one; a timeout returns what was pressed so far ("" for nothing).
        """
        if max_digits < 1:
            raise ValueError("collect: max_digits must be at least 1")
        loop = asyncio.get_running_loop()
        got: list[str] = []
        wait = timeout
        while len(got) < max_digits:
            if not self._digits:
                self._waiter = loop.create_future()
                try:
                    await asyncio.wait_for(self._waiter, wait)
                except TimeoutError:
                    break
                finally:
                    self._waiter = None
                continue
            digit = self._digits.popleft()
            if digit in terminators:
                break
            got.append(digit)
            wait = timeout if inter_digit_timeout is None else inter_digit_timeout
        return "".join(got)

    async def record(
        self, path: str | Path, max_seconds: float, *, silence: float = 5.0, terminators: str = "#"
    ) -> float:
        """Record the phone until ``max_seconds``, ``silence`` s of quiet or a terminator."""
        recording = self.engine.record(path, [self.row], max_seconds=max_seconds, silence=silence)
        self._recording = (recording, terminators)
        try:
            await asyncio.shield(recording.done)
        finally:
            recording.stop("cancelled")
            self._recording = None
        return recording.duration

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.engine.watch(sock, None)
        sock.close()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.engine.release(self.row)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
