"""Kernel forwarding of latched RTP (`media.kernel`): the eBPF program and the relay with it.

Two kinds of test:
- the program alone, run by the kernel on crafted frames (BPF_PROG_TEST_RUN): what it
  rewrites, whether the checksums it leaves are right, what it counts, what it hands back;
- the relay with kernel forwarding on real sockets: phones on 127.0.0.1 talk through it, the
  kernel's table shows who forwarded what, and the counters must be the very ones the relay
  gives with every packet in Python (`kernel: off`), packet for packet.

They need root (CAP_BPF, CAP_NET_ADMIN) on Linux 6.6+; CI runs as root on such a kernel, so
there a refusal fails the test rather than skipping it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from media import MediaTimeout, Relay, RelaySession, Side
from media.bpf import R0, R1, R6, Asm, BpfError
from media.config import RelayConfig
from media.kernel import HandBack, KernelPath, Stream, key
from media.stats import Addr, LegStats
from tests.media.conftest import MakeRelay, Phone, port_range, rtp

Phones = Callable[[], Phone]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="kernel forwarding needs root")


def rtp_port(session: RelaySession, side: Side) -> Addr:
    local = session.local(side)
    return (local.host, local.rtp_port)


def checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src: Addr, dst: Addr, payload: bytes, *, udp_checksum: bool = True) -> bytes:
    """An Ethernet + IPv4 + UDP frame with correct checksums (or a UDP checksum of 0)."""
    saddr, daddr = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", src[1], dst[1], length, 0) + payload
    if udp_checksum:
        pseudo = saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
        udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, 20 + length, 7, 0x4000, 64,
                     socket.IPPROTO_UDP, 0, saddr, daddr)  # fmt: skip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\0" * 12 + b"\x08\x00" + ip + udp


def addresses(data: bytes) -> tuple[Addr, Addr]:
    saddr, daddr = socket.inet_ntoa(data[26:30]), socket.inet_ntoa(data[30:34])
    sport, dport = struct.unpack_from("!HH", data, 34)
    return (saddr, sport), (daddr, dport)


def checksums_hold(data: bytes) -> bool:
    ip, udp = data[14:34], data[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(udp))
    udp_ok = udp[6:8] == b"\0\0" or checksum(pseudo + udp) == 0
    return checksum(ip) == 0 and udp_ok


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    """Replaces conftest's guard: the one test here that sends beyond 127.0.0.0/8 sends to a
    network namespace of its own (and the program trials send nothing)."""


PHONE_A, OURS_A = ("127.0.0.1", 40000), ("127.0.0.1", 30000)
OURS_B, PHONE_B = ("127.0.0.1", 30002), ("127.0.0.1", 40010)


@pytest.fixture
def kernel() -> Iterator[KernelPath]:
    path = KernelPath(address="127.0.0.1", capacity=16)
    yield path
    path.close()


def stream(ssrc: int = 0xA, seq: int = 99) -> Stream:
    return Stream(ssrc=ssrc, rate=8000, cycles=0, max_seq=seq, last_ts=seq * 160,
                  last_arrival=time.monotonic(), jitter=0.0)  # fmt: skip


def test_the_program_rewrites_to_the_other_leg_with_checksums_that_hold(
    kernel: KernelPath,
) -> None:
    kernel.install(key(PHONE_A, OURS_A), (OURS_B, PHONE_B), 0, stream())
    payload = rtp(100, 100 * 160, ssrc=0xA)
    for udp_checksum in (True, False):  # RFC 768: 0 means "no checksum" and must stay 0
        verdict, out = kernel.trial(frame(PHONE_A, OURS_A, payload, udp_checksum=udp_checksum))
        assert verdict == -1  # TCX_NEXT: on up the stack, to B's socket
        assert addresses(out) == (OURS_B, PHONE_B)
        assert out[42:] == payload
        assert checksums_hold(out)
        assert (out[40:42] == b"\0\0") is not udp_checksum
    entry = kernel.read(key(PHONE_A, OURS_A))
    assert entry is not None
    assert (entry.packets, entry.octets, entry.handed_back) == (2, 2 * len(payload), False)


def test_the_program_leaves_other_packets_alone(kernel: KernelPath) -> None:
    kernel.install(key(PHONE_A, OURS_A), (OURS_B, PHONE_B), 0, stream())
    payload = rtp(100, 16000, ssrc=0xA)
    others = [
        frame(("127.0.0.1", 40001), OURS_A, payload),  # another source port: not latched
        frame(PHONE_A, ("127.0.0.1", 30004), payload),  # to another port of ours
        frame(PHONE_A, OURS_A, payload)[:-1],  # IP length says one byte more than there is
    ]
    fragment = bytearray(frame(PHONE_A, OURS_A, payload))
    fragment[20] |= 0x20  # More Fragments
    others.append(bytes(fragment))
    for data in others:
        assert kernel.trial(data) == (-1, data)
    entry = kernel.read(key(PHONE_A, OURS_A))
    assert entry is not None and entry.packets == 0


@pytest.mark.parametrize(
    ("seqs", "ssrc", "reason"),
    [
        ([100, 5000], 0xA, HandBack.SEQUENCE),  # a jump: restart or loss, the relay decides
        ([100, 101], 0xB, HandBack.SSRC),  # another stream from the same source
    ],
)
def test_the_program_hands_back_what_the_rfc_makes_a_decision(
    kernel: KernelPath, seqs: list[int], ssrc: int, reason: int
) -> None:
    k = key(PHONE_A, OURS_A)
    kernel.install(k, (OURS_B, PHONE_B), 0, stream())
    assert kernel.trial(frame(PHONE_A, OURS_A, rtp(seqs[0], 0, ssrc=0xA)))[0] == -1
    second = frame(PHONE_A, OURS_A, rtp(seqs[1], 0, ssrc=ssrc))
    assert kernel.trial(second) == (-1, second)  # untouched, to the relay's socket
    entry = kernel.read(k)
    assert entry is not None
    assert (entry.handed_back, entry.reason, entry.packets) == (True, reason, 1)
    later = frame(PHONE_A, OURS_A, rtp(seqs[0] + 1, 0, ssrc=0xA))
    assert kernel.trial(later) == (-1, later)  # and everything after, until re-installed


def test_the_program_follows_sequence_numbers_as_rfc3550_a1(kernel: KernelPath) -> None:
    k = key(PHONE_A, OURS_A)
    kernel.install(k, (OURS_B, PHONE_B), 0, stream(seq=65533))
    for seq in (65534, 65535, 1, 0, 2, 2, 4):  # a wrap, a late one, a duplicate, one lost
        kernel.trial(frame(PHONE_A, OURS_A, rtp(seq, seq * 160, ssrc=0xA)))
    entry = kernel.read(k)
    assert entry is not None
    assert (entry.cycles, entry.max_seq, entry.packets, entry.handed_back) == (65536, 4, 7, False)


def test_reading_the_whole_table_sees_every_entry_and_what_the_program_did() -> None:
    path = KernelPath(address="127.0.0.1", capacity=1000)
    try:
        keys = [key(("127.0.0.1", 20000 + i), OURS_A) for i in range(700)]
        for k in keys:
            path.install(k, (OURS_B, PHONE_B), 0, stream())
        phone = ("127.0.0.1", 20005)
        path.trial(frame(phone, OURS_A, rtp(100, 16000, ssrc=0xA)))
        path.trial(frame(phone, OURS_A, rtp(101, 16160, ssrc=0xB)))  # handed back
        table = path.entries()
        assert sorted(table) == sorted(keys)
        assert [k for k, entry in table.items() if entry.handed_back] == [key(phone, OURS_A)]
        entry = path.read(key(phone, OURS_A))
        assert entry is not None
        assert table[key(phone, OURS_A)] == entry
        assert entry.last_ns / 1e9 > time.monotonic() - 5
        assert (entry.packets, entry.reason) == (1, HandBack.SSRC)
    finally:
        path.close()


def test_a_phone_elsewhere_is_sent_out_of_the_media_interface() -> None:
    # A relay bound on loopback has no way out; so the program is tried with an address of
    # the host's own interfaces (there is one besides lo on any machine that runs phones).
    ours = next((a for a, _ in _interfaces() if not a.startswith("127.")), None)
    if ours is None:
        pytest.skip("this host has no interface but loopback")
    path = KernelPath(address=ours, capacity=4)
    try:
        far = ("192.0.2.7", 5004)  # TEST-NET-1: the trial sends nothing
        assert path.route((ours, 1), far) not in (None, 0)
        assert path.route(far, ("127.0.0.1", 5000)) is None  # arrives from outside: not on lo
        path.install(key(far, (ours, 30000)), ((ours, 30002), ("192.0.2.8", 6000)),
                     path.route(far, far) or 0, stream())  # fmt: skip
        verdict, out = path.trial(frame(far, (ours, 30000), rtp(100, 16000, ssrc=0xA)))
        assert verdict == 7  # TC_ACT_REDIRECT: out of the interface, next hop by the kernel
        assert addresses(out) == ((ours, 30002), ("192.0.2.8", 6000))
        assert checksums_hold(out)
    finally:
        path.close()


def _interfaces() -> list[tuple[str, int]]:
    from media.kernel import interface_addresses

    return interface_addresses()


def test_a_program_the_verifier_refuses_gives_its_reasons() -> None:
    from media import bpf

    asm = Asm()
    asm.load(R0, 4, R6, 0)  # r6 was never set
    asm.exit()
    with pytest.raises(BpfError, match="R6 !read_ok"):
        bpf.load_program("bad", asm.code())
    asm = Asm()
    asm.jump("==", R1, 0, "nowhere")
    with pytest.raises(ValueError, match="undefined label 'nowhere'"):
        asm.code()


# The relay with kernel forwarding, phones on real sockets.


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def kernel_relay(**fields: object) -> Relay:
    relay = Relay(RelayConfig(**{**port_range(), "kernel": "on", **fields}))  # type: ignore[arg-type]
    assert relay.kernel is not None
    return relay


async def talk(
    relay: Relay, a: Phone, b: Phone, packets: list[bytes], *, gap: float = 0.002
) -> tuple[RelaySession, list[bytes]]:
    """A call in which A sends `packets` (B answers each with one of its own); what B got."""
    session = relay.allocate("call-k")
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    got = []
    for i, data in enumerate(packets):
        a.send(data, rtp_port(session, Side.A))
        b.send(rtp(i, i * 160, ssrc=0xB), rtp_port(session, Side.B))
        got.append((await b.recv())[0])
        await a.recv()
        await asyncio.sleep(gap)
    return session, got


def counters(leg: LegStats) -> tuple[object, ...]:
    return (leg.packets_in, leg.bytes_in, leg.packets_out, leg.bytes_out, leg.lost,
            leg.ssrc, leg.foreign_packets, leg.dropped_packets)  # fmt: skip


async def test_latched_streams_are_forwarded_by_the_kernel_both_ways(phones: Phones) -> None:
    relay = kernel_relay()
    a, b = phones(), phones()
    packets = [rtp(seq, seq * 160, ssrc=0xA) for seq in range(30)]
    session, got = await talk(relay, a, b, packets)
    assert got == packets
    assert relay.kernel is not None
    for phone, side in ((a, Side.A), (b, Side.B)):
        entry = relay.kernel.read(key(phone.addr, rtp_port(session, side)))
        assert entry is not None
        assert entry.packets == 29  # all but the first, which latched the phone
    stats = session.stats()
    assert (stats.a.packets_in, stats.b.packets_out, stats.a.lost) == (30, 30, 0)
    assert (stats.b.packets_in, stats.a.packets_out, stats.b.lost) == (30, 30, 0)
    assert stats.b.bytes_out == 30 * 172
    assert (stats.a.kernel_packets, stats.b.kernel_packets) == (29, 29)
    session.close()
    assert (relay.totals().rtp_packets_in, relay.totals().rtp_packets_kernel) == (60, 58)
    relay.close()


SEQUENCES = {
    "loss, reordering, duplicates": [0, 1, 2, 4, 3, 3, 6, 7, 9, 10, 11, 12],
    "wrap": [65530, 65531, 65533, 65534, 65535, 0, 1, 2, 4, 5],
    "restart": [10, 11, 12, 9000, 9001, 9002, 9003, 9005, 9006],
    "loss burst": [10, 11, 12, 8000, 13, 14, 15, 16],
}


@pytest.mark.parametrize("name", SEQUENCES)
async def test_counters_are_the_same_as_with_every_packet_in_python(
    phones: Phones, name: str
) -> None:
    packets = [rtp(seq, seq * 160, ssrc=0xA) for seq in SEQUENCES[name]]
    packets += [rtp(seq, seq * 160, ssrc=0xA2) for seq in (50, 51, 53, 54)]  # a new SSRC
    results = []
    for kernel in ("on", "off"):
        relay = Relay(RelayConfig(**port_range(), kernel=kernel))
        session, got = await talk(relay, phones(), phones(), packets)
        assert got == packets
        stats = session.close()
        results.append((counters(stats.a), counters(stats.b)))
        relay.close()
    assert results[0] == results[1]


async def test_a_foreign_source_never_reaches_the_kernels_table(phones: Phones) -> None:
    relay = kernel_relay(latch_window=0.0)
    a, b, attacker = phones(), phones(), phones()
    session, _ = await talk(relay, a, b, [rtp(seq, seq * 160, ssrc=0xA) for seq in range(3)])
    attacker.send(rtp(3, 480, ssrc=0x666), rtp_port(session, Side.A))  # RTP Bleed
    assert await b.silent()
    await until(lambda: session.stats().a.foreign_packets == 1)
    relay.close()


async def in_kernel(
    phones: Phones, packets: int
) -> tuple[Relay, KernelPath, RelaySession, Phone, Phone, bytes]:
    """A call in which A has sent `packets` and its stream is now the kernel's: the relay, its
    kernel path, the session, the phones, and A's key in the table."""
    relay = kernel_relay()
    a, b = phones(), phones()
    session, _ = await talk(relay, a, b, [rtp(seq, seq * 160, ssrc=0xA) for seq in range(packets)])
    assert relay.kernel is not None
    k = key(a.addr, rtp_port(session, Side.A))
    assert relay.kernel.read(k) is not None
    return relay, relay.kernel, session, a, b, k


