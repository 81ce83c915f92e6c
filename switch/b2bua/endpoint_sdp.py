"""SDP offer/answer (RFC 3264) for media that ends at the switch: a leg of call control.

A call the switch answers itself, or a leg it dials, has the switch's media
endpoint (``media.endpoint``) as the far end, reached through the leg's relay
session. The SDP the phone gets is written here from scratch, not rewritten
from another phone's: one audio stream on the relay's ports, one voice codec
the media engine will decode (G.711 µ-law or A-law, the phone's preference
first) and RFC 4733 telephone-event when the phone offers it, with the
phone's own payload type numbers. Other streams are refused with port 0, in
their places (RFC 3264 §6).

``answer`` answers a phone's offer; ``offer`` makes ours (for a dialled leg,
or in a 2xx to an INVITE without SDP) and ``read_answer`` checks the phone's
answer to it. Each returns what was agreed (``Agreed``): the codec, and
where the phone receives, for the relay.

Not done here: codecs other than G.711, ptime other than 20 ms, ICE, SRTP.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from media import LocalMedia
from switch.sip.sdp import Connection, Media, SdpError, SessionDescription, parse_sdp

VOICE = ("PCMU", "PCMA")  # what the media engine decodes, in our order of preference
EVENTS = "TELEPHONE-EVENT"
_ANSWERING = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


@dataclass(frozen=True, slots=True)
class Format:
    """One payload format of a stream: its payload type, encoding name and clock rate."""

    pt: str
    name: str  # upper case
    rate: int = 8000
    fmtp: str | None = None

    def lines(self) -> list[tuple[str, str]]:
        name = "telephone-event" if self.name == EVENTS else self.name
        out = [("a", f"rtpmap:{self.pt} {name}/{self.rate}")]
        if self.fmtp is not None:
            out.append(("a", f"fmtp:{self.pt} {self.fmtp}"))
        return out


DEFAULT_FORMATS = (Format("0", "PCMU"), Format("8", "PCMA"), Format("101", EVENTS, fmtp="0-16"))


@dataclass(slots=True)
class Origin:
    """The o= line of one leg's SDP: one session id for the leg's life, and a version that
    grows with every description we send (RFC 4566 §5.2, RFC 3264 §8)."""

    session: str = field(default_factory=lambda: str(secrets.randbelow(2**31)))
    version: int = 0

    def next(self, host: str) -> list[str]:
        self.version += 1
        return ["softswitch", self.session, str(self.version), "IN", "IP4", host]


@dataclass(frozen=True, slots=True)
class Agreed:
    """What a phone and the switch agreed on for one leg, and where the phone receives."""

    voice: Format
    events: Format | None
    host: str
    port: int  # 0: the phone receives nothing (refused or held, RFC 3264 §8.4)
    rtcp_port: int | None
    direction: str  # the phone's, as it wrote it

    @property
    def formats(self) -> list[Format]:
        return [self.voice] if self.events is None else [self.voice, self.events]

    @property
    def held(self) -> bool:
        return self.direction != "sendrecv"


def supported(media: Media) -> list[Format]:
    """The formats of ``media`` the switch can take, in the phone's order."""
    rtpmap = media.rtpmap()
    fmtp = {v.partition(" ")[0]: v.partition(" ")[2] for v in media.attributes("fmtp")}
    out = []
    for pt in media.formats:
        name, rate = rtpmap.get(pt, ("", 0))
        name = name.upper()
        if (name in VOICE and rate == 8000) or (name == EVENTS and rate == 8000):
            out.append(Format(pt, name, rate, fmtp.get(pt)))
    return out


def offered_formats(offer: bytes) -> list[Format]:
    """What a phone offered that the switch can take (its first audio stream); [] if nothing."""
    try:
        desc = parse_sdp(offer)
    except SdpError:
        return []
    audio = _audio(desc)
    return supported(audio) if audio is not None else []


