"""The reference of `bench/media_engine.py`: the same media work done the per-session way.

What a straightforward Python media server does, and what ``media.engine`` was written not
to do: every endpoint is its own asyncio `DatagramProtocol` that decodes each packet as it
arrives (``audioop.ulaw2lin``) into a small jitter buffer (a dict by sequence number), and
every session runs its own 20 ms timer (``call_at`` on its own grid, late ticks caught up
as the engine does) that does its work a frame at a time with ``audioop``:

- playback: take the phone's next frame (what a DTMF detector would read), cut the next
  20 ms of the music, encode it, put an RTP header on (``struct``) and send it;
- recording: take both phones' next frames, interleave them into stereo
  (``audioop.tostereo`` + ``audioop.add``) and append them to the session's WAV file, whose
  header is fixed once a second as ``media.audio.WavWriter`` does;
- 3-party conference: take the three frames, and for each member add the other two
  (``audioop.add``, which saturates like the engine's clip), encode and send.

The cost of a session here does not depend on how many other sessions there are: Python
runs per packet and per session per tick. It does no DTMF detection (the engine runs its
in-band detector on phones without telephone-event; see the bench's caveats), no fades, no
marker-bit bookkeeping beyond the first packet.
"""

from __future__ import annotations

import asyncio
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # removed in 3.13: fine for a reference
    import audioop

PTIME = 0.020
FRAME_BYTES = 320  # 160 samples of 16-bit linear audio
SILENCE = bytes(FRAME_BYTES)
DELAY = 2  # frames of playout delay, as media.jitter
MAX_CATCH_UP = 5  # as media.engine
_RTP = struct.Struct("!BBHII")
_WAV = struct.Struct("<4sI4s4sIHHIIHH4sI")


class Totals:
    """Counters of all sessions, in the engine's terms (`media.engine.EngineStats`)."""

    def __init__(self) -> None:
        self.ticks = 0  # session ticks run
        self.late_ticks = 0
        self.packets_in = 0
        self.packets_out = 0
        self.too_late = 0  # packets that came after their frame was played


class Endpoint(asyncio.DatagramProtocol):
    """One phone's RTP: a socket, a jitter buffer of decoded frames, our outgoing stream."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals
        self.transport: asyncio.DatagramTransport | None = None
        self.frames: dict[int, bytes] = {}
        self.next_seq: int | None = None
        self.last = SILENCE
        self.misses = 0
        self.seq = int.from_bytes(os.urandom(2), "big")
        self.ts = int.from_bytes(os.urandom(4), "big")
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.talking = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.totals.packets_in += 1
        if len(data) < 12 or data[0] >> 6 != 2 or data[1] & 0x7F != 0:
            return
        seq = (data[2] << 8) | data[3]
        if self.next_seq is None:
            self.next_seq = (seq - DELAY) & 0xFFFF
        elif (seq - self.next_seq) & 0xFFFF >= 0x8000:
            self.totals.too_late += 1  # older than the playout point
            return
        self.frames[seq] = audioop.ulaw2lin(data[12:], 2)

    def playout(self) -> bytes | None:
        """This tick's frame of the phone (None: nothing, not even concealment)."""
        if self.next_seq is None:
            return None
        frame = self.frames.pop(self.next_seq, None)
        self.next_seq = (self.next_seq + 1) & 0xFFFF
        if frame is not None:
            self.misses = 0
            self.last = frame
            return frame
        self.misses += 1
        return audioop.mul(self.last, 2, 0.5) if self.misses == 1 else None

    def send(self, pcm: bytes | None) -> None:
        """Send ``pcm`` (or nothing) as this tick's packet; the timestamp advances anyway."""
        if pcm is not None and self.transport is not None:
            marker = 0 if self.talking else 0x80
            header = _RTP.pack(0x80, marker, self.seq, self.ts, self.ssrc)
            self.transport.sendto(header + audioop.lin2ulaw(pcm, 2))
            self.seq = (self.seq + 1) & 0xFFFF
            self.totals.packets_out += 1
        self.talking = pcm is not None
        self.ts = (self.ts + 160) & 0xFFFFFFFF