async def test_hold_and_hang_up_take_the_stream_back_from_the_kernel(phones: Phones) -> None:
    relay, kernel, session, a, b, k = await in_kernel(phones, 5)
    session.set_remote(Side.B, "0.0.0.0", 0)  # B holds: nothing may go to B
    assert kernel.read(k) is None
    a.send(rtp(5, 800, ssrc=0xA), rtp_port(session, Side.A))
    assert await b.silent()
    await until(lambda: session.stats().a.dropped_packets == 1)
    session.set_remote(Side.B, *b.addr)  # unhold: back to the kernel from the next packet
    for seq in (6, 7, 8):
        a.send(rtp(seq, seq * 160, ssrc=0xA), rtp_port(session, Side.A))
        assert (await b.recv())[0] == rtp(seq, seq * 160, ssrc=0xA)
    entry = kernel.read(k)
    assert entry is not None and entry.packets >= 2
    final = session.close()
    assert (final.a.packets_in, final.b.packets_out, final.a.lost) == (9, 8, 0)
    assert kernel.read(k) is None  # closed: the port's packets go nowhere
    a.send(rtp(9, 1440, ssrc=0xA), rtp_port(session, Side.A))
    assert await b.silent()
    relay.close()


async def test_a_stream_the_kernel_carries_keeps_the_call_alive(phones: Phones) -> None:
    timeouts: list[MediaTimeout] = []
    relay = kernel_relay(timeout=0.6)
    a, b = phones(), phones()
    session = relay.allocate("call-t", on_timeout=timeouts.append)
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    for seq in range(75):  # 1.5 s of A and B talking, nearly all of it in the kernel
        a.send(rtp(seq, seq * 160, ssrc=0xA), rtp_port(session, Side.A))
        b.send(rtp(seq, seq * 160, ssrc=0xB), rtp_port(session, Side.B))
        await asyncio.sleep(0.02)
    assert timeouts == []
    await until(lambda: bool(timeouts), timeout=3.0)  # and silence ends it
    assert timeouts[0].call_id == "call-t"
    relay.close()


