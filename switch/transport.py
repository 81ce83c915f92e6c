"""asyncio adapters between sockets and the sans-IO SIP core (RFC 3261 §18).

UDP datagrams and TCP/TLS stream frames are handed to one callback as
``(data, peer)``; the core answers through ``send(data, peer)``. This module
knows nothing of SIP beyond framing streams.

Stream connections are kept by the peer's address, whichever side opened
them, and reused both ways (§18.1.1, §18.2.2): a phone that registered over
TCP is reached over the connection it opened, which behind NAT is the only
way to reach it at all. When there is no open connection to ``peer`` the
caller may name ``connect_to``, where a new one should go (the next hop of a
request, or a response's Via); the message waits in a queue until the
connection is up, and when it cannot be made (refused, no route, TLS
verification failed, ``connect_timeout`` passed) the caller's ``on_error``
hears of it, so a client transaction fails at once rather than after Timer
B (§8.1.3.1, §17.1.4). Connections we opened are closed after
``outbound_idle`` seconds without traffic; the peer's own are kept longer,
as they carry its registration. All connections together are bounded by
``max_connections``.

TLS to a peer uses ``client_tls[(host, port)]`` (gateways: their CA, or no
verification, and the name their certificate carries, also sent as SNI);
any other peer is verified against the system's CAs by its host.

Not done here: RFC 5626 flows (outbound) and RFC 5923 ``alias``; DNS NAPTR/SRV
(RFC 3263) — a host name is looked up as an address only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, cast

import structlog

from switch.sip.errors import ParseError
from switch.sip.framing import PONG, Ping, StreamFramer

log = structlog.get_logger()

MAX_STREAM_CONNECTIONS = 10_000
STREAM_IDLE_TIMEOUT = 3600.0  # longer than any registration refresh we allow
OUTBOUND_IDLE_TIMEOUT = 120.0  # a connection we opened and nobody used for this long
# TCP handshake and TLS handshake together. A peer that is up answers in well under a second;
# this is also far below Timer B (32 s), so a dead gateway fails over quickly.
CONNECT_TIMEOUT = 5.0
# Linux's SO_RCVBUFFORCE (asm-generic/socket.h), which Python's socket module does not name.
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from, and so where its answer goes."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How we open TLS to one peer: whom we trust, and the name its certificate must carry."""

    context: ssl.SSLContext
    server_name: str  # checked against the certificate; sent as SNI unless an IP address


OnMessage = Callable[[bytes, Peer], None]
OnStreamError = Callable[[ParseError, Peer], None]
OnSendError = Callable[[str], None]


