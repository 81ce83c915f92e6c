"""Typed views of the SIP header fields the switch acts on (RFC 3261 §20).

Each parser takes one header *value* (already unfolded, one list element
for list-valued fields) and returns a frozen dataclass, or raises
``ParseError`` saying what was wrong. Serialization (``str()``) writes the
canonical form; parameters keep their order and their written values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from switch.sip.errors import ParseError
from switch.sip.syntax import (
    Params,
    end_of_quoted,
    format_params,
    has_param,
    is_token,
    param,
    parse_params,
    parse_uint,
    quote,
    unquote,
)
from switch.sip.uri import Uri, parse_host, parse_uri, split_hostport

BRANCH_MAGIC = "z9hG4bK"  # §8.1.1.7: marks an RFC 3261 branch


def sent_by(host: str, port: int | None) -> str:
    """A Via's sent-by (§20.42): the host, and the port when there is one."""
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (§20.42): ``SIP/2.0/UDP host:port;branch=...;rport``."""

    transport: str  # upper-case: UDP, TCP, TLS, SCTP, WS, ...
    host: str
    port: int | None = None
    params: Params = ()

    @property
    def branch(self) -> str | None:
        return param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param(self.params, "received")

    @property
    def has_rport(self) -> bool:
        return has_param(self.params, "rport")

    @property
    def rport(self) -> int | None:
        value = param(self.params, "rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> str:
        return sent_by(self.host, self.port)

    @property
    def is_rfc3261(self) -> bool:
        branch = self.branch
        return branch is not None and branch.startswith(BRANCH_MAGIC)

    def with_params(self, params: Params) -> Via:
        return Via(self.transport, self.host, self.port, params)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{format_params(self.params)}"


def parse_via(value: str) -> Via:
    head, semi, rest = value.partition(";")
    # sent-protocol allows LWS around each '/' (§25.1, RFC 4475 §3.1.1.1)
    parts = head.split("/", 2)
    if len(parts) != 3:
        raise ParseError(f"Via: bad sent-protocol in {value[:80]!r}")
    name, version = parts[0].strip(), parts[1].strip()
    transport_and_host = parts[2].strip().split(None, 1)
    if name.upper() != "SIP" or version != "2.0" or len(transport_and_host) != 2:
        raise ParseError(f"Via: bad sent-protocol in {value[:80]!r}")
    transport, sent_by = transport_and_host
    if not is_token(transport):
        raise ParseError(f"Via: bad transport {transport!r}")
    host, port = split_hostport(sent_by.strip(), "Via")
    params = parse_params(rest, "Via") if semi else ()
    for key, val in params:
        if key == "received" and val is not None:
            # RFC 5118 §4.5: accept an IPv6 received= with or without brackets
            if ":" in val and not val.startswith("["):
                parse_host(f"[{val}]", "Via received")
            else:
                parse_host(val, "Via received")
        elif key == "rport" and val is not None and not (val.isdigit() and int(val) < 65536):
            raise ParseError(f"Via: bad rport {val!r}")
        elif key == "branch" and not val:
            raise ParseError("Via: empty branch")
    return Via(transport.upper(), host, port, params)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """From, To, Contact, Route, Record-Route values (§20.10, §20.20, §20.39)."""

    uri: Uri
    display: str | None = None  # unquoted display name
    params: Params = ()

    @property
    def tag(self) -> str | None:
        return param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def with_params(self, params: Params) -> NameAddr:
        return NameAddr(self.uri, self.display, params)

    def __str__(self) -> str:
        display = f"{quote(self.display)} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@functools.lru_cache(maxsize=2048)
def parse_name_addr(value: str, what: str) -> NameAddr:
    """Parse a name-addr or addr-spec with its parameters.

    Results are cached: a dialog repeats its From, To and Contact in every request and
    response within a second or so of call set-up, and a ``NameAddr`` is immutable. The
    cache is kept small: every entry is walked by each full garbage collection.
    """
    value = value.strip()
    display: str | None = None
    if value.startswith('"'):
        end = end_of_quoted(value, 0)
        display = unquote(value[:end])
        rest = value[end:].lstrip()
        if not rest.startswith("<"):
            raise ParseError(f"{what}: quoted display name without <URI>")
        return _parse_bracketed(rest, display, what)
    lt = value.find("<")
    if lt >= 0:
        name = value[:lt].strip()
        if name:
            # unquoted display-name = *(token LWS) (§25.1)
            if not all(is_token(word) for word in name.split()):
                raise ParseError(f"{what}: display name must be quoted: {name!r}")
            display = " ".join(name.split())
        return _parse_bracketed(value[lt:], display, what)
    # addr-spec without brackets: everything after the first ';' is a header
    # parameter, and the URI may not hold ',', '?' or ';' (§20)
    uri_text, semi, rest = value.partition(";")
    uri_text = uri_text.strip()
    if "?" in uri_text or "," in uri_text or " " in uri_text:
        raise ParseError(f"{what}: URI with '?', ',' or spaces must be in <>: {value[:80]!r}")
    params = parse_params(rest, what) if semi else ()
    return NameAddr(parse_uri(uri_text, what), None, params)


def _parse_bracketed(text: str, display: str | None, what: str) -> NameAddr:
    close = text.find(">")
    if close < 0:
        raise ParseError(f"{what}: missing '>' in {text[:80]!r}")
    uri_text = text[1:close]
    if uri_text != uri_text.strip() or not uri_text:
        raise ParseError(f"{what}: spaces inside <URI> in {text[:80]!r}")
    rest = text[close + 1 :].strip()
    params: Params = ()
    if rest:
        if not rest.startswith(";"):
            raise ParseError(f"{what}: junk after URI: {rest[:40]!r}")
        params = parse_params(rest[1:], what)
    return NameAddr(parse_uri(uri_text, what), display, params)


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not is_token(parts[1]):
        raise ParseError(f"CSeq: expected 'number METHOD', got {value[:60]!r}")
    return CSeq(parse_uint(parts[0], "CSeq"), parts[1])


@dataclass(frozen=True, slots=True)
class Contact:
    """A Contact value: a name-addr, or the ``*`` of a REGISTER that removes all."""

    address: NameAddr | None  # None for '*'
    expires: int | None = None
    q: float | None = None

    @property
    def is_star(self) -> bool:
        return self.address is None


def parse_contact(value: str) -> Contact:
    if value.strip() == "*":
        return Contact(None)
    addr = parse_name_addr(value, "Contact")
    expires_text = addr.param("expires")
    expires = None
    if expires_text is not None:
        expires = parse_uint(expires_text, "Contact expires")
    q_text = addr.param("q")
    q = None
    if q_text is not None:
        try:
            q = float(q_text)
        except ValueError:
            raise ParseError(f"Contact: bad q value {q_text!r}") from None
        if not 0.0 <= q <= 1.0:
            raise ParseError(f"Contact: q value {q_text!r} out of range 0..1")
    return Contact(addr, expires, q)