def test_kernel_on_where_it_cannot_work_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=re.escape("media.kernel: 'yes' (expected auto, on or off)")
    ):
        RelayConfig(kernel="yes")


async def test_kernel_on_with_every_interface_bound_is_refused() -> None:
    config = RelayConfig(address="0.0.0.0", advertise="203.0.113.5", kernel="on", **port_range())
    with pytest.raises(RuntimeError, match="binds every interface"):
        Relay(config)
    relay = Relay(RelayConfig(address="0.0.0.0", advertise="203.0.113.5", **port_range()))
    assert relay.kernel is None  # auto: the relay carries every packet itself
    relay.close()


async def test_a_stream_the_program_does_not_see_stays_with_the_relay(phones: Phones) -> None:
    # Its packets come in where the program is not attached (here: detached from everything),
    # so each would reach the socket with its entry installed: the relay keeps the stream
    # after a few rather than read the table for every packet.
    relay, kernel, session, a, b, k = await in_kernel(phones, 3)
    for link in kernel._links.values():
        os.close(link)
    kernel._links.clear()
    for seq in range(3, 63):
        a.send(rtp(seq, seq * 160, ssrc=0xA), rtp_port(session, Side.A))
        assert (await b.recv())[0] == rtp(seq, seq * 160, ssrc=0xA)
    assert kernel.read(k) is None
    stats = session.close()
    assert (stats.a.packets_in, stats.b.packets_out, stats.a.lost) == (63, 63, 0)
    relay.close()