def answer(
    offer: bytes, local: LocalMedia, prefer: str | None = None, origin: Origin | None = None
) -> tuple[bytes, Agreed]:
    """Our answer to a phone's ``offer``, with ``local`` (the relay's ports) as our end.

    ``prefer``: the voice codec to choose if the phone offers it (the one a dialled leg
    already uses, so that the two can be bridged); ``origin``: the leg's o= line (a new one
    when this is its first description). Raises ``SdpError`` when the offer has no
    audio stream or no codec the switch takes (the caller answers 488).
    """
    desc = parse_sdp(offer)
    audio = _audio(desc)
    if audio is None:
        raise SdpError("SDP: no audio stream")
    formats = supported(audio)
    voices = [f for f in formats if f.name in VOICE]
    if not voices:
        names = ", ".join(audio.codec_names()) or "none"
        raise SdpError(f"SDP: no codec the switch takes (offered: {names}; takes PCMU, PCMA)")
    voice = next((f for f in voices if f.name == prefer), voices[0])
    events = next((f for f in formats if f.name == EVENTS), None)
    agreed = _agreed(desc, audio, voice, events)
    streams = []
    for media in desc.media:
        if media is audio:
            direction = _ANSWERING.get(desc.direction(media), "sendrecv")
            streams.append(_stream(local, agreed.formats, direction))
        else:
            streams.append(Media(media.kind, 0, media.proto, list(media.formats)))
    return _description(local, streams, origin), agreed


def with_every_voice(formats: Sequence[Format]) -> list[Format]:
    """``formats`` (the defaults if none) with each voice codec the switch takes that they
    lack added after their own voice codecs, on its static payload type when that is free."""
    if not formats:
        return list(DEFAULT_FORMATS)
    names = {f.name for f in formats}
    taken = {f.pt for f in formats}
    missing = [f for f in DEFAULT_FORMATS if f.name in VOICE and f.name not in names]
    added = [f for f in missing if f.pt not in taken]
    voices = [f for f in formats if f.name != EVENTS]
    return [*voices, *added, *(f for f in formats if f.name == EVENTS)]


def offer(
    local: LocalMedia, formats: Sequence[Format] = DEFAULT_FORMATS, origin: Origin | None = None
) -> bytes:
    """Our offer of ``formats`` on the relay ports ``local``."""
    return _description(local, [_stream(local, list(formats), "sendrecv")], origin)


def read_answer(body: bytes, offered: Sequence[Format]) -> Agreed:
    """The phone's answer to our offer of ``offered``: which of them it chose."""
    desc = parse_sdp(body)
    audio = _audio(desc)
    if audio is None:
        raise SdpError("SDP: the answer accepts no audio stream")
    ours = {f.pt: f for f in offered}
    picked = [ours[pt] for pt in audio.formats if pt in ours]  # in the answer's order
    voice = next((f for f in picked if f.name != EVENTS), None)
    if voice is None:
        raise SdpError("SDP: the answer chose no codec that was offered")
    events = next((f for f in picked if f.name == EVENTS), None)
    return _agreed(desc, audio, voice, events)


def _audio(desc: SessionDescription) -> Media | None:
    return next((m for m in desc.media if m.kind == "audio" and m.port != 0), None)


def _agreed(desc: SessionDescription, audio: Media, voice: Format, events: Format | None) -> Agreed:
    connection = audio.connection or desc.connection
    assert connection is not None  # parse_sdp refuses a stream without c=
    rtcp = next(iter(audio.attributes("rtcp")), "").split()
    rtcp_port = int(rtcp[0]) if rtcp and rtcp[0].isdigit() else None
    return Agreed(voice, events, connection.address, audio.port, rtcp_port, desc.direction(audio))


def _stream(local: LocalMedia, formats: list[Format], direction: str) -> Media:
    lines = [("a", f"rtcp:{local.rtcp_port}")]
    for f in formats:
        lines += f.lines()
    lines += [("a", "ptime:20"), ("a", direction)]
    return Media("audio", local.rtp_port, "RTP/AVP", [f.pt for f in formats], lines=lines)


def _description(local: LocalMedia, streams: list[Media], origin: Origin | None) -> bytes:
    desc = SessionDescription(
        origin=(origin or Origin()).next(local.host),
        name="softswitch",
        connection=Connection(local.host),
        lines=[("t", "0 0")],
        media=streams,
    )
    return bytes(desc)
