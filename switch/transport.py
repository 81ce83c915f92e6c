"""asyncio adapters between sockets and the sans-IO SIP core (RFC 3261 §18).

UDP datagrams and TCP/TLS stream frames are handed to one callback as
``(data, peer)``; the core answers through ``send(data, peer)``. A stream
peer is reached over the connection it opened (phones behind NAT can be
reached no other way), so connections are kept by the peer's address.
This module knows nothing of SIP beyond framing streams.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog

from switch.sip.errors import ParseError
from switch.sip.framing import PONG, Ping, StreamFramer

log = structlog.get_logger()

MAX_STREAM_CONNECTIONS = 10_000
STREAM_IDLE_TIMEOUT = 3600.0  # longer than any registration refresh we allow


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from, and so where its answer goes."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


OnMessage = Callable[[bytes, Peer], None]
OnStreamError = Callable[[ParseError, Peer], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's classes: cast, not assert
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_message(data, Peer("udp", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a phone that went away: not our failure.
        log.debug("udp error", error=str(exc))


class _Stream(asyncio.Protocol):
    def __init__(self, owner: Transports, name: str) -> None:
        self.owner = owner
        self.name = name
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.name, host, port)
        if len(self.owner.connections) >= MAX_STREAM_CONNECTIONS:
            log.warning("too many connections, refusing", peer_host=host)
            self.transport.abort()
            return
        self.owner.connections[self.peer] = self
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(STREAM_IDLE_TIMEOUT, self.close)

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
        if self.peer is not None and self.owner.connections.get(self.peer) is self:
            del self.owner.connections[self.peer]


@dataclass(frozen=True, slots=True)
class Listener:
    transport: str
    host: str
    port: int


class Transports:
    """The switch's listening sockets and stream connections."""

    def __init__(self, on_message: OnMessage, on_stream_error: OnStreamError) -> None:
        self.on_message = on_message
        self.on_stream_error = on_stream_error
        self.connections: dict[Peer, _Stream] = {}
        self.listeners: list[Listener] = []
        self._udp: list[tuple[Listener, asyncio.DatagramTransport]] = []
        self._servers: list[asyncio.Server] = []

    async def listen_udp(self, host: str, port: int) -> Listener:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self.on_message), local_addr=(host, port)
        )
        listener = Listener("udp", *transport.get_extra_info("sockname")[:2])
        self._udp.append((listener, transport))
        self.listeners.append(listener)
        return listener

    async def listen_stream(
        self, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> Listener:
        loop = asyncio.get_running_loop()
        name = "tls" if tls is not None else "tcp"
        server = await loop.create_server(lambda: _Stream(self, name), host, port, ssl=tls)
        self._servers.append(server)
        listener = Listener(name, *server.sockets[0].getsockname()[:2])
        self.listeners.append(listener)
        return listener

    def send(self, data: bytes, peer: Peer) -> bool:
        """Send toward ``peer``; False when it cannot be reached now."""
        if peer.transport == "udp":
            for listener, transport in self._udp:
                if (":" in listener.host) == (":" in peer.host):
                    transport.sendto(data, (peer.host, peer.port))
                    return True
            return False
        conn = self.connections.get(peer)
        if conn is None or conn.transport is None or conn.transport.is_closing():
            return False
        conn.transport.write(data)
        return True

    def local(self, transport: str) -> Listener | None:
        return next((lst for lst in self.listeners if lst.transport == transport), None)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.close()
        for _, transport in self._udp:
            transport.close()
        for server in self._servers:
            await server.wait_closed()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
