"""SIP messages: parsing and serialization (RFC 3261 §7, §20, §25).

``parse_message(data)`` turns one datagram (or one frame cut by
``StreamFramer`` from a TCP/TLS stream, §18.3) into a ``Request`` or
``Response``, or raises ``ParseError``. Parsing checks what every element
relies on: the start line, the mandatory header fields and their
single-valuedness, CSeq/method agreement, numeric ranges and the syntax of
Via, From, To, Contact — so a message that parses is safe to act on.

Header fields keep their order and the case they were written in; lookups
are case-insensitive and understand compact forms (§7.3.3). Values are
stored unfolded (§7.3.1). Typed views (``msg.via``, ``msg.cseq`` …) are
parsed once and cached until the field is changed.

This module does no I/O; the header section is decoded as UTF-8 with
surrogate escapes so that any byte round-trips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from switch.sip.errors import ParseError
from switch.sip.headers import (
    Contact,
    CSeq,
    NameAddr,
    Via,
    parse_contact,
    parse_cseq,
    parse_name_addr,
    parse_via,
)
from switch.sip.syntax import TOKEN_RE, has_param, parse_uint, split_list
from switch.sip.uri import Uri, parse_uri

SIP_VERSION = "SIP/2.0"

COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

CANONICAL_NAMES = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
}

# Fields that may appear once only in a request (RFC 4475 §3.3.8).
SINGLE_VALUED = frozenset(("call-id", "cseq", "from", "to", "max-forwards", "content-length"))

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    603: "Decline",
}

_METHOD_RE = TOKEN_RE
_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_T = TypeVar("_T")


_KEYS: dict[str, str] = {}


def header_key(name: str) -> str:
    """The lookup key of a header name: lowercase, compact forms expanded."""
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_KEYS) < 4096:  # bounded: header names are chosen by the peer
            _KEYS[name] = key
    return key


def canonical_name(key: str) -> str:
    return CANONICAL_NAMES.get(key) or "-".join(part.capitalize() for part in key.split("-"))


class Headers:
    """Ordered header fields; each entry is (key, name as written, value).

    Lookups go through an index of the field lines by key, made at the first lookup and
    dropped by every change (a message is read many more times than it is changed: parsing
    alone asks for eight fields).
    """

    __slots__ = ("_fields", "_index", "_typed")

    def __init__(self, fields: list[tuple[str, str, str]] | None = None) -> None:
        self._fields: list[tuple[str, str, str]] = fields if fields is not None else []
        self._index: dict[str, list[str]] | None = None
        self._typed: dict[str, Any] = {}

    def _lines(self, key: str) -> list[str]:
        index = self._index
        if index is None:
            index = self._index = {}
            for k, _, value in self._fields:
                lines = index.get(k)
                if lines is None:
                    index[k] = [value]
                else:
                    lines.append(value)
        return index.get(key, _NO_LINES)

    def _changed(self, key: str) -> None:
        self._index = None
        self._typed.pop(key, None)

    def get(self, name: str) -> str | None:
        """The first field value of ``name``, or None."""
        lines = self._lines(header_key(name))
        return lines[0] if lines else None

    def values(self, name: str) -> list[str]:
        """Every field line of ``name``, as written (comma lists not split)."""
        return list(self._lines(header_key(name)))

    def get_all(self, name: str) -> list[str]:
        """Every element of a list-valued field, across lines and commas (§7.3.1)."""
        items: list[str] = []
        for value in self.values(name):
            items.extend(split_list(value, canonical_name(header_key(name))))
        return items

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        key = header_key(name)
        entry = (key, canonical_name(key) if len(name) == 1 else name, value)
        if first:
            self._fields.insert(0, entry)
        else:
            self._fields.append(entry)
        self._changed(key)

    def set(self, name: str, value: str) -> None:
        """Replace all fields of ``name`` with one, where the first one stood."""
        key = header_key(name)
        for i, (k, written, _) in enumerate(self._fields):
            if k == key:
                self._fields[i] = (key, written, value)
                self._fields[i + 1 :] = [f for f in self._fields[i + 1 :] if f[0] != key]
                self._changed(key)
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields = [f for f in self._fields if f[0] != key]
        self._changed(key)

    def count(self, name: str) -> int:
        return len(self._lines(header_key(name)))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def copy(self) -> Headers:
        return Headers(list(self._fields))

    def typed(self, key: str, parse: Callable[[], _T]) -> _T:
        """Parse a typed view once and keep it until the field changes."""
        value = self._typed.get(key, _MISSING)
        if value is _MISSING:  # (no try/except KeyError: the miss is the usual case at parse)
            value = self._typed[key] = parse()
        return value  # type: ignore[no-any-return]


class Message:
    __slots__ = ("body", "headers")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # -- typed views of the fields the switch needs ---------------------------

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ParseError(f"missing {name} header")
        return value

    # The views read most (Via, From, To, CSeq: ~100 reads per call through the B2BUA) look in
    # the cache before building the parser closure that `typed` takes.

    @property
    def via(self) -> list[Via]:
        vias: list[Via] | None = self.headers._typed.get("via")
        if vias is None:
            vias = self.headers.typed(
                "via", lambda: [parse_via(v) for v in self.headers.get_all("v")]
            )
        return vias

    @property
    def top_via(self) -> Via:
        vias = self.via
        if not vias:
            raise ParseError("missing Via header")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        value: NameAddr | None = self.headers._typed.get("from")
        if value is None:
            value = self.headers.typed(
                "from", lambda: parse_name_addr(self._required("From"), "From")
            )
        return value

    @property
    def to(self) -> NameAddr:
        value: NameAddr | None = self.headers._typed.get("to")
        if value is None:
            value = self.headers.typed("to", lambda: parse_name_addr(self._required("To"), "To"))
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID")

    @property
    def cseq(self) -> CSeq:
        value: CSeq | None = self.headers._typed.get("cseq")
        if value is None:
            value = self.headers.typed("cseq", lambda: parse_cseq(self._required("CSeq")))
        return value

    @property
    def contacts(self) -> list[Contact]:
        return self.headers.typed(
            "contact", lambda: [parse_contact(v) for v in self.headers.get_all("Contact")]
        )

    @property
    def routes(self) -> list[NameAddr]:
        return self.headers.typed(
            "route", lambda: [parse_name_addr(v, "Route") for v in self.headers.get_all("Route")]
        )

    @property
    def record_routes(self) -> list[NameAddr]:
        return self.headers.typed(
            "record-route",
            lambda: [
                parse_name_addr(v, "Record-Route") for v in self.headers.get_all("Record-Route")
            ],
        )

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return None if value is None else parse_uint(value, "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        value = self.headers.get("Expires")
        return None if value is None else parse_uint(value, "Expires")

    def push_via(self, via: Via) -> None:
        """Add ``via`` on top (a request we send), keeping it parsed: the transaction reads
        its branch right after, and parsing back what we just wrote cost 5 us a request."""
        below = self.via
        self.headers.add("Via", str(via), first=True)
        self.headers._typed["via"] = [via, *below]

    def replace_top_via(self, via: Via) -> None:
        """Put ``via`` in place of the first Via value, keeping the others."""
        vias = self.top_via, *self.via[1:]
        fields = self.headers._fields
        for i, (key, name, value) in enumerate(fields):
            if key == "via":
                elements = split_list(value, "Via")
                elements[0] = str(via)
                fields[i] = (key, name, ", ".join(elements))
                break
        self.headers._changed("via")
        self.headers._typed["via"] = [via, *vias[1:]]

    def _check(self) -> None:
        """Parse every field the switch relies on, so errors surface at parse time."""
        if not self.via:
            raise ParseError("missing Via header")
        self.from_, self.to, self.call_id, self.cseq  # noqa: B018 - parse for errors
        self.contacts, self.max_forwards, self.expires  # noqa: B018

    # -- serialization --------------------------------------------------------

    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        lines = [self._start_line()]
        lines.extend(
            f"{name}: {value}"
            for key, name, value in self.headers._fields
            if key != "content-length"
        )
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


_NO_LINES: list[str] = []  # shared and never changed: what a missing field has
_MISSING = object()


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self, method: str, uri: str, headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri  # as written; ``request_uri`` parses it

    @property
    def request_uri(self) -> Uri:
        return self.headers.typed("\0ruri", lambda: parse_uri(self.uri, "Request-URI"))

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def _check(self) -> None:
        super()._check()
        if self.cseq.method != self.method:
            raise ParseError(f"CSeq method {self.cseq.method!r} does not match {self.method!r}")

    def response(
        self, status: int, reason: str | None = None, to_tag: str | None = None
    ) -> Response:
        """A response to this request with the fields §8.2.6.2 copies."""
        copied = [header_key(name) for name in ("Via", "From", "To", "Call-ID", "CSeq")]
        headers = Headers([f for key in copied for f in self.headers._fields if f[0] == key])
        if to_tag is not None and self.to.tag is None and status > 100:
            # The To as the client wrote it, tagged: a parameter after a URI without angle
            # brackets is a header parameter too (§20), so appending is right either way.
            headers.set("To", f"{self._required('To')};tag={to_tag}")
        return Response(status, reason if reason is not None else REASONS.get(status, ""), headers)

    def routing_only(self) -> Request:
        """This request with its Via fields only: where its responses go (§18.2.2).

        What a server transaction keeps once its final response is sent, for the 32 s of
        Timer L or H: the rest of a parsed request is dozens of objects that every full
        garbage collection walks, thousands of calls' worth under load.
        """
        headers = Headers([f for f in self.headers._fields if f[0] == "via"])
        headers._typed["via"] = self.via
        return Request(self.method, self.uri, headers)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("reason", "status")

    def __init__(
        self, status: int, reason: str = "", headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


class _RandomPool:
    """Cryptographically random octets from the OS, fetched 4 KiB at a time.

    Tags, branches and Call-IDs must be cryptographically random (RFC 3261 §19.3, §8.1.1.7);
    `secrets.token_hex` asks the kernel for each one: a system call per identifier, to which
    py-spy charged 3 % of the event loop's samples at 200 calls/s (bench/call_rate.py); alone,
    an 8-octet token costs 0.59 us that way and 0.21 us from the pool. The octets
    still come from `os.urandom`, only in larger draws, and each is handed out once; a forked
    child starts with a new draw (it must not repeat its parent's identifiers).
    """

    __slots__ = ("_at", "_octets")

    SIZE = 4096

    def __init__(self) -> None:
        self._octets = b""
        self._at = 0
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        self._octets, self._at = b"", 0

    def hex(self, n: int) -> str:
        """``n`` random octets as ``2n`` hex digits."""
        at = self._at
        if at + n > len(self._octets):
            self._octets, at = os.urandom(self.SIZE), 0
        self._at = at + n
        return self._octets[at : at + n].hex()


_random = _RandomPool()
random_hex = _random.hex


def new_tag() -> str:
    return random_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + random_hex(8)


def _split_head(data: bytes) -> tuple[str, bytes]:
    """Header section (unfolded, LF line ends) and the octets after it."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        head, rest = data[:end], data[end + 4 :]
    else:
        end = data.find(b"\n\n")  # tolerate bare-LF senders (RFC 3261 §7.5)
        if end < 0:
            raise ParseError("header section not terminated by an empty line")
        head, rest = data[:end], data[end + 2 :]
    text = head.decode("utf-8", "surrogateescape")
    if "\n " in text or "\n\t" in text:
        text = _FOLD_RE.sub(" ", text)
    return text.replace("\r\n", "\n"), rest


def parse_message(data: bytes) -> Request | Response:
    """Parse one whole message; the body is framed by Content-Length (§18.3)."""
    data = data.lstrip(b"\r\n")  # §7.5: ignore CRLFs before the start line
    if not data:
        raise ParseError("empty message")
    text, rest = _split_head(data)
    lines = text.split("\n")
    fields: list[tuple[str, str, str]] = []
    single: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        key = _KEYS.get(name)
        if key is None:
            if not colon or not TOKEN_RE.fullmatch(name):
                raise ParseError(f"bad header line {line[:60]!r}")
            key = header_key(name)
        if key in SINGLE_VALUED:
            if key in single:
                raise ParseError(f"more than one {canonical_name(key)} header")
            single.add(key)
        fields.append((key, name, value.strip(" \t")))
    headers = Headers(fields)
    msg = _parse_start_line(lines[0], headers)
    msg.body = _body(headers, rest)
    msg._check()
    return msg


def _parse_start_line(line: str, headers: Headers) -> Request | Response:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version != SIP_VERSION:
            raise ParseError(f"unsupported version {version[:20]!r}", status=505)
        if len(code) != 3 or not code.isdigit() or not "100" <= code <= "699":
            raise ParseError(f"bad status code {code[:20]!r}")
        return Response(int(code), reason, headers)
    parts = line.split(" ")
    if len(parts) != 3 or not _METHOD_RE.fullmatch(parts[0]) or not parts[1]:
        raise ParseError(f"bad request line {line[:80]!r}")
    method, uri, version = parts
    if not version.startswith("SIP/"):
        raise ParseError(f"bad request line {line[:80]!r}")
    if version != SIP_VERSION:
        raise ParseError(f"unsupported version {version[:20]!r}", status=505)
    request = Request(method, uri, headers)
    parsed = request.request_uri
    if getattr(parsed, "headers", None) is not None:
        raise ParseError("Request-URI must not carry headers (§19.1.5)")
    return request


def _body(headers: Headers, rest: bytes) -> bytes:
    values = headers.values("Content-Length")
    if not values:
        return rest  # no Content-Length: the rest of the datagram (§18.3)
    if len(set(values)) > 1:
        raise ParseError("conflicting Content-Length headers")
    length = parse_uint(values[0], "Content-Length")
    if length > len(rest):
        raise ParseError(f"Content-Length {length} exceeds the {len(rest)} octets received")
    return rest[:length]  # octets past the body are ignored on datagrams (§18.3)


def stamp_via(via: Via, host: str, port: int) -> Via:
    """The top Via as the server records it (§18.2.1, RFC 3581 §4).

    ``received`` is added when the source differs from sent-by, and always
    when the client asked for ``rport``, which is then filled with the port.
    """
    params = [(k, v) for k, v in via.params if k != "received"]
    if has_param(via.params, "rport"):
        params = [(k, str(port) if k == "rport" else v) for k, v in params]
        params.append(("received", host))
    elif via.host.strip("[]") != host:
        params.append(("received", host))
    else:
        return via
    return via.with_params(tuple(params))


def error_response(data: bytes, status: int, reason: str) -> Response | None:
    """A best-effort stateless response to bytes that did not parse.

    Copies Via, From, To, Call-ID and CSeq lines as written (§8.2.6.2). Returns
    None when no response is possible: not a request, or no Via to send it to.
    """
    try:
        text, _ = _split_head(data.lstrip(b"\r\n") + b"\r\n\r\n")
    except ParseError:
        return None
    lines = text.split("\n")
    if lines[0].startswith("SIP/") or " " not in lines[0]:
        return None
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = header_key(name.strip())
        if colon and key in ("via", "from", "to", "call-id", "cseq"):
            headers.add(canonical_name(key), value.strip())
    if "Via" not in headers:
        return None
    to = headers.get("To")
    if to is not None and ";tag=" not in to.replace(" ", ""):
        headers.set("To", f"{to};tag={new_tag()}")
    return Response(status, reason.replace("\r", " ").replace("\n", " "), headers)


__all__ = [
    "Headers",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "error_response",
    "new_branch",
    "new_tag",
    "parse_message",
    "stamp_via",
]