class Session:
    """Endpoints and a 20 ms timer of their own; `work` is one tick of the session."""

    def __init__(self, loop: asyncio.AbstractEventLoop, totals: Totals) -> None:
        self.loop = loop
        self.totals = totals
        self.endpoints: list[Endpoint] = []
        self._next = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.work: Callable[[], None] = lambda: None

    async def endpoint(self, host: str, peer: tuple[str, int] | None) -> tuple[str, int]:
        """A new endpoint on ``host`` (sending to ``peer``, if given); its address."""
        transport, protocol = await self.loop.create_datagram_endpoint(
            lambda: Endpoint(self.totals), local_addr=(host, 0), remote_addr=peer
        )
        self.endpoints.append(protocol)
        address = transport.get_extra_info("sockname")
        return (address[0], address[1])

    def start(self) -> None:
        self._next = self.loop.time() + PTIME
        self._timer = self.loop.call_at(self._next, self._on_clock)

    def _on_clock(self) -> None:
        behind = int((self.loop.time() - self._next) / PTIME)
        if behind > MAX_CATCH_UP:
            self._next = self.loop.time()
            behind = 0
        for _ in range(1 + behind):
            self.work()
        self.totals.ticks += 1 + behind
        self.totals.late_ticks += behind
        self._next += PTIME * (1 + behind)
        self._timer = self.loop.call_at(self._next, self._on_clock)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for endpoint in self.endpoints:
            if endpoint.transport is not None:
                endpoint.transport.close()


class Playback(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop, totals: Totals, music: bytes) -> None:
        super().__init__(loop, totals)
        self.music = music
        self.position = 0
        self.work = self._work

    def _work(self) -> None:
        endpoint = self.endpoints[0]
        endpoint.playout()  # what a DTMF detector would listen to
        frame = self.music[self.position : self.position + FRAME_BYTES]
        self.position += FRAME_BYTES
        if len(frame) < FRAME_BYTES:  # the loop's end: wrap around
            self.position = FRAME_BYTES - len(frame)
            frame += self.music[: self.position]
        endpoint.send(frame)


class Recording(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop, totals: Totals, path: Path) -> None:
        super().__init__(loop, totals)
        self.file: BinaryIO = open(path, "xb")  # noqa: SIM115 (closed by close())
        self.frames = 0
        self._unflushed = 0
        self.file.write(self._header())
        self.work = self._work

    def _header(self) -> bytes:
        data = self.frames * 4
        return _WAV.pack(
            b"RIFF", data + 36, b"WAVE", b"fmt ", 16, 1, 2, 8000, 32000, 4, 16, b"data", data
        )

    def _work(self) -> None:
        left, right = (e.playout() or SILENCE for e in self.endpoints)
        stereo = audioop.add(audioop.tostereo(left, 2, 1, 0), audioop.tostereo(right, 2, 0, 1), 2)
        self.file.write(stereo)
        self.frames += 160
        self._unflushed += 160
        if self._unflushed >= 8000:  # a second: fix the header, as media.audio.WavWriter
            self._flush()

    def _flush(self) -> None:
        end = self.file.tell()
        self.file.seek(0)
        self.file.write(self._header())
        self.file.seek(end)
        self.file.flush()
        self._unflushed = 0

    def close(self) -> None:
        super().close()
        if not self.file.closed:
            self._flush()
            self.file.close()


class Conference(Session):
    def __init__(self, loop: asyncio.AbstractEventLoop, totals: Totals) -> None:
        super().__init__(loop, totals)
        self.work = self._work

    def _work(self) -> None:
        frames = [e.playout() for e in self.endpoints]
        for i, endpoint in enumerate(self.endpoints):
            mix: bytes | None = None
            for j, frame in enumerate(frames):
                if j != i and frame is not None:
                    mix = frame if mix is None else audioop.add(mix, frame, 2)
            endpoint.send(mix)
