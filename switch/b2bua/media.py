"""The seam between a call and its media session.

A call asks its ``MediaFactory`` for one ``MediaSession`` and passes every
SDP body through it: the caller's offer on its way to the callee, the
callee's answer on its way back. ``RelayMedia`` tells the relay
(``media.relay``) where each phone receives and rewrites the SDP so each
phone sends to the relay's port of its own leg; ``PassThrough`` leaves the
bodies as they are, so the phones send RTP to each other directly.

The relay has one RTP/RTCP pair per leg, so the first audio stream is
relayed and any other stream is refused with port 0 (RFC 3264 §6). A
re-INVITE's SDP goes through the same two methods (from the caller:
``offer``, from the callee: ``answer``, whichever of offer and answer it
is). While the relayed stream is not sendrecv (hold, RFC 3264 §8.4) the
relay is told both phones may fall silent, so its media timeout spares a
held call. Not done here: ICE candidates, SRTP keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from media import RelaySession, Side
from switch.sip.sdp import Connection, Media, SdpError, parse_sdp


class MediaSession(Protocol):
    # The voice codec of the callee's last SDP (its answer: what both phones send), if known.
    codec: str | None

    def offer(self, sdp: bytes) -> bytes:
        """The caller's SDP (offer, or answer to a re-INVITE) as the callee should see it."""

    def answer(self, sdp: bytes) -> bytes:
        """The callee's SDP (in 18x or 2xx, or its re-INVITE) as the caller should see it."""

    def close(self) -> None: ...


MediaFactory = Callable[[str], MediaSession]  # call id -> session


class PassThrough:
    """No media path of our own: SDP goes end to end unchanged."""

    def __init__(self) -> None:
        self.codec: str | None = None

    def offer(self, sdp: bytes) -> bytes:
        return sdp

    def answer(self, sdp: bytes) -> bytes:
        # A body we cannot parse is not ours to judge here: the phones negotiate end to end.
        with contextlib.suppress(SdpError):
            self.codec = _codec(parse_sdp(sdp).media)
        return sdp

    def close(self) -> None:
        return None


def _codec(streams: list[Media]) -> str | None:
    audio = next((m for m in streams if m.kind == "audio" and m.port != 0), None)
    voice = audio.voice_codec() if audio is not None else None
    return voice[0] if voice is not None else None


def pass_through(call_id: str) -> MediaSession:
    return PassThrough()


class RelayMedia:
    """SDP through one relay session: A's offer names leg B's ports, B's answer leg A's."""

    def __init__(self, session: RelaySession) -> None:
        self.session = session
        self.held = False
        self.codec: str | None = None

    def offer(self, sdp: bytes) -> bytes:
        return self._through(sdp, Side.A)

    def answer(self, sdp: bytes) -> bytes:
        return self._through(sdp, Side.B)

    def close(self) -> None:
        self.session.close()

    def _through(self, body: bytes, side: Side) -> bytes:
        """Learn where ``side``'s phone receives; write what the other phone must send to."""
        desc = parse_sdp(body)
        local = self.session.local(side.other)
        relayed = False
        for media in desc.media:
            if relayed or media.kind != "audio" or media.port == 0:
                media.port = 0
                continue
            relayed = True
            self._hold(desc.direction(media) != "sendrecv")
            connection = media.connection or desc.connection
            assert connection is not None  # parse_sdp refuses a stream without c=
            rtcp = next(iter(media.attributes("rtcp")), None)
            rtcp_port = int(rtcp.split()[0]) if rtcp and rtcp.split()[0].isdigit() else None
            voice = media.voice_codec()
            if side is Side.B and voice is not None:
                self.codec = voice[0]
            # The RTP clock of the voice codec, for the jitter counters (G.722 says 8000 too).
            rate = voice[1] if voice is not None else 8000
            self.session.set_remote(
                side, connection.address, media.port, rtcp_port, clock_rate=rate
            )
            media.port = local.rtp_port
            media.lines = [
                ("a", f"rtcp:{local.rtcp_port}") if k == "a" and v.startswith("rtcp:") else (k, v)
                for k, v in media.lines
            ]
            if media.connection is not None:
                media.connection = Connection(local.host)
        if not relayed:
            raise SdpError("SDP: no audio stream to relay")
        if desc.connection is not None:
            desc.connection = Connection(local.host)
        desc.origin[4:6] = ["IP4", local.host]
        return bytes(desc)

    def _hold(self, held: bool) -> None:
        if held != self.held:
            self.held = held
            for side in (Side.A, Side.B):
                self.session.set_hold(side, held)
