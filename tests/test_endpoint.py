"""The SIP endpoint on a real UDP socket: what an INVITE answered 2xx leaves behind.

Once its 2xx is sent, an INVITE server transaction only absorbs retransmitted INVITEs until
Timer L (RFC 6026 §7.1). The endpoint keeps just its key for that (``retire``), so a high call
rate does not keep 32 s of parsed requests for the garbage collector to walk. Seen from the
wire nothing changes: a retransmission is absorbed, an ACK that reuses the INVITE's branch
still reaches the core, a late CANCEL gets 200 (nothing left to cancel), and after Timer L
the same request is a new one.

Also here: the UDP listener's receive buffer (``sip.udp_buffer``), and the warning when the
kernel gives less.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from switch.ban import BanList
from switch.endpoint import ServerRequest, SipEndpoint
from switch.metrics import Metrics
from switch.sip.message import Request
from switch.transport import Peer

T1 = 0.02  # Timer L = 64*T1 = 1.28 s
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Switch:
    endpoint: SipEndpoint
    port: int
    invites: list[Request] = field(default_factory=list)
    acks: list[Request] = field(default_factory=list)


@pytest.fixture
async def switch() -> AsyncIterator[Switch]:
    endpoint = SipEndpoint(Metrics(), BanList(10, 60, 60), "softswitch-test")
    endpoint.t1 = T1
    listener = await endpoint.transports.listen_udp("127.0.0.1", 0)
    sw = Switch(endpoint, listener.port)

    def on_invite(incoming: ServerRequest) -> None:
        sw.invites.append(incoming.request)
        incoming.respond(incoming.request.response(200, None, incoming.to_tag))

    def on_ack(ack: Request, peer: Peer) -> None:
        sw.acks.append(ack)

    endpoint.cores["INVITE"] = on_invite
    endpoint.ack_handler = on_ack
    yield sw
    await endpoint.transports.close()


def request(method: str, branch: str, port: int) -> bytes:
    return (
        f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: retire-1@test\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@127.0.0.1:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Phone:
    def __init__(self, switch: Switch) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.to = ("127.0.0.1", switch.port)

    def send(self, method: str, branch: str) -> None:
        self.sock.sendto(request(method, branch, self.port), self.to)

    async def status(self, timeout: float = 0.3) -> int | None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        except TimeoutError:
            return None
        return int(data.split(b" ", 2)[1])


async def test_an_answered_invite_absorbs_its_retransmissions_as_a_key_only(
    switch: Switch,
) -> None:
    phone = Phone(switch)
    phone.send("INVITE", "z9hG4bK-inv-1")
    assert await phone.status() == 200
    table = switch.endpoint.transactions
    # Nothing live is left of the transaction, and nothing of it for the collector: its key.
    assert list(table) == [] and len(table) == 1

    phone.send("INVITE", "z9hG4bK-inv-1")  # a retransmission (our 200 was lost, say)
    assert await phone.status() is None  # absorbed: the core's own 2xx resending answers it
    assert len(switch.invites) == 1

    phone.send("CANCEL", "z9hG4bK-inv-1")  # too late: nothing to cancel, but it was found
    assert await phone.status() == 200

    phone.send("ACK", "z9hG4bK-inv-1")  # an ACK reusing the INVITE's branch
    await asyncio.sleep(0.1)
    assert [ack.method for ack in switch.acks] == ["ACK"]  # the core's, as in Accepted


async def test_after_timer_l_the_same_invite_is_a_new_request(switch: Switch) -> None:
    phone = Phone(switch)
    phone.send("INVITE", "z9hG4bK-inv-2")
    assert await phone.status() == 200
    await asyncio.sleep(64 * T1 + 0.1)
    switch.endpoint.housekeep()
    assert len(switch.endpoint.transactions) == 0
    phone.send("CANCEL", "z9hG4bK-inv-2")
    assert await phone.status() == 481  # no INVITE to find any more
    phone.send("INVITE", "z9hG4bK-inv-2")
    assert await phone.status() == 200
    assert len(switch.invites) == 2


def net_admin() -> bool:
    """Whether this process may exceed net.core.rmem_max (CAP_NET_ADMIN, bit 12)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 12 & 1)
    return False


RMEM_MAX = int(Path("/proc/sys/net/core/rmem_max").read_text())


async def test_udp_listener_gets_the_configured_receive_buffer() -> None:
    if not net_admin():
        pytest.skip("without CAP_NET_ADMIN the buffer is capped (the next test)")
    want = 2 * RMEM_MAX  # more than net.core.rmem_max allows, as root may
    endpoint = SipEndpoint(Metrics(), BanList(10, 60, 60), "softswitch-test")
    await endpoint.transports.listen_udp("127.0.0.1", 0, buffer=want)
    try:
        ((_, transport),) = endpoint.transports._udp
        sock = transport.get_extra_info("socket")
        # Linux reports twice what was set (its bookkeeping).
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * want
    finally:
        await endpoint.transports.close()


def test_a_capped_receive_buffer_is_a_warning_with_the_fix() -> None:
    # Without CAP_NET_ADMIN the kernel caps SO_RCVBUF at net.core.rmem_max: ask for more.
    want = 2 * RMEM_MAX
    code = (
        "import socket; from switch.transport import receive_buffer; "
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"print('got', receive_buffer(s, {want}))"
    )
    argv = [sys.executable, "-c", code]
    if Path("/usr/bin/setpriv").exists():
        argv = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", *argv]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    got = int(done.stdout.split("got ")[-1])
    if got >= want:
        pytest.skip("this process may exceed net.core.rmem_max (CAP_NET_ADMIN kept)")
    assert got == RMEM_MAX
    assert "udp receive buffer smaller than configured" in done.stdout
    assert f"net.core.rmem_max={want}" in done.stdout
