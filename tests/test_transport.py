"""Stream connections the switch opens itself (RFC 3261 §18.1.1, §18.2.2), over loopback.

The far end is a real asyncio TCP or TLS server in the test; `Transports` is
the switch's. Each test says what the peer received, over how many
connections, and what the sender heard when the connection could not be made.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from switch.sip.errors import ParseError
from switch.transport import ClientTls, Peer, Transports, client_tls_context
from tests.daemon.harness import free_port, self_signed

INVITE = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"
BYE = b"BYE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"
ANSWER = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


class Server:
    """A peer listening on loopback: what it received, per connection it accepted."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.got = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = bytearray()
        self.connections.append(received)
        self.writers.append(writer)
        while data := await reader.read(65536):
            received += data
            self.got.set()


@asynccontextmanager
async def server(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Server, int]]:
    peer = Server()
    listening = await asyncio.start_server(peer.serve, "127.0.0.1", 0, ssl=tls)
    try:
        yield peer, listening.sockets[0].getsockname()[1]
    finally:
        for writer in peer.writers:
            writer.close()
        listening.close()
        await listening.wait_closed()


def transports(received: list[tuple[bytes, Peer]] | None = None) -> Transports:
    def on_message(data: bytes, peer: Peer) -> None:
        if received is not None:
            received.append((data, peer))

    def on_stream_error(exc: ParseError, peer: Peer) -> None:
        raise AssertionError(f"framing lost with {peer}: {exc}")

    return Transports(on_message, on_stream_error)


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_request_to_a_peer_without_a_connection_opens_one_and_reuses_it() -> None:
    received: list[tuple[bytes, Peer]] = []
    ours = transports(received)
    async with server() as (peer, port):
        target = Peer("tcp", "127.0.0.1", port)
        assert ours.send(INVITE, target, connect_to=target)
        assert ours.send(BYE, target, connect_to=target)  # queued behind the same connect
        await wait_for(lambda: peer.connections and peer.connections[0] == INVITE + BYE)
        assert ours.send(INVITE, target, connect_to=target)
        await wait_for(lambda: peer.connections[0] == INVITE + BYE + INVITE)
        assert len(peer.connections) == 1
        # The peer answers over the connection we opened, as §18.2.2 has it.
        peer.writers[0].write(ANSWER)
        await wait_for(lambda: received)
        assert received == [(ANSWER, target)]
    await ours.close()


async def test_without_connect_to_nothing_is_opened() -> None:
    ours = transports()
    async with server() as (peer, port):
        assert not ours.send(INVITE, Peer("tcp", "127.0.0.1", port))
        await asyncio.sleep(0.1)
        assert peer.connections == []
    await ours.close()


async def test_a_refused_connection_reaches_on_error_later_not_in_the_call() -> None:
    ours = transports()
    target = Peer("tcp", "127.0.0.1", free_port())  # nobody listens there
    errors: list[str] = []
    assert ours.send(INVITE, target, connect_to=target, on_error=errors.append)
    assert errors == []
    await wait_for(lambda: errors)
    assert errors[0].startswith("ConnectionRefusedError"), errors
    assert ours.connections == {}
    await ours.close()


async def test_a_lost_connection_is_reached_at_connect_to() -> None:
    """A phone whose own connection is gone: the send goes to its Contact address."""
    ours = transports()
    async with server() as (peer, port):
        gone = Peer("tcp", "127.0.0.1", free_port())  # its old, ephemeral source port
        contact = Peer("tcp", "127.0.0.1", port)
        assert ours.send(INVITE, gone, connect_to=contact)
        await wait_for(lambda: peer.connections and peer.connections[0] == INVITE)
        assert contact in ours.connections and gone not in ours.connections
    await ours.close()


