"""Cutting a TCP/TLS byte stream into SIP messages (RFC 3261 §18.3).

On a stream, Content-Length is mandatory and is what ends the body. CRLFs
between messages are keep-alives (RFC 5626 §4.4.1: a double CRLF "ping" is
answered with a single CRLF "pong"). A stream that cannot be framed — no
Content-Length, a bad one, or a header section or body larger than the
limits — raises ``ParseError``; the caller should answer if it can and
close the connection, since the framing is lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from switch.sip.errors import ParseError

_CONTENT_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I | re.M)

MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Ping:
    """A CRLFCRLF keep-alive; answer with ``PONG``."""


PONG = b"\r\n"


class StreamFramer:
    """Feed bytes with ``feed``; take whole messages (bytes) or ``Ping`` from ``next``."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> bytes | Ping | None:
        """The next complete message, a keep-alive ping, or None if more bytes are needed."""
        buf = self._buffer
        if buf.startswith(b"\r\n"):
            stripped = len(buf) - len(buf.lstrip(b"\r\n"))
            ping = buf.startswith(b"\r\n\r\n")
            del buf[: 4 if ping else stripped]
            if ping:
                return Ping()
            if not buf:
                return None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise ParseError("header section too large")
            return None
        head = bytes(buf[:end])
        lengths = {m.strip() for m in _CONTENT_LENGTH_RE.findall(head)}
        if not lengths:
            raise ParseError("Content-Length is required on a stream transport")
        if len(lengths) > 1:
            raise ParseError("conflicting Content-Length headers")
        text = lengths.pop()
        if not text.isdigit():
            raise ParseError(f"bad Content-Length {text[:20]!r}")
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise ParseError(f"body of {length} octets is too large")
        total = end + 4 + length
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return message

    @property
    def buffered(self) -> int:
        return len(self._buffer)
