"""HTTP Digest authentication for SIP (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760), sans-IO.

Parses and formats the values of WWW-Authenticate / Proxy-Authenticate (challenges) and
Authorization / Proxy-Authorization (credentials), computes responses as a client, and issues and
checks nonces as a server (`NonceManager`). It reads no clock: every time is a `now` argument, in
seconds on one clock shared by all calls (wall time when several nodes share a secret).

It does not choose among several credentials headers (RFC 3261 §22.3: the caller picks the one
for its realm), nor compare `uri` with the Request-URI (RFC 2617 §3.2.2.5), nor support
qop=auth-int or RFC 7616 userhash: the caller owns the message, and phones use plain qop=auth.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from switch.sip.errors import ParseError


def _md5(text: str) -> str:
    # surrogatepass: odd text from the wire must give a wrong digest, never an exception.
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# Upper-cased algorithm token -> (name of the base hash, hash, is a "-sess" variant).
# Token comparison is case-insensitive (RFC 7616 §3.3); "-sess" is RFC 2617 §3.2.2.2.
_ALGORITHMS: dict[str, tuple[str, Callable[[str], str], bool]] = {
    "MD5": ("MD5", _md5, False),
    "MD5-SESS": ("MD5", _md5, True),
    "SHA-256": ("SHA-256", _sha256, False),
    "SHA-256-SESS": ("SHA-256", _sha256, True),
}

_LWS = r"[ \t\r\n]*"
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 7230 §3.2.6 tchar, a superset of RFC 3261's
_SCHEME_RE = re.compile(rf"{_LWS}({_TOKEN})(?:[ \t\r\n]+|\Z)")
# One auth-param (RFC 7235 §2.1) after any separators; the "#" list rule allows empty elements.
# Unquoted values are lenient: some clients send a bare URI or base64 nonce.
_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
_BARE = r'([^ \t\r\n,"]+)'
_PARAM_RE = re.compile(
    rf"[ \t\r\n,]*({_TOKEN}){_LWS}={_LWS}(?:{_QUOTED}|{_BARE}){_LWS}(?:,|\Z)", re.DOTALL
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}\Z")  # nc-value = 8LHEX (RFC 2617 §3.2.2)


def _parse_params(value: str, what: str) -> dict[str, str]:
    scheme = _SCHEME_RE.match(value)
    if scheme is None or scheme.group(1).lower() != "digest":
        raise ParseError(f"{what}: expected the Digest scheme, got {value[:40]!r}")
    params: dict[str, str] = {}
    pos, end = scheme.end(), len(value)
    while pos < end:
        m = _PARAM_RE.match(value, pos)
        if m is None:
            if value[pos:].strip(" \t\r\n,"):
                raise ParseError(f"{what}: expected name=value at {value[pos : pos + 40]!r}")
            break
        name, quoted = m.group(1).lower(), m.group(2)
        if name in params:
            raise ParseError(f"{what}: parameter {name!r} given twice (RFC 7235 §2.1)")
        if quoted is None:
            params[name] = m.group(3)
        elif "\\" in quoted:
            params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = m.end()
    return params


def _required(params: dict[str, str], name: str, what: str) -> str:
    value = params.pop(name, None)
    if value is None:
        raise ParseError(f"{what}: missing {name!r}")
    return value


def _quote(text: str) -> str:
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _param(name: str, value: str | None, quote: bool = True) -> str:
    """The text appending one parameter to a header value; empty when the value is absent."""
    if value is None:
        return ""
    return f", {name}={_quote(value) if quote else value}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An Authorization / Proxy-Authorization value (RFC 3261 §22.4, RFC 2617 §3.2.2).

    Fields hold the text as sent: `algorithm` None means MD5 (RFC 2617 §3.2.1), `qop` None is
    an RFC 2069 response. Unknown parameters are kept in `extra`, names lower-cased.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def header_value(self) -> str:
        # qop and nc are tokens here, unquoted (RFC 3261 §25.1 message-qop, nonce-count).
        return (
            f"Digest username={_quote(self.username)}, realm={_quote(self.realm)}, "
            f"nonce={_quote(self.nonce)}, uri={_quote(self.uri)}, response={_quote(self.response)}"
            f"{_param('algorithm', self.algorithm, False)}{_param('cnonce', self.cnonce)}"
            f"{_param('opaque', self.opaque)}{_param('qop', self.qop, False)}"
            f"{_param('nc', self.nc, False)}{''.join(map(_param, self.extra, self.extra.values()))}"
        )


@dataclass(frozen=True, slots=True)
class Challenge:
    """A WWW-Authenticate / Proxy-Authenticate value (RFC 3261 §22.4, RFC 2617 §3.2.1).

    `qop` holds the offered qop-options; `algorithm` None means MD5.
    """

    realm: str
    nonce: str
    algorithm: str | None = None
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def answerable(self) -> bool:
        """Whether `respond` can answer it: RFC 8760 §2.4 clients take the first such one."""
        found = _ALGORITHMS.get((self.algorithm or "MD5").upper())
        if found is None:
            return False
        if not self.qop:
            return not found[2]  # "-sess" needs the cnonce that only comes with qop
        return any(q.lower() == "auth" for q in self.qop)

    def header_value(self) -> str:
        return (
            f"Digest realm={_quote(self.realm)}{_param('domain', self.domain)}, "
            f"nonce={_quote(self.nonce)}{_param('opaque', self.opaque)}"
            f"{_param('algorithm', self.algorithm, False)}"
            f"{_param('qop', ','.join(self.qop) or None)}{', stale=true' if self.stale else ''}"
            f"{''.join(map(_param, self.extra, self.extra.values()))}"
        )


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization / Proxy-Authorization header value; raise ParseError if malformed."""
    what = "Digest credentials"
    params = _parse_params(value, what)
    return Credentials(
        username=_required(params, "username", what),
        realm=_required(params, "realm", what),
        nonce=_required(params, "nonce", what),
        uri=_required(params, "uri", what),
        response=_required(params, "response", what),
        algorithm=params.pop("algorithm", None),
        cnonce=params.pop("cnonce", None),
        opaque=params.pop("opaque", None),
        qop=params.pop("qop", None),
        nc=params.pop("nc", None),
        extra=params,
    )


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate header value holding one Digest challenge."""
    what = "Digest challenge"
    params = _parse_params(value, what)
    qop = params.pop("qop", "")
    stale = params.pop("stale", "")
    return Challenge(
        realm=_required(params, "realm", what),
        nonce=_required(params, "nonce", what),
        algorithm=params.pop("algorithm", None),
        qop=tuple(q for q in (q.strip(" \t\r\n") for q in qop.split(",")) if q),
        opaque=params.pop("opaque", None),
        stale=stale.lower() == "true",  # anything else is false (RFC 2617 §3.2.1)
        domain=params.pop("domain", None),
        extra=params,
    )


def _lookup(algorithm: str | None) -> tuple[str, Callable[[str], str], bool]:
    found = _ALGORITHMS.get((algorithm or "MD5").upper())
    if found is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return found


def ha1(username: str, realm: str, password: str, algorithm: str | None = "MD5") -> str:
    """H(username:realm:password), what a store may keep instead of the password.

    For "-sess" algorithms this is still the plain HA1: the session step needs the nonce and
    cnonce of each response, so it is applied there (RFC 2617 §3.2.2.2).
    """
    return _lookup(algorithm)[1](f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    algorithm: str | None = None,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest for a plain HA1 (see `ha1`); without qop it is the RFC 2069 form."""
    _, h, sess = _lookup(algorithm)
    if qop is None:
        if sess:
            raise ValueError(f"algorithm {algorithm} needs qop and cnonce")
        return h(f"{ha1}:{nonce}:{h(f'{method}:{uri}')}")  # RFC 2069 §2.1.2
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce (RFC 2617 §3.2.2)")
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")  # RFC 2617 §3.2.2.2
    return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{h(f'{method}:{uri}')}")  # RFC 2617 §3.2.2.1


