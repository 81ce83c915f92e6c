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
held call.

Transfer (``switch.b2bua.transfer``) puts a new phone in the place of one
side without touching the other phone: ``offer_for(side)`` is what to offer
the new phone (the staying phone's last SDP as the relay presents it on
that side's ports, its formats narrowed to those the two phones had agreed
on, so whatever the new phone picks, the staying phone already accepted);
``retarget(side, sdp)`` points that side's relay leg at the new phone's
answer; ``answer_for(side, offer)`` answers a new phone's own offer (an
INVITE with Replaces) the same way; ``join`` makes one session of one leg of
each of two calls (attended transfer). The staying phone gets no re-INVITE,
so it keeps sending the codec it had: a new phone that accepts none of the
agreed formats fails the transfer (488). ``PassThrough`` cannot do any of
this (``transfers`` is False): the phones would have to be re-INVITEd.
Not done here: ICE candidates, SRTP keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from media import LocalMedia, RelaySessionLike, Side
from switch.sip.sdp import Connection, Media, SdpError, SessionDescription, parse_sdp

__all__ = ["MediaFactory", "MediaSession", "PassThrough", "RelayMedia", "TransferMedia"]


class MediaSession(Protocol):
    # The voice codec of the callee's last SDP (its answer: what both phones send), if known.
    codec: str | None

    def offer(self, sdp: bytes) -> bytes:
        """The caller's SDP (offer, or answer to a re-INVITE) as the callee should see it."""

    def answer(self, sdp: bytes) -> bytes:
        """The callee's SDP (in 18x or 2xx, or its re-INVITE) as the caller should see it."""

    def close(self) -> None: ...


class TransferMedia(MediaSession, Protocol):
    """A media session that can put a new phone in the place of one side (see above)."""

    def offer_for(self, side: Side) -> bytes: ...

    def retarget(self, side: Side, sdp: bytes) -> None: ...

    def answer_for(self, side: Side, offer: bytes) -> bytes: ...

    def join(self, side: Side, other: TransferMedia, other_side: Side) -> TransferMedia: ...


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

    def __init__(self, session: RelaySessionLike) -> None:
        self.session = session
        self.held = False
        self.codec: str | None = None
        self.last: dict[Side, bytes] = {}  # the last SDP from each side's phone, as sent

    def offer_for(self, side: Side) -> bytes:
        """The SDP to offer a new phone that takes the place of ``side``'s phone."""
        return self._present(side, self.last.get(side, b""))

    def resume_offer(self, side: Side) -> bytes | None:
        """What to offer ``side``'s phone to take it off hold (the other phone's SDP on its
        ports, sendrecv), if its last SDP was not sendrecv; None if it was."""
        last = self.last.get(side)
        if not last:
            return None
        desc = parse_sdp(last)
        if desc.direction(_relayed_stream(desc)) == "sendrecv":
            return None
        return self.offer_for(side)

    def retarget(self, side: Side, sdp: bytes) -> None:
        """The new phone of ``side`` answered ``sdp``: its relay leg sends there now."""
        self._through(sdp, side)

    def answer_for(self, side: Side, offer: bytes) -> bytes:
        """Answer the offer of a new phone that takes the place of ``side``'s phone."""
        self._through(offer, side)
        return self._present(side, offer, strict=True)

    def join(self, side: Side, other: TransferMedia, other_side: Side) -> RelayMedia:
        """One media session of this call's ``side`` and ``other``'s ``other_side``."""
        if not isinstance(other, RelayMedia):
            raise TypeError("only relayed calls can be joined")
        joined = RelayMedia(self.session.join(side, other.session, other_side))
        joined.last = {side: self.last.get(side, b""), side.other: other.last.get(other_side, b"")}
        joined.codec = self.codec
        return joined

    def _present(self, side: Side, agreed: bytes, *, strict: bool = False) -> bytes:
        """The other phone's last SDP on ``side``'s ports, narrowed to ``agreed``'s formats."""
        stays = self.last.get(side.other)
        if not stays:
            raise SdpError("SDP: the other phone has sent none yet")
        desc = parse_sdp(stays)
        names = set()
        if agreed:
            names = {
                codec
                for media in parse_sdp(agreed).media
                if media.kind == "audio" and media.port
                for codec in _codecs(media).values()
            }
        local = self.session.local(side)
        media = _relayed_stream(desc)
        codecs = _codecs(media)
        common = [pt for pt in media.formats if codecs.get(pt) in names]
        if strict and not any(codecs[pt][0] != "TELEPHONE-EVENT" for pt in common):
            raise SdpError("SDP: no codec in common with the other phone")
        if common:
            media.keep_formats(common)
        media.set_direction("sendrecv")
        _point_at(media, local)
        return _from_relay(desc, local)

    def offer(self, sdp: bytes) -> bytes:
        return self._through(sdp, Side.A)

    def answer(self, sdp: bytes) -> bytes:
        return self._through(sdp, Side.B)

    def close(self) -> None:
        self.session.close()

    def _through(self, body: bytes, side: Side) -> bytes:
        """Learn where ``side``'s phone receives; write what the other phone must send to."""
        desc = parse_sdp(body)
        self.last[side] = body
        local = self.session.local(side.other)
        media = _relayed_stream(desc)
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
        self.session.set_remote(side, connection.address, media.port, rtcp_port, clock_rate=rate)
        _point_at(media, local)
        return _from_relay(desc, local)

    def _hold(self, held: bool) -> None:
        if held != self.held:
            self.held = held
            for side in (Side.A, Side.B):
                self.session.set_hold(side, held)


def _relayed_stream(desc: SessionDescription) -> Media:
    """The first audio stream, the one the relay carries; every other stream gets port 0."""
    relayed: Media | None = None
    for media in desc.media:
        if relayed is None and media.kind == "audio" and media.port != 0:
            relayed = media
        else:
            media.port = 0
    if relayed is None:
        raise SdpError("SDP: no audio stream to relay")
    return relayed


def _codecs(media: Media) -> dict[str, tuple[str, int]]:
    """Payload type -> (encoding name in upper case, clock rate): what two phones can compare."""
    return {pt: (name.upper(), rate) for pt, (name, rate) in media.rtpmap().items()}


def _point_at(media: Media, local: LocalMedia) -> None:
    """Make the stream's address and ports the relay leg's ``local`` ones."""
    media.port = local.rtp_port
    media.lines = [
        ("a", f"rtcp:{local.rtcp_port}") if k == "a" and v.startswith("rtcp:") else (k, v)
        for k, v in media.lines
    ]
    if media.connection is not None:
        media.connection = Connection(local.host)


def _from_relay(desc: SessionDescription, local: LocalMedia) -> bytes:
    """The description with the relay leg's address as its session address and origin."""
    if desc.connection is not None:
        desc.connection = Connection(local.host)
    desc.origin[4:6] = ["IP4", local.host]
    return bytes(desc)
