"""The media engine: every endpoint of a process served on one 20 ms clock, with NumPy.

An endpoint (``media.endpoint.EngineEndpoint``) is the switch's own end of a leg's audio: a
UDP socket the relay forwards the phone's RTP to, and sends ours from. The engine keeps each
endpoint's state as a row of arrays, and every 20 ms (`MediaEngine.tick`) does, for all rows
at once:

1. take one frame per receiving row out of its jitter buffer (``media.jitter``) and decode it
   (G.711 tables, ``media.g711``): one gather for every row;
2. look for in-band DTMF tones in the rows whose phone has no telephone-event and talks to
   the switch, not to a bridged phone (``media.dtmf.InbandDetector``, Goertzel over the
   whole block);
3. hand the frames to the recordings (``media.recorder``);
4. mix what each row hears (``media.mixer.Links``: bridges, conferences, supervisors) and add
   what each row plays (``media.player``);
5. encode, put RTP headers on (sequence numbers, timestamps, SSRC, marker at the start of a
   talkspurt, all as array operations) and send one packet per sending row.

Only the socket calls and the rare events (a digit, the end of a prompt) are Python per
endpoint; the per-frame work is a fixed number of NumPy operations over all rows, so the cost
per endpoint falls as endpoints grow (``bench/media_engine.py`` shows it).

The clock runs on the event loop (``call_at`` on a fixed 20 ms grid of the loop's monotonic
time, so it does not drift); it stops when the last endpoint closes. A tick that comes late
(the loop was busy) is run at once and the grid kept, the ticks missed one by one with a poll
of the sockets between them (the frames they play are the packets that queued meanwhile:
back to back they would find them unread, and the jitter buffers would drop them as too late
once read); more than ``MAX_CATCH_UP`` ticks behind, the grid restarts from now rather than
send a burst.

RTP sent: one SSRC per endpoint for its whole life (prompts, music and bridged audio are one
stream to the phone), sequence numbers continuous, timestamps advancing 160 per tick whether
a packet is sent or not (silence is not sent: RFC 3551 §4.1 lets a sender stop, and the
marker bit starts the next talkspurt). RFC 4733 events go out between voice packets, all
packets of one event with the timestamp of its start.

One engine serves one process: the switch's, or each media worker's (``media.workers``; the
switch then drives it through ``media.remote``). Not done here: codecs other than G.711, ptime
other than 20 ms, RTCP from the endpoint (the relay forwards the phone's).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from media.audio import AudioCache
from media.dtmf import InbandDetector
from media.forward import Poller
from media.g711 import DECODE, ENCODE
from media.jitter import FRAME, HEADER, JitterBuffers
from media.mixer import Conference, Links
from media.player import Players, SampleBank, Span
from media.prompts import Prompts
from media.recorder import Recording, target_path

if TYPE_CHECKING:
    from media.endpoint import EngineEndpoint

__all__ = ["CODECS", "PTIME", "EngineStats", "MediaEngine"]

PTIME: Final = 0.020
MAX_CATCH_UP: Final = 5
CATCH_UP_GAP: Final = 0.001  # between ticks run late: a poll of the sockets in between
CODECS: Final = ("PCMU", "PCMA")  # the row's codec is an index into this
_ROW_ARRAYS: Final = (
    "used",
    "codec",
    "voice_pt",
    "detect",
    "talking",
    "sending",
    "seq",
    "ts",
    "ssrc",
    "packets",
)
_DECODE: Final = np.stack([DECODE[c] for c in CODECS])  # (codecs, 256) int16
_ENCODE: Final = np.stack([ENCODE[c] for c in CODECS])  # (codecs, 65536) uint8


class EngineStats:
    """Counters of an engine since it started (for ``/metrics`` and the bench)."""

    __slots__ = ("digits", "late_ticks", "packets_in", "packets_out", "tick_seconds", "ticks")

    def __init__(self) -> None:
        self.ticks = 0
        self.late_ticks = 0  # ticks run more than one period late
        self.tick_seconds = 0.0  # time spent in ticks
        self.packets_out = 0
        self.packets_in = 0
        self.digits = 0


class MediaEngine:
    """All media endpoints of a process and their clock (see the module docstring)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        prompts: Prompts | None = None,
        language: str = "en",
        recordings: str | Path = "recordings",
        capacity: int = 64,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.host = host
        self.loop = loop or asyncio.get_running_loop()
        self.cache = AudioCache()
        self.prompts = prompts if prompts is not None else Prompts(cache=self.cache)
        self.language = language
        self.recordings_dir = Path(recordings).resolve()
        self.stats = EngineStats()
        self.capacity = 0
        # one row per endpoint slot, grown together (`_grow`)
        self.used = np.zeros(0, bool)  # an endpoint has the row
        self.codec = np.zeros(0, np.int64)  # index into CODECS
        self.voice_pt = np.zeros(0, np.uint8)
        self.detect = np.zeros(0, bool)  # look for DTMF tones in its audio
        self.talking = np.zeros(0, bool)  # sent a packet at the last tick
        self.sending = np.zeros(0, bool)  # has a peer to send to
        self.seq = np.zeros(0, np.uint16)
        self.ts = np.zeros(0, np.uint32)
        self.ssrc = np.zeros(0, np.uint32)
        self.packets = np.zeros((0, HEADER + FRAME), np.uint8)  # what each sends
        self.jitter = JitterBuffers(0)
        self.players = Players(0)
        self.tones = InbandDetector(0)
        self.bank = SampleBank()
        self.links = Links()
        self.recordings: list[Recording] = []
        self._endpoints: list[EngineEndpoint | None] = []
        # each row's connected socket's send (set by `EngineEndpoint.attach`): the tick calls
        # it directly for every packet
        self.senders: list[Callable[[memoryview], object]] = []
        self.eventful: set[int] = set()  # rows with RFC 4733 packets waiting to be sent
        self._free: list[int] = []
        self._rows = np.zeros(0, np.int64)
        self._grow(capacity)
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        # All endpoint sockets in one epoll set (as the relay's): one loop callback per wake-up
        # for every ready socket, not one per packet through the loop's machinery.
        self._poller = Poller() if hasattr(select, "epoll") else None
        if self._poller is not None:
            self.loop.add_reader(self._poller.fileno(), self._poller.ready)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        extra = capacity - old
        self.jitter.grow(capacity)
        self.players.grow(capacity)
        self.tones.grow(capacity)
        for name in _ROW_ARRAYS:
            setattr(self, name, _extend(getattr(self, name), extra))
        self._views = [memoryview(self.packets[row]) for row in range(capacity)]
        self.frames = np.zeros((capacity, FRAME), np.int16)
        self._endpoints.extend([None] * extra)
        self.senders.extend([_unsent] * extra)
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    # -- endpoints -----------------------------------------------------------------------

    def endpoint(self, sock: socket.socket | None = None, *, near: object = None) -> EngineEndpoint:
        """A new endpoint with its own socket on ``host`` (or ``sock``, bound elsewhere: a
        media worker's endpoints are bound by the switch); it starts the clock. ``near`` is
        for `media.remote.RemoteEngine`'s sake: one engine has every endpoint."""
        from media.endpoint import EngineEndpoint

        if not self._free:
            self._grow(self.capacity * 2)
        row = self._free.pop()
        self.jitter.reset(row)
        self.tones.reset(row)
        self.codec[row] = 0
        self.voice_pt[row] = 0
        self.detect[row] = False
        self.talking[row] = False
        self.sending[row] = False
        self.seq[row] = int.from_bytes(os.urandom(2), "big")  # RFC 3550 §5.1: random start
        self.ts[row] = int.from_bytes(os.urandom(4), "big")
        self.ssrc[row] = int.from_bytes(os.urandom(4), "big")
        self.packets[row, 0] = 0x80
        self.packets[row, 8:12] = np.frombuffer(int(self.ssrc[row]).to_bytes(4, "big"), np.uint8)
        endpoint = EngineEndpoint(self, row, sock)
        self._endpoints[row] = endpoint
        self.used[row] = True
        self._rows = np.flatnonzero(self.used)
        self._start_clock()
        return endpoint

    def release(self, row: int) -> None:
        """The endpoint of ``row`` closed: free the row, unlink it, silence its recordings."""
        if self._endpoints[row] is None:
            return
        self._endpoints[row] = None
        self.senders[row] = _unsent
        self.eventful.discard(row)
        self.players.stop(row, fade=False)
        self.links.drop(row)
        for recording in self.recordings:
            recording.leave(row)
        self.sending[row] = False
        self.used[row] = False
        self._free.append(row)
        self._rows = np.flatnonzero(self.used)
        if not len(self._rows) and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def watch(self, sock: socket.socket, reader: Callable[[], object] | None) -> None:
        """Call ``reader`` when ``sock`` has a packet (None: stop watching it)."""
        if self._poller is not None:
            self._poller.watch(sock, reader)
        elif reader is not None:
            self.loop.add_reader(sock.fileno(), reader)
        else:
            self.loop.remove_reader(sock.fileno())

    def set_codec(self, row: int, codec: str, pt: int, inband: bool) -> None:
        self.codec[row] = CODECS.index(codec)
        self.voice_pt[row] = pt
        self.detect[row] = inband

    @property
    def endpoints(self) -> int:
        return len(self._rows)

    # -- sounds, mixes and recordings ------------------------------------------------------

    def sound(self, name: str, language: str | None = None) -> Span:
        """The bank span of a prompt (by name, in ``language``) or of a WAV file (by path)."""
        if name.endswith(".wav") or os.sep in name:
            key: tuple[str, ...] = ("file", str(Path(name).resolve()))
            span = self.bank.get(key)
            return span if span is not None else self.bank.add(key, self.cache.get(name))
        lang = language or self.language
        key = ("prompt", lang, name)
        span = self.bank.get(key)
        return span if span is not None else self.bank.add(key, self.prompts.load(lang, name))

    def samples(self, key: str, samples: np.ndarray) -> Span:
        """The bank span of generated ``samples`` (a tone, a beep), stored under ``key``."""
        return self.bank.add(("samples", key), samples)

    def conference(self) -> Conference:
        return Conference(self.links)

    def near(self, row: int, mix: Conference) -> bool:
        """Every endpoint can join every mix of one engine (`RemoteEngine.near` differs)."""
        return True

    def record(self, path: str | Path, rows: list[int], **options: object) -> Recording:
        """Start recording ``rows`` to ``path`` (relative paths: under ``recordings``)."""
        recording = Recording(target_path(self.recordings_dir, path), rows, **options)  # type: ignore[arg-type]
        self.recordings.append(recording)
        recording.done.add_done_callback(lambda _: self.recordings.remove(recording))
        return recording

    # -- the clock -------------------------------------------------------------------------

    def _start_clock(self) -> None:
        if self._timer is None:
            self._next_tick = self.loop.time() + PTIME
            self._timer = self.loop.call_at(self._next_tick, self._on_clock)

    def _on_clock(self) -> None:
        now = self.loop.time()
        behind = (now - self._next_tick) / PTIME
        if behind > MAX_CATCH_UP:
            self._next_tick = now
        elif behind >= 1:
            self.stats.late_ticks += 1
        self.tick()
        self._next_tick += PTIME
        if not len(self._rows):
            self._timer = None
            return
        # A tick still due runs after the loop has read the sockets again, not back to back:
        # the packets it plays are waiting there (uvloop runs due timers before it polls).
        when = max(self._next_tick, self.loop.time() + CATCH_UP_GAP)
        self._timer = self.loop.call_at(when, self._on_clock)

    def tick(self) -> None:
        """One 20 ms step for every endpoint (see the module docstring)."""
        rows = self._rows
        if not len(rows):
            return
        started = time.perf_counter()
        was = self.jitter.started[rows]
        frames = self.frames
        frames[rows] = self.jitter.playout(rows, _DECODE, self.codec)
        present = np.zeros(self.capacity, bool)
        present[rows] = was & (self.jitter.misses[rows] <= 1)
        self._detect_tones(rows, frames)
        for recording in list(self.recordings):
            recording.take(frames)
        out, heard = self.links.mix(frames, present, self.capacity)
        playing = self.players.rows
        if len(playing):
            out[playing] += self.players.frames(playing, self.bank.samples)
            heard[playing] = True
        self._send(rows, out, heard)
        self.ts[rows] += FRAME
        self.stats.ticks += 1
        self.stats.tick_seconds += time.perf_counter() - started

    def _detect_tones(self, rows: np.ndarray, frames: np.ndarray) -> None:
        """Look for DTMF tones from phones with no telephone-event that talk to the switch
        (a menu, voicemail); a bridged phone's tones reach the other phone in the audio."""
        watch = self.detect.copy()
        watch[self.links.listeners] = False
        listening = rows[watch[rows]]
        if not len(listening):
            return
        for row, digit in self.tones.feed(listening, frames[listening]):
            endpoint = self._endpoints[row]
            if endpoint is not None:
                endpoint.digit(digit, in_audio=True)

    def _send(self, rows: np.ndarray, out: np.ndarray, heard: np.ndarray) -> None:
        events = sorted(self.eventful)
        voice = heard & self.sending
        if events:
            voice[events] = False
        send = rows[voice[rows]]
        talking = np.zeros(self.capacity, bool)
        if len(send):
            pcm = np.clip(out[send], -32768, 32767).astype(np.int16)
            packets = self.packets
            packets[send, HEADER:] = _ENCODE[self.codec[send, None], pcm.view(np.uint16)]
            marker = ~self.talking[send]
            packets[send, 1] = self.voice_pt[send] | (marker.astype(np.uint8) << 7)
            seq = self.seq[send]
            packets[send, 2] = seq >> 8
            packets[send, 3] = seq & 0xFF
            ts = self.ts[send]
            for i, shift in enumerate((24, 16, 8, 0)):
                packets[send, 4 + i] = (ts >> shift) & 0xFF
            self.seq[send] = seq + 1
            talking[send] = True
            views, senders = self._views, self.senders
            for row in send.tolist():
                try:  # noqa: SIM105 (per packet: a try costs nothing, suppress() does)
                    senders[row](views[row])
                except OSError:  # a full buffer, or ICMP: RTP is lossy by design
                    pass
            self.stats.packets_out += len(send)
        for row in events:
            endpoint = self._endpoints[row]
            assert endpoint is not None
            seq = int(self.seq[row])
            if not endpoint.send_event(seq, int(self.ts[row]), int(self.ssrc[row])):
                self.eventful.discard(row)
            self.seq[row] = (seq + 1) & 0xFFFF
            talking[row] = True
            self.stats.packets_out += 1
        self.talking = talking

    def close(self) -> None:
        for endpoint in list(self._endpoints):
            if endpoint is not None:
                endpoint.close()
        for recording in list(self.recordings):
            recording.stop("closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poller is not None:
            self.loop.remove_reader(self._poller.fileno())
            self._poller.close()
            self._poller = None


def _unsent(packet: memoryview) -> None:
    """The sender of a row with no peer (the tick never calls it: ``sending`` is False)."""


def _extend(array: np.ndarray, extra: int) -> np.ndarray:
    """``array`` with ``extra`` zero rows more."""
    return np.concatenate([array, np.zeros((extra, *array.shape[1:]), array.dtype)])