async def test_a_connection_we_opened_is_closed_when_idle() -> None:
    ours = transports()
    ours.outbound_idle = 0.3
    async with server() as (peer, port):
        target = Peer("tcp", "127.0.0.1", port)
        ours.send(INVITE, target, connect_to=target)
        await wait_for(lambda: target in ours.connections)
        await wait_for(lambda: target not in ours.connections, timeout=3.0)
        # closed on our side, so the peer read its end: the connection is over
        assert peer.connections == [bytearray(INVITE)]
    await ours.close()


async def test_connections_are_bounded() -> None:
    ours = transports()
    ours.max_connections = 1
    async with server() as (_, first), server() as (second_peer, second):
        a, b = Peer("tcp", "127.0.0.1", first), Peer("tcp", "127.0.0.1", second)
        assert ours.send(INVITE, a, connect_to=a)
        errors: list[str] = []
        assert not ours.send(INVITE, b, connect_to=b, on_error=errors.append)
        await wait_for(lambda: errors)
        assert errors == ["too many connections"]
        assert second_peer.connections == []
    await ours.close()


async def test_a_peer_that_never_finishes_the_handshake_times_out() -> None:
    """A TLS connect to a plain TCP server: the handshake never ends, the timeout does."""
    ours = transports()
    ours.connect_timeout = 0.5
    async with server() as (_, port):
        ours.client_tls[("127.0.0.1", port)] = ClientTls(client_tls_context(verify=False), "x")
        target = Peer("tls", "127.0.0.1", port)
        errors: list[str] = []
        started = asyncio.get_running_loop().time()
        ours.send(INVITE, target, connect_to=target, on_error=errors.append)
        await wait_for(lambda: errors)
        assert errors == ["TimeoutError"]
        assert asyncio.get_running_loop().time() - started < 3.0
    await ours.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return self_signed(tmp_path, "sbc.example")


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_tls_to_a_peer_verified_by_its_ca_and_name(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    names: list[str | None] = []
    tls = server_tls(cert, key)
    tls.sni_callback = lambda sock, name, context: names.append(name)  # type: ignore[assignment]
    ours = transports()
    async with server(tls) as (peer, port):
        target = Peer("tls", "127.0.0.1", port)
        ours.client_tls[("127.0.0.1", port)] = ClientTls(
            client_tls_context(str(cert)), "sbc.example"
        )
        assert ours.send(INVITE, target, connect_to=target)
        await wait_for(lambda: peer.connections and peer.connections[0] == INVITE)
    assert names == ["sbc.example"]  # SNI: the name its certificate carries
    await ours.close()


@pytest.mark.parametrize(
    ("ca", "name", "error"),
    [
        (False, "sbc.example", "certificate verify failed"),  # the system's CAs do not know it
        (True, "other.example", "Hostname mismatch"),  # trusted, but not the name we expect
    ],
)
async def test_tls_to_a_peer_that_fails_verification_is_a_transport_error(
    certificate: tuple[Path, Path], ca: bool, name: str, error: str
) -> None:
    cert, key = certificate
    ours = transports()
    async with server(server_tls(cert, key)) as (peer, port):
        target = Peer("tls", "127.0.0.1", port)
        context = client_tls_context(str(cert) if ca else None)
        ours.client_tls[("127.0.0.1", port)] = ClientTls(context, name)
        errors: list[str] = []
        ours.send(INVITE, target, connect_to=target, on_error=errors.append)
        await wait_for(lambda: errors)
        assert error in errors[0], errors
        assert peer.connections in ([], [bytearray()])  # nothing of ours reached it
    await ours.close()


async def test_tls_without_verification_for_tests(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    ours = transports()
    async with server(server_tls(cert, key)) as (peer, port):
        target = Peer("tls", "127.0.0.1", port)
        ours.client_tls[("127.0.0.1", port)] = ClientTls(client_tls_context(verify=False), "x")
        ours.send(INVITE, target, connect_to=target)
        await wait_for(lambda: peer.connections and peer.connections[0] == INVITE)
    await ours.close()