def respond(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int = 1,
) -> Credentials:
    """Answer a challenge as a client; `cnonce` is the caller's fresh random string.

    Raises ValueError when the challenge is not `answerable`.
    """
    if not challenge.answerable:
        raise ValueError(f"cannot answer {challenge.header_value()!r}")
    qop = "auth" if challenge.qop else None
    nc_value = f"{nc:08x}" if qop else None
    cnonce_value = cnonce if qop else None
    key = ha1(username, challenge.realm, password, challenge.algorithm)
    response = compute_response(
        key,
        method,
        uri,
        challenge.nonce,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc_value,
        cnonce=cnonce_value,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        cnonce=cnonce_value,
        opaque=challenge.opaque,
        qop=qop,
        nc=nc_value,
    )


class AuthResult(enum.Enum):
    """Outcome of `NonceManager.verify`, with what the caller should answer."""

    OK = "ok"
    # Right digest on an expired nonce of ours: re-challenge with stale=true, and do not count
    # it as a failure (RFC 2617 §3.2.1).
    STALE = "stale"
    # Not a nonce we issued for this realm (forged, altered, another secret): new challenge.
    BAD_NONCE = "bad-nonce"
    # Nonce-count not above the last one accepted for this nonce (RFC 2617 §3.2.2): new
    # challenge. Retransmissions never get here: the transaction layer absorbs them.
    REPLAY = "replay"
    WRONG_PASSWORD = "wrong-password"
    # Unsupported algorithm, qop other than auth, missing or bad cnonce/nc: 400.
    MALFORMED = "malformed"


# nonce = base64url(time || random || HMAC-SHA256(secret, time || random || realm)[:16]):
# any node holding the secret checks it without state, and a nonce is bound to its realm, so
# one tenant's nonce is useless in another's.
_STAMP = struct.Struct(">d")
_RANDOM_BYTES = 12
_MAC_BYTES = 16
_BODY_BYTES = _STAMP.size + _RANDOM_BYTES
_NONCE_CHARS = (_BODY_BYTES + _MAC_BYTES) * 4 // 3  # 36 bytes: 48 characters, no padding


