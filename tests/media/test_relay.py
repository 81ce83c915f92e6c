"""The relay on real UDP sockets on 127.0.0.1: phones are plain Python sockets.

Each test reads like a call flow: phones send RTP/RTCP to the ports the relay gave their leg
(what the B2BUA writes into the SDP), and we check what the other phone receives, and from
where, and what the counters say.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import pytest

from media import MediaTimeout, PortsExhausted, Relay, RelaySession, Side
from media.forward import Port
from media.stats import Addr
from tests.media.conftest import MakeRelay, Phone, port_range, rtcp_rr, rtp

Phones = Callable[[], Phone]


def rtp_port(session: RelaySession, side: Side) -> Addr:
    local = session.local(side)
    return (local.host, local.rtp_port)


def rtcp_port(session: RelaySession, side: Side) -> Addr:
    local = session.local(side)
    return (local.host, local.rtcp_port)


async def call(
    relay: Relay, phones: Phones, on_timeout: Callable[[MediaTimeout], object] | None = None
) -> tuple[RelaySession, Phone, Phone]:
    """A call whose two phones' SDP addresses are their real ones."""
    a, b = phones(), phones()
    session = relay.allocate("call-1", on_timeout=on_timeout)
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    return session, a, b


async def call_with_rtcp(relay: Relay, phones: Phones) -> tuple[RelaySession, Phone, Phone, Phone]:
    """`call`, with each phone's RTCP on a socket of its own (its SDP's a=rtcp):
    (session, B's RTP phone, A's RTCP phone, B's RTCP phone)."""
    session, a, b = await call(relay, phones)
    a_rtcp, b_rtcp = phones(), phones()
    session.set_remote(Side.A, *a.addr, rtcp_port=a_rtcp.addr[1])
    session.set_remote(Side.B, *b.addr, rtcp_port=b_rtcp.addr[1])
    return session, b, a_rtcp, b_rtcp


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_forwards_both_ways_from_the_port_each_phone_talks_to(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay()
    session, a, b = await call(relay, phones)
    for i in range(5):
        a.send(rtp(i, i * 160, ssrc=0xA), rtp_port(session, Side.A))
        data, source = await b.recv()
        assert data == rtp(i, i * 160, ssrc=0xA)
        assert source == rtp_port(session, Side.B)  # symmetric: B hears its own relay port
        b.send(rtp(i, i * 160, ssrc=0xB), rtp_port(session, Side.B))
        data, source = await a.recv()
        assert data == rtp(i, i * 160, ssrc=0xB)
        assert source == rtp_port(session, Side.A)
    stats = session.stats()
    assert (stats.a.packets_in, stats.a.packets_out) == (5, 5)
    assert (stats.a.bytes_in, stats.b.bytes_out) == (5 * 172, 5 * 172)
    assert (stats.b.lost, stats.a.foreign_packets, stats.a.dropped_packets) == (0, 0, 0)
    assert (stats.a.ssrc, stats.b.ssrc) == (0xA, 0xB)
    assert stats.a.latched == a.addr and stats.b.latched == b.addr
    assert stats.a.last_packet_at is not None


async def test_local_ports_are_an_even_rtp_port_and_the_next_one(make_relay: MakeRelay) -> None:
    relay = make_relay(port_min=24000, port_max=24099)
    session = relay.allocate("call-1")
    for side in Side:
        local = session.local(side)
        assert local.host == "127.0.0.1"
        assert local.rtp_port % 2 == 0 and local.rtcp_port == local.rtp_port + 1
        assert 24000 <= local.rtp_port < 24099
    assert session.local(Side.A).rtp_port != session.local(Side.B).rtp_port


async def test_loss_and_jitter_from_sequence_gaps(make_relay: MakeRelay, phones: Phones) -> None:
    relay = make_relay()
    session, a, _ = await call(relay, phones)
    sent = [s for s in range(40) if s not in (5, 6, 30)]
    for seq in sent:
        a.send(rtp(seq, seq * 160), rtp_port(session, Side.A))
        await asyncio.sleep(0.002)
    await until(lambda: session.stats().a.packets_in == len(sent))
    stats = session.stats()
    assert stats.a.lost == 3  # RFC 3550 A.3: expected 40 - received 37
    # Sent every 2 ms with timestamps 20 ms apart: each packet arrives ~18 ms "early", so the
    # jitter estimate climbs towards 18 ms (RFC 3550 A.8); exact values: test_counters.py.
    assert 5.0 < stats.a.jitter_ms < 20.0
    assert stats.b.packets_out == len(sent)


async def test_counters_of_a_latched_stream_with_loss_reordering_duplicates_and_a_new_ssrc(
    make_relay: MakeRelay, phones: Phones
) -> None:
    # After its first packet A is latched, so the rest take the fast path (the connected
    # socket); what the counters say must be what RFC 3550 says of the packets A sent.
    relay = make_relay()
    session, a, b = await call(relay, phones)
    attacker = phones()
    # 104 and 105 never come, but the duplicate 102 counts as received: RFC 3550 A.3 says
    # expected 7 - received 6 = 1 lost.
    first = [100, 101, 103, 102, 102, 106]
    second = [7000, 7001, 7003]  # the phone restarts with another SSRC; 7002 lost
    packets = [rtp(seq, seq * 160, ssrc=0xA) for seq in first]
    packets.append(bytes([0x81, 201, 0, 7]) + bytes(28))  # RTCP RR multiplexed (RFC 5761)
    packets += [rtp(seq, seq * 160, ssrc=0xA2, size=80) for seq in second]
    for i, data in enumerate(packets):
        a.send(data, rtp_port(session, Side.A))
        assert (await b.recv())[0] == data  # forwarded as sent, in order
        if i == 2:
            attacker.send(rtp(104, 104 * 160, ssrc=0x666), rtp_port(session, Side.A))
    assert await b.silent()
    stats = session.stats()
    size = sum(len(p) for p in packets)
    assert (stats.a.packets_in, stats.a.bytes_in) == (len(packets), size)
    assert (stats.b.packets_out, stats.b.bytes_out) == (len(packets), size)
    assert stats.a.lost == 2  # 1 of the first stream, banked at the SSRC change, + 1
    assert stats.a.ssrc == 0xA2
    assert (stats.a.foreign_packets, stats.a.dropped_packets) == (1, 0)
    # B holds (c=0.0.0.0): A's packets are accepted and counted in, but dropped, not out.
    session.set_remote(Side.B, "0.0.0.0", 0)
    a.send(rtp(7004, 7004 * 160, ssrc=0xA2), rtp_port(session, Side.A))
    await until(lambda: session.stats().a.packets_in == len(packets) + 1)
    stats = session.stats()
    assert (stats.a.dropped_packets, stats.b.packets_out, stats.b.bytes_out) == (
        1,
        len(packets),
        size,
    )
    assert stats.a.lost == 2


async def test_phone_behind_nat_gets_the_reply_where_its_packets_came_from(
    make_relay: MakeRelay, phones: Phones
) -> None:
    # The UAC's SDP names a private address that does not exist here; its packets come from
    # 127.0.0.1:x (the NAT's public side). Nothing may ever be sent to 10.0.0.5: A talks first,
    # and B only once A is latched.
    relay = make_relay()
    a, b = phones(), phones()
    session = relay.allocate("nat-call")
    session.set_remote(Side.A, "10.0.0.5", 4000)
    session.set_remote(Side.B, *b.addr)
    assert session.stats().a.latched == ("10.0.0.5", 4000)
    a.send(rtp(1, 160), rtp_port(session, Side.A))
    assert (await b.recv())[0] == rtp(1, 160)
    assert session.stats().a.latched == a.addr
    b.send(rtp(7, 7 * 160, ssrc=0xB), rtp_port(session, Side.B))
    data, source = await a.recv()
    assert (data, source) == (rtp(7, 7 * 160, ssrc=0xB), rtp_port(session, Side.A))
    assert session.stats().a.dropped_packets == 0


async def test_foreign_source_after_the_window_is_dropped_and_counted(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay(latch_window=0.05)
    a, b, attacker = phones(), phones(), phones()
    session = relay.allocate("call-1")
    session.set_remote(Side.A, "192.0.2.10", 4000)  # NATed: A is learned, not matched
    session.set_remote(Side.B, *b.addr)
    a.send(rtp(1, 160), rtp_port(session, Side.A))
    await b.recv()
    await asyncio.sleep(0.1)  # the learning window closes
    for seq in range(3):
        attacker.send(rtp(seq, seq * 160, ssrc=0x666), rtp_port(session, Side.A))
    assert await b.silent()
    assert session.stats().a.foreign_packets == 3
    assert session.stats().a.latched == a.addr
    a.send(rtp(2, 320), rtp_port(session, Side.A))  # the real phone still gets through
    assert (await b.recv())[0] == rtp(2, 320)


async def test_spraying_during_the_window_cannot_steal_an_exact_match(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay(latch_window=5.0)
    session, a, b = await call(relay, phones)
    attacker = phones()
    a.send(rtp(1, 160), rtp_port(session, Side.A))  # matches A's SDP: learning ends
    await b.recv()
    attacker.send(rtp(1, 160, ssrc=0x666), rtp_port(session, Side.A))
    assert await b.silent()
    b.send(rtp(1, 160, ssrc=0xB), rtp_port(session, Side.B))
    assert (await a.recv())[0] == rtp(1, 160, ssrc=0xB)
    assert await attacker.silent()  # B's audio never leaks to the attacker
    assert session.stats().a.foreign_packets == 1


async def test_same_phone_after_nat_rebinding_is_followed_by_its_ssrc(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay(latch_window=0.05)
    a, b, a_moved = phones(), phones(), phones()
    session = relay.allocate("call-1")
    session.set_remote(Side.A, "192.0.2.10", 4000)
    session.set_remote(Side.B, *b.addr)
    a.send(rtp(1, 160, ssrc=0xAAAA), rtp_port(session, Side.A))
    await b.recv()
    await asyncio.sleep(0.1)
    a_moved.send(rtp(2, 320, ssrc=0xAAAA), rtp_port(session, Side.A))  # new NAT port
    assert (await b.recv())[0] == rtp(2, 320, ssrc=0xAAAA)
    b.send(rtp(1, 160, ssrc=0xB), rtp_port(session, Side.B))
    assert (await a_moved.recv())[0] == rtp(1, 160, ssrc=0xB)
    assert session.stats().a.latched == a_moved.addr


async def test_strict_source_relays_only_the_sdp_address(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay(strict_source=True)
    session, a, b = await call(relay, phones)
    natted = phones()
    natted.send(rtp(1, 160), rtp_port(session, Side.A))
    assert await b.silent()
    a.send(rtp(2, 320), rtp_port(session, Side.A))
    assert (await b.recv())[0] == rtp(2, 320)
    assert session.stats().a.foreign_packets == 1


async def test_rtcp_is_forwarded_between_the_rtcp_ports(
    make_relay: MakeRelay, phones: Phones
) -> None:
    session, _, a_rtcp, b_rtcp = await call_with_rtcp(make_relay(), phones)
    a_rtcp.send(rtcp_rr(0xA), rtcp_port(session, Side.A))
    data, source = await b_rtcp.recv()
    assert (data, source) == (rtcp_rr(0xA), rtcp_port(session, Side.B))
    b_rtcp.send(rtcp_rr(0xB), rtcp_port(session, Side.B))
    assert (await a_rtcp.recv())[0] == rtcp_rr(0xB)
    stats = session.stats()
    assert (stats.a.rtcp_packets_in, stats.a.rtcp_packets_out) == (1, 1)
    assert stats.a.rtcp_latched == a_rtcp.addr
    assert stats.a.packets_in == 0  # RTCP is not RTP


async def test_rtcp_queued_when_the_call_ends_is_still_relayed(
    make_relay: MakeRelay, phones: Phones
) -> None:
    # A phone hanging up sends its RTCP BYE and its SIP BYE together; when the switch reads the
    # SIP BYE first in a loop turn, the RTCP BYE is still queued on the relay's socket.
    session, b, a_rtcp, b_rtcp = await call_with_rtcp(make_relay(), phones)
    bye = rtcp_rr(0xA)[:1] + bytes([203]) + rtcp_rr(0xA)[2:]  # PT 203: BYE, one SSRC
    a_rtcp.send(bye, rtcp_port(session, Side.A))  # queued: the loop has not run since
    final = session.close()
    data, source = await b_rtcp.recv()
    assert (data, source) == (bye, rtcp_port(session, Side.B))
    assert (final.a.rtcp_packets_in, final.b.rtcp_packets_out) == (1, 1)  # in the record too
    assert await b.silent()


async def test_rtcp_that_comes_before_the_answer_is_learned_from(
    make_relay: MakeRelay, phones: Phones
) -> None:
    # The callee sends its first RTCP report as it answers (pjsua does), and its next one 5 s
    # later; when the report is read before the 200 OK, the answer must still learn from it,
    # or the caller's reports go to the callee's SDP address (here one that does not exist).
    relay = make_relay()
    a_rtcp, b_rtcp = phones(), phones()
    session = relay.allocate("call-1")
    session.set_remote(Side.A, *a_rtcp.addr, rtcp_port=a_rtcp.addr[1])
    b_rtcp.send(rtcp_rr(0xB), rtcp_port(session, Side.B))
    await until(lambda: session.stats().b.foreign_packets == 1)  # read, and dropped
    assert await a_rtcp.silent()
    session.set_remote(Side.B, "192.0.2.2", 4002)  # its guess of a public address
    assert session.stats().b.rtcp_latched == b_rtcp.addr
    a_rtcp.send(rtcp_rr(0xA), rtcp_port(session, Side.A))
    assert (await b_rtcp.recv())[0] == rtcp_rr(0xA)


async def test_hold_address_sends_nothing_to_the_phone_but_relays_its_music(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay()
    session, a, b = await call(relay, phones)
    a.send(rtp(1, 160), rtp_port(session, Side.A))
    await b.recv()
    session.set_remote(Side.A, "0.0.0.0", 4000)  # A holds: "send me nothing"
    b.send(rtp(1, 160, ssrc=0xB), rtp_port(session, Side.B))
    assert await a.silent()
    a.send(rtp(2, 320), rtp_port(session, Side.A))  # A's music on hold still reaches B
    assert (await b.recv())[0] == rtp(2, 320)
    assert session.stats().b.dropped_packets == 1


async def test_media_timeout_fires_once_when_rtp_stops(
    make_relay: MakeRelay, phones: Phones
) -> None:
    events: list[MediaTimeout] = []
    relay = make_relay(timeout=0.3, silent_timeout=30)
    a, b = phones(), phones()
    session = relay.allocate("call-1", on_timeout=events.append)
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    for seq in range(3):
        a.send(rtp(seq, seq * 160), rtp_port(session, Side.A))
        b.send(rtp(seq, seq * 160, ssrc=0xB), rtp_port(session, Side.B))
    await until(lambda: session.stats().b.packets_in == 3)
    b.send(rtp(3, 480, ssrc=0xB), rtp_port(session, Side.B))
    await until(lambda: bool(events), timeout=3)
    await asyncio.sleep(0.5)
    assert len(events) == 1
    assert events[0].call_id == "call-1"
    assert events[0].silent_for >= 0.3 and not events[0].on_hold
    assert relay.totals().timeouts == 1


async def test_no_media_timeout_while_on_hold(make_relay: MakeRelay, phones: Phones) -> None:
    events: list[MediaTimeout] = []
    relay = make_relay(timeout=0.2, silent_timeout=30)
    a, b = phones(), phones()
    session = relay.allocate("call-1", on_timeout=events.append)
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    a.send(rtp(1, 160), rtp_port(session, Side.A))
    b.send(rtp(1, 160, ssrc=0xB), rtp_port(session, Side.B))
    await until(lambda: session.stats().b.packets_in == 1)
    session.set_hold(Side.A, True)
    session.set_hold(Side.B, True)
    await asyncio.sleep(0.8)
    assert events == []
    session.set_hold(Side.A, False)  # A resumes, but sends nothing
    await until(lambda: bool(events), timeout=3)
    assert events[0].side == Side.A


async def test_leg_that_never_sent_gets_the_silent_timeout(
    make_relay: MakeRelay, phones: Phones
) -> None:
    events: list[MediaTimeout] = []
    relay = make_relay(timeout=0.1, silent_timeout=0.6)
    await call(relay, phones, events.append)
    await asyncio.sleep(0.4)
    assert events == []  # the short timeout is for RTP that stopped, not RTP never started
    await until(lambda: bool(events), timeout=3)
    assert events[0].silent_for >= 0.6


async def test_exhausted_ports_give_a_clear_error(make_relay: MakeRelay) -> None:
    ports = port_range(pairs=2)  # one call
    relay = make_relay(**ports)
    relay.allocate("call-1")
    with pytest.raises(PortsExhausted, match=f"{ports['port_min']}-{ports['port_max']} exhausted"):
        relay.allocate("call-2")
    assert relay.totals().allocation_failures == 1
    assert relay.totals().sessions == 1


async def test_closed_ports_rest_before_another_call_gets_them(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay(**port_range(pairs=4), quarantine=0.3)
    first = relay.allocate("call-1")
    old = {first.local(side).rtp_port for side in Side}
    final = first.close()
    assert first.close() is final  # closing twice is harmless
    second = relay.allocate("call-2")  # gets the two pairs never used
    assert {second.local(side).rtp_port for side in Side}.isdisjoint(old)
    with pytest.raises(PortsExhausted, match="2 resting"):
        relay.allocate("call-3")
    await asyncio.sleep(0.35)
    third = relay.allocate("call-3")
    assert {third.local(side).rtp_port for side in Side} == old


async def test_late_packets_to_a_closed_call_go_nowhere(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay()
    session, a, b = await call(relay, phones)
    a.send(rtp(1, 160), rtp_port(session, Side.A))
    await b.recv()
    port = rtp_port(session, Side.A)
    session.close()
    a.send(rtp(2, 320), port)
    assert await b.silent()
    with pytest.raises(RuntimeError, match="closed"):
        session.set_remote(Side.A, *a.addr)


async def test_totals_keep_counting_after_sessions_close(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay()
    session, a, b = await call(relay, phones)
    for seq in (1, 2, 4):
        a.send(rtp(seq, seq * 160), rtp_port(session, Side.A))
        await b.recv()
    live = relay.totals()
    final = session.close()
    closed = relay.totals()
    assert (live.rtp_packets_in, closed.rtp_packets_in) == (3, 3)
    assert (live.lost, closed.lost) == (1, 1)
    assert closed.sessions == 0 and closed.sessions_total == 1
    assert sum(closed.jitter_buckets) == 1  # A's leg received RTP; B's did not
    assert final.record()["a"]["packets_in"] == 3


async def test_a_loop_through_the_relay_is_never_learned(
    make_relay: MakeRelay, phones: Phones
) -> None:
    # A phone whose SDP names another port of this relay would make it talk to itself.
    relay = make_relay()
    session, _, b = await call(relay, phones)
    other = relay.allocate("call-2")
    other_b = phones()
    other.set_remote(Side.A, *rtp_port(session, Side.A))
    other.set_remote(Side.B, *other_b.addr)
    other_b.send(rtp(1, 160), rtp_port(other, Side.B))  # relayed to session A's port...
    await until(lambda: session.stats().a.foreign_packets == 1)  # ...and refused there
    assert await b.silent()


async def test_joined_legs_count_in_on_and_out_afresh(
    make_relay: MakeRelay, phones: Phones
) -> None:
    relay = make_relay()
    first, a, _ = await call(relay, phones)
    second, _, c = await call(relay, phones)
    for seq in range(3):  # A talks in its first call, C in its own
        a.send(rtp(seq, seq * 160, ssrc=0xA), rtp_port(first, Side.A))
        c.send(rtp(seq, seq * 160, ssrc=0xC), rtp_port(second, Side.B))
    await until(lambda: first.stats().a.packets_in == 3 and second.stats().b.packets_in == 3)
    joined = first.join(Side.A, second, Side.B)  # A and C now talk to each other
    c.send(rtp(3, 480, ssrc=0xC), rtp_port(second, Side.B))
    assert (await a.recv())[0] == rtp(3, 480, ssrc=0xC)
    stats = joined.stats()
    assert (stats.a.packets_in, stats.b.packets_in) == (3, 4)  # "in" counts on
    assert (stats.a.packets_out, stats.a.bytes_out) == (1, 172)  # "out" from the join only
    assert (stats.b.packets_out, stats.b.bytes_out) == (0, 0)


async def test_a_closed_calls_ports_are_freed_without_the_cyclic_collector(
    make_relay: MakeRelay, phones: Phones
) -> None:
    # Paired ports point at each other; left so, every call's ports, sockets and buffers wait
    # for a full collection (100+ ms pauses at a few hundred calls/s). Closed, they must not.
    relay = make_relay()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            session, a, b = await call(relay, phones)
            a.send(rtp(1, 160, ssrc=0xA), rtp_port(session, Side.A))
            await b.recv()
            session.close()
            del session
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, Port)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