# What phones send over UDP to keep their NAT binding open: pjsua and many desk phones a CRLF
# or two, some a few NUL bytes; they expect no answer (RFC 5626's CRLF ping/pong is for
# streams: StreamFramer). Not a message: each one used to be logged and counted as a parse
# error, a log line every 15 s per phone.
KEEPALIVE_BYTES: Final = b"\r\n\0 "
KEEPALIVE_MAX: Final = 8


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's classes: cast, not assert
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) <= KEEPALIVE_MAX and not data.strip(KEEPALIVE_BYTES):
            return  # a NAT keep-alive: a phone keeps its binding open, nothing to answer
        self.on_message(data, Peer("udp", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a phone that went away: not our failure.
        log.debug("udp error", error=str(exc))


class _Stream(asyncio.Protocol):
    def __init__(self, owner: Transports, name: str, *, outbound: bool = False) -> None:
        self.owner = owner
        self.name = name
        self.outbound = outbound
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.keys: list[Peer] = []  # every address it is kept under (its peer's first)
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.name, host, port)
        # Our own connections were counted before they were opened.
        if not self.outbound and len(self.owner.connections) >= self.owner.max_connections:
            log.warning("too many connections, refusing", peer_host=host)
            self.transport.abort()
            return
        self.add_key(self.peer)
        self._touch()

    def add_key(self, peer: Peer) -> None:
        self.keys.append(peer)
        self.owner.connections[peer] = self

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if self.outbound:
            self._touch()  # what we send through our own connection keeps it

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        timeout = self.owner.outbound_idle if self.outbound else STREAM_IDLE_TIMEOUT
        self.idle = asyncio.get_running_loop().call_later(timeout, self.close)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.transport is not None
        self._touch()
        self.framer.feed(data)
        while True:
            try:
                item = self.framer.next()
            except ParseError as exc:
                # The framing is lost: nothing after this point can be trusted.
                self.owner.on_stream_error(exc, self.peer)
                self.close()
                return
            if item is None:
                return
            if isinstance(item, Ping):
                self.transport.write(PONG)
            else:
                self.owner.on_message(item, self.peer)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        for key in self.keys:
            if self.owner.connections.get(key) is self:
                del self.owner.connections[key]


class _Connecting:
    """A connection being opened, and what waits to go through it."""

    __slots__ = ("errors", "queue")

    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.errors: list[OnSendError] = []


@dataclass(frozen=True, slots=True)
class Listener:
    transport: str
    host: str
    port: int
    # Bound to 0.0.0.0 or ::: no address to put in a Via or Contact (``local_host``). Known
    # once here, not parsed again for every request we send.
    wildcard: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        try:
            wildcard = ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            wildcard = False
        object.__setattr__(self, "wildcard", wildcard)


def receive_buffer(sock: socket.socket, size: int) -> int:
    """Give ``sock`` a receive buffer of ``size`` bytes; returns what it got.

    SO_RCVBUF is capped by net.core.rmem_max; SO_RCVBUFFORCE is not, but needs
    CAP_NET_ADMIN. Linux reports twice what was set (its bookkeeping overhead), so
    half the reported figure is what we compare. Getting less is logged as a warning
    with the fix: under a burst the kernel drops what the buffer cannot hold, and
    each drop is a retransmission T1 later.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # EPERM
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if got < size:
        log.warning(
            "udp receive buffer smaller than configured",
            configured=size,
            got=got,
            fix=f"sysctl -w net.core.rmem_max={size}, or run with CAP_NET_ADMIN",
        )
    return got


class Transports:
    """The switch's listening sockets and stream connections."""

    def __init__(self, on_message: OnMessage, on_stream_error: OnStreamError) -> None:
        self.on_message = on_message
        self.on_stream_error = on_stream_error
        self.connections: dict[Peer, _Stream] = {}
        self.listeners: list[Listener] = []
        self._local: dict[str, Listener] = {}  # transport -> its first listener (``local``)
        self.client_tls: dict[tuple[str, int], ClientTls] = {}
        self.connect_timeout = CONNECT_TIMEOUT
        self.outbound_idle = OUTBOUND_IDLE_TIMEOUT
        self.max_connections = MAX_STREAM_CONNECTIONS
        self._connecting: dict[Peer, _Connecting] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: list[tuple[Listener, asyncio.DatagramTransport]] = []
        self._servers: list[asyncio.Server] = []
        self._default_tls: ssl.SSLContext | None = None
        self._routes: dict[str, str] = {}  # peer host -> our address toward it

    async def listen_udp(self, host: str, port: int, buffer: int | None = None) -> Listener:
        """Listen on UDP; ``buffer``: the socket's receive buffer in bytes (see
        ``receive_buffer``), else the system's default."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.on_message), local_addr=(host, port)
        )
        if buffer is not None:
            receive_buffer(transport.get_extra_info("socket"), buffer)
        listener = Listener("udp", *transport.get_extra_info("sockname")[:2])
        self._udp.append((listener, transport))
        return self._listening(listener)

    async def listen_stream(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> Listener:
        loop = asyncio.get_running_loop()
        name = "tls" if tls is not None else "tcp"
        server = await loop.create_server(lambda: _Stream(self, name), host, port, ssl=tls)
        self._servers.append(server)
        return self._listening(Listener(name, *server.sockets[0].getsockname()[:2]))

    def _listening(self, listener: Listener) -> Listener:
        self.listeners.append(listener)
        self._local.setdefault(listener.transport, listener)
        return listener

    def send(
        self,
        data: bytes,
        peer: Peer,
        *,
        connect_to: Peer | None = None,
        on_error: OnSendError | None = None,
    ) -> bool:
        """Send toward ``peer``; False when it cannot be reached now.

        Over a stream with no open connection to ``peer`` (nor to ``connect_to``), a
        connection to ``connect_to`` is opened and ``data`` waits for it; True then
        means "queued", and a failure to connect reaches ``on_error`` later, never
        from inside this call. Without ``connect_to`` no connection is opened.
        """
        if peer.transport == "udp":
            for listener, transport in self._udp:
                if (":" in listener.host) == (":" in peer.host):
                    transport.sendto(data, (peer.host, peer.port))
                    return True
            return False
        for key in (peer, connect_to):
            conn = self.connections.get(key) if key is not None else None
            if conn is not None and conn.usable:
                conn.write(data)
                return True
        if connect_to is None:
            return False
        pending = self._connecting.get(connect_to)
        if pending is None:
            if len(self.connections) + len(self._connecting) >= self.max_connections:
                log.warning("too many connections, not connecting", peer_host=connect_to.host)
                if on_error is not None:
                    asyncio.get_running_loop().call_soon(on_error, "too many connections")
                return False
            pending = self._connecting[connect_to] = _Connecting()
            task = asyncio.create_task(self._connect(connect_to, pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pending.queue.append(data)
        if on_error is not None:
            pending.errors.append(on_error)
        return True

    async def _connect(self, target: Peer, pending: _Connecting) -> None:
        loop = asyncio.get_running_loop()
        tls = self._tls_for(target) if target.transport == "tls" else None
        stream: _Stream | None = None
        reason = "closed while connecting"
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, stream = await loop.create_connection(
                    lambda: _Stream(self, target.transport, outbound=True),
                    target.host,
                    target.port,
                    ssl=tls.context if tls is not None else None,
                    server_hostname=tls.server_name if tls is not None else None,
                )
        except OSError as exc:  # refused, unreachable, timed out, TLS handshake or certificate
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            del self._connecting[target]
        if stream is not None and stream.usable:
            if target not in stream.keys:
                stream.add_key(target)  # a host name, or an address written another way
            log.info("connected", transport=target.transport, host=target.host, port=target.port)
            for data in pending.queue:
                stream.write(data)
            return
        log.info("cannot connect", transport=target.transport, host=target.host,
                 port=target.port, error=reason)  # fmt: skip
        for on_error in pending.errors:
            on_error(reason)

    def _tls_for(self, target: Peer) -> ClientTls:
        configured = self.client_tls.get((target.host, target.port))
        if configured is not None:
            return configured
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return ClientTls(self._default_tls, target.host)

    def local(self, transport: str) -> Listener | None:
        """The first listener of ``transport`` (asked for every request we send)."""
        return self._local.get(transport)

    def local_host(self, listener: Listener, peer: Peer) -> str:
        """Our address toward ``peer`` on ``listener``: its own, unless it is a wildcard.

        Listening on 0.0.0.0 or :: is no address to put in a Via or Contact; the one
        the kernel would send from toward the peer is (a connected UDP socket sends
        nothing). A peer known by name gets the listener's address as it is.
        """
        if not listener.wildcard:
            return listener.host
        host = self._routes.get(peer.host)
        if host is None:
            try:
                ipaddress.ip_address(peer.host)
            except ValueError:
                return listener.host
            family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((peer.host, peer.port or 5060))
                    host = str(probe.getsockname()[0])
            except OSError:
                return listener.host
            if len(self._routes) > 10_000:
                self._routes.clear()
            self._routes[peer.host] = host
        return host

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.close()
        for _, transport in self._udp:
            transport.close()
        for server in self._servers:
            await server.wait_closed()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The context of a TLS listener: our certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_tls_context(ca: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """The context to open TLS with: the server verified against ``ca`` (default: the
    system's CAs), or not verified at all when ``verify`` is false (tests, lab gear)."""
    context = ssl.create_default_context(cafile=ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
