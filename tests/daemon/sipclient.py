"""A small SIP client over real sockets, for what sipp cannot check well.

It writes requests by hand (so a test sees exactly what went on the wire),
answers digest challenges with the client half of `switch.sip.digest`, and
reads responses over UDP (with RFC 3261 Timer E retransmissions), TCP or
TLS (framed by Content-Length). Every receive has a deadline.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from switch.sip.digest import parse_challenge, respond
from switch.sip.framing import Ping, StreamFramer
from switch.sip.message import Response, parse_message

T1 = 0.5


@dataclass
class Exchange:
    """A final response and everything seen on the way (challenge, provisional)."""

    response: Response | None
    raw: bytes = b""
    seen: list[Response] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status


class SipClient:
    def __init__(
        self,
        port: int,
        transport: str = "udp",
        *,
        host: str = "127.0.0.1",
        local_host: str = "127.0.0.1",
        local_port: int = 0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a stream connection the server opened to us (accepted), to use as is."""
        self.server = (host, port)
        self.transport = transport
        self.framer = StreamFramer()
        if sock is not None:
            self.sock = sock
        elif transport == "udp":
            self.sock: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_host, local_port))
        else:
            raw = socket.create_connection(
                self.server, timeout=5, source_address=(local_host, local_port)
            )
            if transport == "tls":
                assert tls is not None
                raw = tls.wrap_socket(raw, server_hostname=server_hostname)
            self.sock = raw
        self.local = self.sock.getsockname()[:2]
        self.tag = secrets.token_hex(4)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire ----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes | None:
        """One message (datagram, or one framed stream message), or None at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.transport != "udp":
                item = self.framer.next()
                if isinstance(item, Ping):
                    continue
                if item is not None:
                    return item
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except (TimeoutError, BlockingIOError):
                return None
            except ConnectionRefusedError:  # ICMP from an earlier datagram: keep listening
                continue
            if self.transport == "udp":
                return data
            if not data:
                return None  # the server closed the connection
            self.framer.feed(data)

    # -- requests ------------------------------------------------------------

    def build(
        self,
        method: str,
        uri: str,
        *,
        from_uri: str,
        to_uri: str,
        call_id: str,
        cseq: int,
        headers: Sequence[str] = (),
        body: bytes = b"",
        to_tag: str | None = None,
    ) -> tuple[bytes, str]:
        """A request and its branch; ``to_tag`` for one inside a dialog (§12.2.1.1)."""
        branch = "z9hG4bK" + secrets.token_hex(8)
        if method == "INVITE" and not any(h.lower().startswith("contact:") for h in headers):
            # §8.1.1.8: an INVITE names where the dialog's requests reach us
            params = "" if self.transport == "udp" else f";transport={self.transport}"
            headers = [*headers, f"Contact: <sip:{self.local[0]}:{self.local[1]}{params}>"]
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} {self.local[0]}:{self.local[1]}"
            f";branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <{from_uri}>;tag={self.tag}",
            f"To: <{to_uri}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *headers,
            "User-Agent: softswitch-tests",
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch

    def transact(self, data: bytes, branch: str, timeout: float = 4.0) -> Exchange:
        """Send a request and wait for its final response, retransmitting over UDP (§17.1.2)."""
        deadline = time.monotonic() + timeout
        interval = T1
        seen: list[Response] = []
        self.send(data)
        next_send = time.monotonic() + interval
        while time.monotonic() < deadline:
            wait = min(deadline, next_send) - time.monotonic()
            raw = self.recv(max(wait, 0.01))
            if raw is None:
                if self.transport == "udp" and time.monotonic() >= next_send:
                    self.send(data)
                    interval = min(interval * 2, 4.0)
                    next_send = time.monotonic() + interval
                continue
            message = parse_message(raw)
            if not isinstance(message, Response) or message.top_via.branch != branch:
                continue  # a late retransmission of an earlier answer
            if message.status < 200:
                seen.append(message)
                next_send = deadline  # §17.1.2.2: provisional stops retransmissions at T2
                continue
            return Exchange(message, raw, seen)
        return Exchange(None, b"", seen)

    def register(
        self,
        user: str,
        password: str | None,
        *,
        domain: str = "acme.example",
        contact: str | None = "auto",
        expires: int | None = None,
        username: str | None = None,
        algorithm: str | None = None,
        call_id: str | None = None,
        cseq: int = 1,
        timeout: float = 4.0,
    ) -> Exchange:
        """REGISTER user@domain; answer one 401 when a password is given.

        `contact="auto"` binds this socket's address, None sends no Contact (a
        bindings query, §10.2.3), anything else is the Contact value as written.
        `algorithm` picks which offered challenge to answer (default: the first).
        """
        call_id = call_id or f"{secrets.token_hex(8)}@{self.local[0]}"
        aor = f"sip:{user}@{domain}"
        headers: list[str] = []
        if contact == "auto":
            headers.append(f"Contact: <sip:{user}@{self.local[0]}:{self.local[1]}>")
        elif contact is not None:
            headers.append(f"Contact: {contact}")
        if expires is not None:
            headers.append(f"Expires: {expires}")
        uri = f"sip:{domain}"
        data, branch = self.build(
            "REGISTER", uri, from_uri=aor, to_uri=aor, call_id=call_id, cseq=cseq, headers=headers
        )
        first = self.transact(data, branch, timeout)
        if first.status != 401 or password is None:
            return first
        assert first.response is not None
        challenges = [parse_challenge(v) for v in first.response.headers.values("WWW-Authenticate")]
        if algorithm is not None:
            challenges = [c for c in challenges if (c.algorithm or "MD5") == algorithm]
            assert challenges, f"no {algorithm} challenge offered: {first.raw!r}"
        credentials = respond(
            challenges[0],
            method="REGISTER",
            uri=uri,
            username=username or user,
            password=password,
            cnonce=secrets.token_hex(8),
        )
        data, branch = self.build(
            "REGISTER",
            uri,
            from_uri=aor,
            to_uri=aor,
            call_id=call_id,
            cseq=cseq + 1,
            headers=[*headers, f"Authorization: {credentials.header_value()}"],
        )
        second = self.transact(data, branch, timeout)
        second.seen.insert(0, first.response)
        return second

    def options(self, timeout: float = 2.0) -> Exchange:
        host, port = self.server
        data, branch = self.build(
            "OPTIONS",
            f"sip:{host}:{port}",
            from_uri=f"sip:probe@{self.local[0]}",
            to_uri=f"sip:{host}:{port}",
            call_id=f"{secrets.token_hex(8)}@{self.local[0]}",
            cseq=1,
        )
        return self.transact(data, branch, timeout)


def contacts(response: Response) -> list[str]:
    """The Contact values of a response, one per binding."""
    return response.headers.get_all("Contact")