class NonceManager:
    """Issues Digest challenges and checks the answers (server side).

    Nonces carry their own issue time and MAC, so nothing is stored per challenge. State is
    kept only for nonces that authenticated successfully: the last nonce-count, for replay
    protection. It is pruned of expired nonces and capped at `max_tracked` entries; when the
    cap evicts a live nonce, older nonces seen afresh are answered STALE rather than trusted.
    """

    __slots__ = ("_forgotten", "_max_tracked", "_secret", "_seen", "ttl")

    def __init__(
        self, secret: bytes | None = None, ttl: float = 300.0, max_tracked: int = 100_000
    ) -> None:
        self._secret = os.urandom(32) if secret is None else secret
        self.ttl = ttl
        self._max_tracked = max_tracked
        # nonce -> (issue time, last nonce-count), in order of first successful use.
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._forgotten = float("-inf")  # latest issue time among live nonces evicted

    def __len__(self) -> int:
        """Number of nonces whose nonce-count is tracked (a gauge for metrics)."""
        return len(self._seen)

    def _mac(self, body: bytes, realm: str) -> bytes:
        data = body + realm.encode("utf-8", "surrogatepass")
        return hmac.digest(self._secret, data, "sha256")[:_MAC_BYTES]

    def challenge(
        self,
        realm: str,
        now: float,
        stale: bool = False,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
    ) -> list[Challenge]:
        """One challenge per algorithm, most preferred first, sharing one nonce (RFC 8760 §2.4)."""
        for algorithm in algorithms:
            _lookup(algorithm)
        body = _STAMP.pack(now) + os.urandom(_RANDOM_BYTES)
        nonce = base64.urlsafe_b64encode(body + self._mac(body, realm)).decode("ascii")
        return [
            Challenge(realm, nonce, algorithm=algorithm, qop=("auth",), stale=stale)
            for algorithm in algorithms
        ]

    def _issued(self, nonce: str, realm: str) -> float | None:
        if len(nonce) != _NONCE_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except ValueError:  # binascii.Error, or non-ASCII text
            return None
        if len(raw) != _BODY_BYTES + _MAC_BYTES:
            return None
        if not hmac.compare_digest(raw[_BODY_BYTES:], self._mac(raw[:_BODY_BYTES], realm)):
            return None
        issued: float = _STAMP.unpack_from(raw)[0]
        return issued

    def verify(
        self,
        creds: Credentials,
        method: str,
        *,
        now: float,
        realm: str,
        password: str | None = None,
        ha1: Mapping[str, str] | None = None,
    ) -> AuthResult:
        """Check credentials against our realm, with the password or the stored HA1s.

        `ha1` maps a base algorithm name ("MD5", "SHA-256") to `ha1(user, realm, password, name)`;
        credentials in an algorithm it lacks are MALFORMED. Give exactly one of the two.
        """
        if (password is None) == (ha1 is None):
            raise TypeError("verify() needs exactly one of password, ha1")
        found = _ALGORITHMS.get((creds.algorithm or "MD5").upper())
        if found is None:
            return AuthResult.MALFORMED
        name, h, sess = found
        if creds.qop is None:
            if sess:
                return AuthResult.MALFORMED
            count = 0  # RFC 2069 answers have no count: each nonce is good for one of them
        elif (
            creds.qop.lower() != "auth"
            or creds.cnonce is None
            or creds.nc is None
            or _NC_RE.match(creds.nc) is None
        ):
            return AuthResult.MALFORMED
        else:
            count = int(creds.nc, 16)
        stored = None if ha1 is None else ha1.get(name)
        if ha1 is not None and stored is None:
            return AuthResult.MALFORMED

        issued = self._issued(creds.nonce, realm) if creds.realm == realm else None
        if issued is None:
            return AuthResult.BAD_NONCE
        key = h(f"{creds.username}:{realm}:{password}") if stored is None else stored
        expected = compute_response(
            key,
            method,
            creds.uri,
            creds.nonce,
            algorithm=creds.algorithm,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        answer = creds.response.lower().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected.encode("ascii"), answer):
            return AuthResult.WRONG_PASSWORD
        # Both ways: nodes sharing the secret may disagree a little on the time.
        if abs(now - issued) > self.ttl:
            return AuthResult.STALE

        last = self._seen.get(creds.nonce)
        if last is None:
            if issued <= self._forgotten:
                return AuthResult.STALE
            self._seen[creds.nonce] = (issued, count)
            self._prune(now)
        elif count <= last[1]:
            return AuthResult.REPLAY
        else:
            self._seen[creds.nonce] = (issued, count)
        return AuthResult.OK

    def _prune(self, now: float) -> None:
        # Entries go in roughly by issue time, so expired ones gather at the front: popping
        # from there keeps the cost constant per insertion.
        seen = self._seen
        while seen:
            nonce, (issued, _) = next(iter(seen.items()))
            live = abs(now - issued) <= self.ttl
            if live and len(seen) <= self._max_tracked:
                return
            del seen[nonce]
            if live:
                self._forgotten = max(self._forgotten, issued)
