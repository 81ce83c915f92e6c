"""SIP and SIPS URIs (RFC 3261 §19.1, §25.1) and other absolute URIs.

A ``SipUri`` keeps the user part as written (escaped) and offers the
unescaped form for comparisons (§19.1.4: ``sip:%75ser@h`` equals
``sip:user@h``). IPv6 references keep their brackets (RFC 5118). URIs of
schemes we do not route on (tel:, http:, ...) parse to ``AbsoluteUri`` so the
caller can answer 416 instead of failing the whole message.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from switch.sip.errors import ParseError
from switch.sip.syntax import Params, format_params, param

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?\.?")
# user = 1*( unreserved / escaped / user-unreserved ), password likewise (§25.1)
_USERINFO_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/:]*")
_URI_PARAM_RE = re.compile(
    r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+)?"
)
_HEADERS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$&=]*")


def unescape(text: str) -> str:
    """%HH decoding (§19.1.4); invalid escapes are left as written."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None = None
    password: str | None = None
    params: Params = ()
    headers: str | None = None

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user
            if self.password is not None:
                userinfo += ":" + self.password
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{self.hostport}{format_params(self.params)}"
        return text if self.headers is None else f"{text}?{self.headers}"


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of a scheme other than sip/sips, kept opaque (§19.1 allows any absoluteURI)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | AbsoluteUri


def parse_host(text: str, what: str) -> str:
    """Validate a host (§25.1 hostname / IPv4 / [IPv6]); returns it lowercased."""
    if text.startswith("["):
        if not text.endswith("]"):
            raise ParseError(f"{what}: bad IPv6 reference {text!r}")
        inner = text[1:-1]
        try:
            # RFC 5118 §4.10: the RFC 3261 ABNF admitted a third colon before an
            # embedded IPv4 address; accept it like the two-colon form.
            ipaddress.IPv6Address(inner.replace(":::", "::"))
        except ValueError:
            raise ParseError(f"{what}: bad IPv6 address {text!r}") from None
        return text.lower()
    if not _HOSTNAME_RE.fullmatch(text):
        raise ParseError(f"{what}: bad host {text!r}")
    return text.lower()


def split_hostport(text: str, what: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ParseError(f"{what}: bad IPv6 reference {text!r}")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ParseError(f"{what}: junk after host {text!r}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
            raise ParseError(f"{what}: bad port in {text!r}")
        port = int(port_text)
    return parse_host(host, what), port


@functools.lru_cache(maxsize=8192)
def parse_uri(text: str, what: str = "URI") -> Uri:
    """Parse a URI; results are cached, as phones repeat the same URIs."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
        raise ParseError(f"{what}: not a URI: {text[:80]!r}")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        if not rest or any(c in rest for c in ' \t\r\n<>"'):
            raise ParseError(f"{what}: bad {scheme}: URI {text[:80]!r}")
        return AbsoluteUri(scheme, rest)
    return _parse_sip(scheme, rest, what)


def _parse_sip(scheme: str, rest: str, what: str) -> SipUri:
    user = password = None
    # '@' cannot appear unescaped in the host, params or headers, so the first
    # one ends the userinfo even when the user part holds ';' or '?' (§25.1).
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo or not _USERINFO_RE.fullmatch(userinfo):
            raise ParseError(f"{what}: bad user part {userinfo!r}")
        # password is after the first ':' (user-unreserved has no ':')
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
        if not user:
            raise ParseError(f"{what}: empty user part")
    headers = None
    qmark = rest.find("?")
    if qmark >= 0:
        rest, headers = rest[:qmark], rest[qmark + 1 :]
        if not _HEADERS_RE.fullmatch(headers):
            raise ParseError(f"{what}: bad URI headers {headers!r}")
    hostport, semi, param_text = rest.partition(";")
    host, port = split_hostport(hostport, what)
    params: list[tuple[str, str | None]] = []
    if semi:
        for item in param_text.split(";"):
            if not item or not _URI_PARAM_RE.fullmatch(item):
                raise ParseError(f"{what}: bad URI parameter {item!r}")
            name, eq, value = item.partition("=")
            params.append((name.lower(), value if eq else None))
    return SipUri(scheme, user, host, port, password, tuple(params), headers)


def parse_sip_uri(text: str, what: str = "URI") -> SipUri:
    uri = parse_uri(text, what)
    if not isinstance(uri, SipUri):
        raise ParseError(f"{what}: expected a sip: or sips: URI, got {text[:80]!r}")
    return uri
