"""The switch's own end of a call leg's audio: what prompts, digits and recordings go through.

When the switch answers a call itself (call control, ``switch.b2bua.control``), the phone's
audio does not go to another phone: the leg's relay session has the phone on one side and a
`MediaEndpoint` on the other. The relay forwards between them as it would between two phones
(latching, counters, timeouts all stay the relay's), and the endpoint is just another RTP peer
at a local address. Bridging two legs joins their relay sessions (`RelaySession.join`) and
takes the endpoints out; when one party leaves, the other side's relay leg is pointed at a new
endpoint.

`MediaEndpoint` is the protocol issue 4's media engine implements: `play` a prompt, `collect`
DTMF digits, `record` the caller. `RtpSink` is the minimal endpoint that exists until then: it
receives the leg's RTP and counts it, and sends nothing. Its `play`, `collect` and `record`
raise `NotImplementedError`: they are NOT done.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from media.forward import bind_udp
from media.stats import Addr

__all__ = ["NOT_DONE", "MediaEndpoint", "RtpSink"]

NOT_DONE = "media engine: issue 4 (play, collect and record are not implemented yet)"


class MediaEndpoint(Protocol):
    """The switch's end of one leg's audio, an RTP peer of the relay on this host."""

    @property
    def address(self) -> Addr:
        """Where the relay sends this leg's audio (and where the endpoint's own comes from)."""

    @property
    def packets(self) -> int:
        """RTP packets received from the relay so far."""

    async def play(self, prompt: str) -> None:
        """Play the prompt named ``prompt`` to the leg's phone; return when it has been heard."""

    async def collect(self, max_digits: int, timeout: float, terminators: str = "#") -> str:
        """DTMF digits from the phone (RFC 4733) until ``max_digits``, a terminator or silence."""

    async def record(self, path: str, max_seconds: float) -> float:
        """Record the phone to ``path`` (WAV) until silence or ``max_seconds``; the length."""

    def close(self) -> None: ...


class RtpSink:
    """An endpoint that receives and counts RTP, and does nothing else yet (see above).

    Binds a UDP port of the system's choosing on ``host`` (the relay sends to it over the
    loopback or the media address, never across a network) and reads it through the event
    loop's ``add_reader``.
    """

    def __init__(self, host: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._sock: socket.socket | None = bind_udp(host, 0)
        self._address: Addr = self._sock.getsockname()[:2]
        self._packets = 0
        self.octets = 0
        self._loop.add_reader(self._sock.fileno(), self._read)

    @property
    def address(self) -> Addr:
        return self._address

    @property
    def packets(self) -> int:
        return self._packets

    def _read(self) -> None:
        if self._sock is None:
            return
        try:
            data = self._sock.recv(2048)
        except OSError:  # EAGAIN, or an ICMP error reported on the socket
            return
        self._packets += 1
        self.octets += len(data)

    async def play(self, prompt: str) -> None:
        raise NotImplementedError(NOT_DONE)

    async def collect(self, max_digits: int, timeout: float, terminators: str = "#") -> str:
        raise NotImplementedError(NOT_DONE)

    async def record(self, path: str, max_seconds: float) -> float:
        raise NotImplementedError(NOT_DONE)

    def close(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