async def test_interfaces_that_appear_later_are_followed() -> None:
    path = KernelPath(address="127.0.0.1", capacity=4)
    name = f"ssk{os.getpid() % 100000}d"
    before = path.interfaces
    try:
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                       check=True)  # fmt: skip
        path.follow_interfaces()
        assert path.interfaces == before + 2
        subprocess.run(["ip", "link", "del", name], check=True)
        path.follow_interfaces()
        assert path.interfaces == before
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
        path.close()


async def test_relays_of_two_processes_share_an_interface(make_relay: MakeRelay,
                                                          phones: Phones) -> None:  # fmt: skip
    # Each relay attaches its own program; one's table misses pass the packet to the next.
    first, second = kernel_relay(), kernel_relay()
    for relay in (second, first):
        a, b = phones(), phones()
        packets = [rtp(seq, seq * 160, ssrc=0xA) for seq in range(4)]
        session, got = await talk(relay, a, b, packets)
        assert got == packets
        assert relay.kernel is not None
        entry = relay.kernel.read(key(a.addr, rtp_port(session, Side.A)))
        assert entry is not None and entry.packets == 3
    first.close()
    second.close()


# Phones A (port 5000) and B (6000) on the far host: A sends n packets to the relay, B prints
# (sequence number, source) of each packet it gets, as JSON.
PHONES_SCRIPT = """
import json, socket, struct, sys, time
relay, a_port, b_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(("10.77.0.2", 5000))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.bind(("10.77.0.2", 6000))
b.settimeout(2.0)
got = []
for seq in range(n):
    a.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xA) + bytes(160), (relay, a_port))
    data, source = b.recvfrom(2048)
    got.append([struct.unpack_from("!H", data, 2)[0], list(source)])
    time.sleep(0.005)
print(json.dumps(got))
"""


