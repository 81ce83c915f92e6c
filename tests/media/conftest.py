"""Fixtures for the media tests: relays on real UDP sockets on 127.0.0.1, and test phones.

Each relay gets a port range of its own at a random place (other suites may run at the same
time on this host); binds that collide are skipped by the relay itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from media import Relay, RelayConfig
from media.forward import Port
from media.stats import Addr

MakeRelay = Callable[..., Relay]


def rtp(seq: int, ts: int, ssrc: int = 0x1234ABCD, *, pt: int = 0, size: int = 160) -> bytes:
    """An RTP packet (RFC 3550 §5.1): version 2, no padding/extension/CSRC."""
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + b"\xff" * size


def rtcp_rr(ssrc: int = 0x1234ABCD) -> bytes:
    """An empty RTCP receiver report (RFC 3550 §6.4.2): PT 201, length 1."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


class Phone:
    """A UDP endpoint on 127.0.0.1 standing in for a phone (or an attacker)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    @property
    def addr(self) -> Addr:
        host, port = self.sock.getsockname()
        return (host, port)

    def send(self, data: bytes, dest: Addr) -> None:
        self.sock.sendto(data, dest)

    async def recv(self, timeout: float = 1.0) -> tuple[bytes, Addr]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), timeout)
        return data, addr

    async def silent(self, wait: float = 0.15) -> bool:
        """True if nothing arrives within `wait` seconds."""
        try:
            await self.recv(wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def port_range(pairs: int = 40) -> dict[str, int]:
    """A random range above Linux's ephemeral ports (32768-60999, where the test phones' own
    sockets land) and apart from the relay bench's 9000-31999 and the daemon's 30000-39999."""
    base = random.randrange(61000, 65400 - 2 * pairs, 2)
    return {"port_min": base, "port_max": base + 2 * pairs - 1}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail a test that would make the relay send anywhere but 127.0.0.0/8.

    Tests name private and documentation addresses in SDP (a phone behind NAT); this host must
    never send them anything, so every test is ordered for the relay to learn first.
    """
    original = Port.send_to_phone
    outside: list[Addr] = []

    def checked(self: Port, data: memoryview) -> bool:
        dest = self.latch.dest
        if self.tx is None and dest is not None and not ipaddress.ip_address(dest[0]).is_loopback:
            outside.append(dest)  # an assert here would only reach the event loop's log
            return False
        return original(self, data)

    monkeypatch.setattr(Port, "send_to_phone", checked)
    yield
    assert not outside, f"the relay tried to send to {outside}"


@pytest.fixture(params=[True, False], ids=["epoll-kernel", "loop-readers"])
async def make_relay(request: pytest.FixtureRequest) -> AsyncIterator[MakeRelay]:
    """Relays with the given RelayConfig fields, in both ways of watching sockets: the epoll
    one as the daemon runs it, with kernel forwarding where this host allows it (it does as
    root: `tests/media/test_kernel.py` insists), the other with every packet in Python."""
    relays: list[Relay] = []

    def make(**fields: Any) -> Relay:
        fields = {"kernel": "auto" if request.param else "off", **port_range(), **fields}
        relay = Relay(RelayConfig(**fields), epoll=request.param)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


@pytest.fixture
async def phones() -> AsyncIterator[Callable[[], Phone]]:
    made: list[Phone] = []

    def make() -> Phone:
        phone = Phone()
        made.append(phone)
        return phone

    yield make
    for phone in made:
        phone.close()
