"""SDP session descriptions (RFC 4566) and the offer/answer edits a B2BUA makes (RFC 3264).

``parse_sdp`` keeps every line it does not interpret, in order, so a
description we rewrite (connection address and ports, for the media relay)
serializes back to what the phone sent but for those fields. Media
directions follow RFC 3264 §5.1/§6.1 (media-level attribute, else session
level, else sendrecv); the RFC 2543 hold form ``c=IN IP4 0.0.0.0`` is read
as a hold too (RFC 3264 §8.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from switch.sip.errors import ParseError

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# The static payload types of RFC 3551 §6 that a softswitch meets.
STATIC_PAYLOADS = {
    "0": ("PCMU", 8000),
    "8": ("PCMA", 8000),
    "9": ("G722", 8000),
    "18": ("G729", 8000),
}

_NOT_VOICE = frozenset({"TELEPHONE-EVENT", "CN"})


class SdpError(ParseError):
    """An SDP body we cannot act on; a request carrying it gets 400 (or 488)."""


@dataclass(slots=True)
class Connection:
    address: str
    addrtype: str = "IP4"

    def __str__(self) -> str:
        return f"IN {self.addrtype} {self.address}"

    @property
    def is_hold(self) -> bool:
        return self.address == "0.0.0.0"


@dataclass(slots=True)
class Media:
    kind: str  # audio, video, ...
    port: int
    proto: str  # RTP/AVP, RTP/SAVP, ...
    formats: list[str]
    connection: Connection | None = None
    # Every other line of the section, as (type, value): "a" lines keep
    # "name:value" or "name" as value.
    lines: list[tuple[str, str]] = field(default_factory=list)
    port_count: int | None = None

    def attributes(self, name: str) -> list[str]:
        """Values of ``a=name:value`` lines ('' for a flag attribute)."""
        out = []
        for kind, value in self.lines:
            if kind == "a":
                key, _, rest = value.partition(":")
                if key == name:
                    out.append(rest)
        return out

    def rtpmap(self) -> dict[str, tuple[str, int]]:
        """Payload type -> (encoding name, clock rate), static types included."""
        mapping = {pt: STATIC_PAYLOADS[pt] for pt in self.formats if pt in STATIC_PAYLOADS}
        for value in self.attributes("rtpmap"):
            pt, _, spec = value.partition(" ")
            name, _, rest = spec.partition("/")
            rate = rest.partition("/")[0]
            if pt and name and rate.isdigit():
                mapping[pt] = (name, int(rate))
        return mapping

    def codec_names(self) -> list[str]:
        """Encoding names in the offered order (upper-case)."""
        rtpmap = self.rtpmap()
        return [rtpmap[pt][0].upper() for pt in self.formats if pt in rtpmap]

    def voice_codec(self) -> tuple[str, int] | None:
        """The first format that carries the voice: (encoding name, clock rate).

        In an answer that is the codec both phones send (RFC 3264 §6.1); telephone-event
        (RFC 4733) and comfort noise (RFC 3389) only ride along.
        """
        rtpmap = self.rtpmap()
        for pt in self.formats:
            name, rate = rtpmap.get(pt, ("", 0))
            if name and name.upper() not in _NOT_VOICE:
                return name.upper(), rate
        return None

    def own_direction(self) -> str | None:
        for kind, value in self.lines:
            if kind == "a" and value in DIRECTIONS:
                return value
        return None

    def set_direction(self, direction: str) -> None:
        kept = [(k, v) for k, v in self.lines if not (k == "a" and v in DIRECTIONS)]
        self.lines = [*kept, ("a", direction)]

    def keep_formats(self, formats: list[str]) -> None:
        """Reduce the section to ``formats`` (in their given order) and their attributes."""
        keep = set(formats)
        self.formats = list(formats)
        per_format = ("rtpmap", "fmtp", "rtcp-fb")
        kept = []
        for kind, value in self.lines:
            if kind == "a":
                key, _, rest = value.partition(":")
                if key in per_format and rest.partition(" ")[0] not in keep:
                    continue
            kept.append((kind, value))
        self.lines = kept

    def __str__(self) -> str:
        port = self.port if self.port_count is None else f"{self.port}/{self.port_count}"
        out = [f"m={self.kind} {port} {self.proto} {' '.join(self.formats)}"]
        # RFC 4566 §5 order within a media section: i, c, b, k, a
        out.extend(f"{k}={v}" for k, v in self.lines if k == "i")
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"{k}={v}" for k, v in self.lines if k != "i")
        return "\r\n".join(out)


@dataclass(slots=True)
class SessionDescription:
    origin: list[str]  # username, sess-id, sess-version, nettype, addrtype, address
    name: str = "-"
    connection: Connection | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)  # session-level others
    media: list[Media] = field(default_factory=list)

    def direction(self, media: Media) -> str:
        """The effective direction of ``media`` (RFC 3264 §5.1, §8.4)."""
        own = media.own_direction()
        if own is not None:
            direction = own
        else:
            direction = next((v for k, v in self.lines if k == "a" and v in DIRECTIONS), "sendrecv")
        connection = media.connection or self.connection
        if connection is not None and connection.is_hold and direction == "sendrecv":
            return "sendonly"
        return direction

    def __bytes__(self) -> bytes:
        out = ["v=0", f"o={' '.join(self.origin)}", f"s={self.name}"]
        session_lines = list(self.lines)
        # RFC 4566 §5 order: v o s i u e p c b t r z k a, then media sections.
        before_c = [(k, v) for k, v in session_lines if k in "iuep"]
        after_c = [(k, v) for k, v in session_lines if k not in "iuep"]
        out.extend(f"{k}={v}" for k, v in before_c)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"{k}={v}" for k, v in after_c)
        out.extend(str(m) for m in self.media)
        return ("\r\n".join(out) + "\r\n").encode()


def _connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"SDP: bad c= line {value[:60]!r}")
    return Connection(parts[2].split("/")[0], parts[1])


def _media(value: str) -> Media:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"SDP: bad m= line {value[:60]!r}")
    port_text, _, count = parts[1].partition("/")
    if not port_text.isdigit() or int(port_text) > 65535 or (count and not count.isdigit()):
        raise SdpError(f"SDP: bad port in m= line {value[:60]!r}")
    return Media(
        parts[0], int(port_text), parts[2], parts[3:], port_count=int(count) if count else None
    )


def parse_sdp(body: bytes) -> SessionDescription:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP: not UTF-8 text") from None
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP: must start with v=0")
    session: SessionDescription | None = None
    origin: list[str] | None = None
    current: Media | None = None
    for line in lines[1:]:
        kind, eq, value = line.partition("=")
        if not eq or len(kind) != 1 or not kind.isalpha():
            raise SdpError(f"SDP: bad line {line[:60]!r}")
        if kind == "o":
            origin = value.split()
            if len(origin) != 6:
                raise SdpError(f"SDP: bad o= line {value[:60]!r}")
            session = SessionDescription(origin)
        elif session is None:
            raise SdpError("SDP: o= must follow v=")
        elif kind == "m":
            current = _media(value)
            session.media.append(current)
        elif kind == "c":
            connection = _connection(value)
            if current is None:
                session.connection = connection
            else:
                current.connection = connection
        elif kind == "s" and current is None:
            session.name = value
        elif current is None:
            session.lines.append((kind, value))
        else:
            current.lines.append((kind, value))
    if session is None:
        raise SdpError("SDP: no o= line")
    for media in session.media:
        if media.connection is None and session.connection is None and media.port != 0:
            raise SdpError(f"SDP: no c= for m={media.kind}")
    return session