async def test_phones_on_another_host_are_relayed_by_the_kernel() -> None:
    # Another host: a network namespace behind a veth pair. The relay binds the host side's
    # address; the kernel sends B's packets back out of that interface, next hop by ARP.
    ns = f"ssk{os.getpid() % 100000}"
    host_if, far_if = f"{ns}h", f"{ns}f"

    async def run(*cmd: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, f"{' '.join(cmd)}: {err.decode()}"
        return out.decode()

    await run("ip", "netns", "add", ns)
    try:
        await run("ip", "link", "add", host_if, "type", "veth", "peer", "name", far_if)
        await run("ip", "link", "set", far_if, "netns", ns)
        await run("ip", "addr", "add", "10.77.0.1/24", "dev", host_if)
        await run("ip", "link", "set", host_if, "up")
        await run("ip", "-n", ns, "addr", "add", "10.77.0.2/24", "dev", far_if)
        await run("ip", "-n", ns, "link", "set", far_if, "up")
        await run("ip", "-n", ns, "link", "set", "lo", "up")
        relay = Relay(RelayConfig(address="10.77.0.1", kernel="on", **port_range()))
        try:
            session = relay.allocate("call-far")
            session.set_remote(Side.A, "10.77.0.2", 5000)
            session.set_remote(Side.B, "10.77.0.2", 6000)
            a_port, b_port = session.local(Side.A).rtp_port, session.local(Side.B).rtp_port
            # B never sends: its SDP address is its real one, which is where A's packets go.
            out = await run("ip", "netns", "exec", ns, sys.executable, "-c", PHONES_SCRIPT,
                            "10.77.0.1", str(a_port), str(b_port), "40")  # fmt: skip
            got = json.loads(out)
            assert [seq for seq, _ in got] == list(range(40))
            assert {tuple(source) for _, source in got} == {("10.77.0.1", b_port)}
            assert relay.kernel is not None
            entry = relay.kernel.read(key(("10.77.0.2", 5000), ("10.77.0.1", a_port)))
            assert entry is not None and entry.packets == 39
            stats = session.close()
            assert (stats.a.packets_in, stats.b.packets_out, stats.a.lost) == (40, 40, 0)
        finally:
            relay.close()
    finally:
        await run("ip", "netns", "del", ns)
