"""Media workers on real processes and UDP sockets on 127.0.0.1: phones are plain sockets.

The pool (`media.workers.RelayPool`) must behave as the in-process relay does (the flows of
test_relay.py that involve it), and also: sessions of one call stay in one worker, a join
across two workers moves the leg, and a worker that is killed mid-call loses no call.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from media import MediaTimeout, RelayConfig, Side
from media.worker import STATS_EVERY
from media.worker_engine import EngineSettings
from media.workers import RelayPool, WorkerSession
from tests.media.conftest import Phone, port_range, rtp
from tests.media.rtp_audio import dominant, gather, packets, send_stream, sine
from tests.media.test_engine import write_wav

Phones = Callable[[], Phone]
MakePool = Callable[..., Awaitable[RelayPool]]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[RelayPool] = []

    async def make(workers: int = 2, **fields: Any) -> RelayPool:
        on_timeout = fields.pop("on_timeout", None)
        pool = RelayPool(RelayConfig(**{**port_range(), **fields}), workers,
                         on_timeout=on_timeout)  # fmt: skip
        pools.append(pool)
        await pool.started()
        return pool

    yield make
    for pool in pools:
        pool.close()
        await pool.wait_closed()
        assert all(w.process.returncode == 0 for w in pool.workers), "a worker did not exit 0"


def rtp_addr(session: WorkerSession, side: Side) -> tuple[str, int]:
    local = session.local(side)
    return (local.host, local.rtp_port)


async def talk(session: WorkerSession, a: Phone, b: Phone, seq: int, *, ssrc: int = 0xA) -> None:
    """One packet each way, checked at the other phone."""
    a.send(rtp(seq, seq * 160, ssrc=ssrc), rtp_addr(session, Side.A))
    data, source = await b.recv()
    assert data == rtp(seq, seq * 160, ssrc=ssrc) and source == rtp_addr(session, Side.B)
    b.send(rtp(seq, seq * 160, ssrc=0xB), rtp_addr(session, Side.B))
    data, source = await a.recv()
    assert data == rtp(seq, seq * 160, ssrc=0xB) and source == rtp_addr(session, Side.A)


def call(
    pool: RelayPool, phones: Phones, call_id: str = "call-1"
) -> tuple[WorkerSession, Phone, Phone]:
    a, b = phones(), phones()
    session = pool.allocate(call_id)
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    return session, a, b


async def test_relays_both_ways_and_the_final_counters_come_back(
    make_pool: MakePool, phones: Phones
) -> None:
    pool = await make_pool()
    session, a, b = call(pool, phones)
    for i in range(5):
        await talk(session, a, b, i)
    await pool.refresh()
    live = session.stats()
    assert (live.a.packets_in, live.a.packets_out, live.b.packets_in) == (5, 5, 5)
    assert live.a.latched == a.addr and live.a.ssrc == 0xA
    await talk(session, a, b, 5)
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.set_hold(Side.A, True)
    await pool.settle()
    final = session.stats()
    assert (final.a.packets_in, final.b.packets_out, final.a.bytes_in) == (6, 6, 6 * 172)
    await pool.refresh()
    totals = pool.totals()
    assert (totals.rtp_packets_in, totals.sessions, totals.pairs_in_use) == (12, 0, 0)


async def test_the_workers_periodic_report_gives_live_counters_unasked(
    make_pool: MakePool, phones: Phones
) -> None:
    pool = await make_pool(workers=1)
    session, a, b = call(pool, phones)
    for i in range(3):
        await talk(session, a, b, i)
    await asyncio.sleep(STATS_EVERY + 1.5)  # every session's counters, every STATS_EVERY s
    stats = session.stats()
    assert (stats.a.packets_in, stats.b.packets_out, stats.b.packets_in) == (3, 3, 3)
    assert stats.a.kernel_packets == stats.b.kernel_packets  # whichever way they went


async def test_a_calls_sessions_share_a_worker_and_calls_spread(make_pool: MakePool) -> None:
    pool = await make_pool(workers=2)
    first = pool.allocate("call-1")
    second = pool.allocate("call-1")
    other = pool.allocate("call-2")
    assert first.worker is second.worker
    assert other.worker is not first.worker
    assert len({first.local(Side.A).rtp_port, second.local(Side.A).rtp_port,
                other.local(Side.A).rtp_port}) == 3  # fmt: skip


async def test_bad_addresses_are_refused_before_the_worker(make_pool: MakePool) -> None:
    session = (await make_pool()).allocate("call-1")
    with pytest.raises(ValueError):
        session.set_remote(Side.A, "not-an-address", 4000)
    with pytest.raises(ValueError):
        session.set_remote(Side.A, "127.0.0.1", 70000)
    with pytest.raises(ValueError, match="clock_rate"):
        session.set_remote(Side.A, "127.0.0.1", 4000, clock_rate=0)


@pytest.mark.parametrize("same_worker", [True, False], ids=["one-worker", "across-workers"])
async def test_attended_transfer_join_moves_the_legs(
    make_pool: MakePool, phones: Phones, same_worker: bool
) -> None:
    pool = await make_pool(workers=2)
    first, a, _ = call(pool, phones, "call-1")
    second, _, d = call(pool, phones, "call-1" if same_worker else "call-2")
    assert (first.worker is second.worker) is same_worker
    for i in range(3):  # A talks in the first call, D in the second
        a.send(rtp(i, i * 160, ssrc=0xA), rtp_addr(first, Side.A))
        d.send(rtp(i, i * 160, ssrc=0xD), rtp_addr(second, Side.B))
    await asyncio.sleep(0.05)
    joined = first.join(Side.A, second, Side.B)  # A stays A; D becomes B of the joined call
    assert first.closed and second.closed
    assert joined.local(Side.A) == first.local(Side.A)
    assert joined.local(Side.B) == second.local(Side.B)
    await asyncio.sleep(0.05)  # the orders reach the workers
    for i in range(3, 8):
        await talk(joined, a, d, i)
    await pool.settle()
    assert first.stats().a.packets_in == 3 and second.stats().b.packets_in == 3
    await pool.refresh()
    stats = joined.stats()
    assert stats.a.packets_in == 8 and stats.b.packets_in == 8  # "in" counts on
    assert stats.a.packets_out == 5 and stats.b.packets_out == 5  # "out" afresh
    joined.close()
    await pool.settle()
    assert pool.totals().pairs_in_use == 0  # the legs that did not move went with their calls


async def test_a_killed_worker_loses_no_call(make_pool: MakePool, phones: Phones) -> None:
    pool = await make_pool(workers=1)
    session, a, b = call(pool, phones)
    for i in range(4):
        await talk(session, a, b, i)
    await pool.refresh()
    victim = session.worker
    os.kill(victim.process.pid, signal.SIGKILL)
    for _ in range(300):
        if session.worker is not victim:
            break
        await asyncio.sleep(0.01)
    assert session.worker is not victim and pool.restarts == 1
    for i in range(4, 8):  # same ports, same phones: the call goes on
        await talk(session, a, b, i)
    await pool.refresh()
    stats = session.stats()
    assert stats.a.packets_in == 8 and stats.b.packets_out == 8  # earlier counters kept
    assert pool.totals().rtp_packets_in == 16  # the dead worker's totals too


async def test_media_timeout_reaches_the_switch(make_pool: MakePool, phones: Phones) -> None:
    events: list[MediaTimeout] = []
    pool = await make_pool(workers=1, timeout=0.3, on_timeout=events.append)
    session, a, b = call(pool, phones)
    await talk(session, a, b, 0)
    for _ in range(200):
        if events:
            break
        await asyncio.sleep(0.01)
    assert len(events) == 1 and events[0].call_id == "call-1"
    await pool.refresh()
    assert pool.totals().timeouts == 1


async def test_hold_reaches_the_worker(make_pool: MakePool, phones: Phones) -> None:
    pool = await make_pool(workers=1, timeout=0.3)
    events: list[MediaTimeout] = []
    session = pool.allocate("call-1", on_timeout=events.append)
    a, b = phones(), phones()
    session.set_remote(Side.A, *a.addr)
    session.set_remote(Side.B, *b.addr)
    session.set_hold(Side.A, True)
    session.set_hold(Side.B, True)
    await talk(session, a, b, 0)
    await asyncio.sleep(0.8)
    assert events == []  # on hold: the long (silent) timeout applies
    await pool.refresh()
    assert session.stats().a.on_hold


async def test_no_worker_no_media(make_pool: MakePool) -> None:
    pool = await make_pool(workers=1)
    worker = pool.workers[0]
    os.kill(worker.process.pid, signal.SIGKILL)
    for _ in range(300):
        if not worker.alive:
            break
        await asyncio.sleep(0.01)
    # A worker that died young is restarted after a pause; meanwhile calls get a clear error.
    with pytest.raises(OSError, match="no media worker"):
        pool.allocate("call-1")
    for _ in range(300):
        if pool.workers[0].alive:
            break
        await asyncio.sleep(0.01)
    assert pool.allocate("call-2").worker is pool.workers[0]


async def test_a_killed_worker_hands_its_endpoints_and_mixes_on(
    phones: Phones, tmp_path: Path
) -> None:
    pool = RelayPool(RelayConfig(**port_range()), 1,
                     engine=EngineSettings(recordings=str(tmp_path)))  # fmt: skip
    await pool.started()
    engine = pool.engine
    assert engine is not None
    try:
        (a, phone_a), (b, phone_b) = [(engine.endpoint(), phones()) for _ in range(2)]
        for endpoint, phone in ((a, phone_a), (b, phone_b)):
            endpoint.attach(phone.addr)
            endpoint.set_format("PCMU", 0, 101)
        mix = engine.conference()
        mix.add(a.row)
        mix.add(b.row)
        long = tmp_path / "long.wav"
        write_wav(long, sine(500, 5.0))
        playing = asyncio.ensure_future(a.play(str(long)))
        await asyncio.sleep(0.3)
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        assert await asyncio.wait_for(playing, 5) is False  # ended as if stopped
        for _ in range(300):
            if pool.restarts and pool.workers[0].alive:
                break
            await asyncio.sleep(0.01)
        await pool.settle()
        # The bridge goes on in the new worker: what A's phone says reaches B's.
        listening = asyncio.ensure_future(gather(phone_b, 1.2))
        await send_stream(phone_a, a.address, packets(sine(600, 1.0)))
        heard = (await listening).audio()
        assert len(heard) > 4000 and abs(dominant(heard) - 600) < 20
        short = tmp_path / "short.wav"
        write_wav(short, sine(900, 0.3))
        assert await asyncio.wait_for(a.play(str(short)), 5) is True
        # Digits of an endpoint that forwards them come back to the switch.
        digits: list[str] = []
        b.on_digit = digits.append
        await pool.settle()
        b.digit("7")
        await pool.settle()
        assert digits == ["7"]
    finally:
        engine.close()
        pool.close()
        await pool.wait_closed()


async def test_bad_orders_are_refused_and_the_worker_goes_on(
    make_pool: MakePool, phones: Phones
) -> None:
    pool = await make_pool(workers=1)
    session, a, b = call(pool, phones)
    await talk(session, a, b, 0)
    worker = pool.workers[0]
    with structlog.testing.capture_logs() as logs:
        worker.send(("no-such-order", 1))
        worker.send(("remote", 9999, Side.A, "127.0.0.1", 4000, None, None, 8000))
        worker.send(("adopt", 77, "call-x", {}, None))  # no sockets with it
        worker.send(("hold", session.sid))  # an argument short
        await pool.settle()
    refused = [e["error"] for e in logs if e["event"] == "media worker refused an order"]
    assert len(refused) == 4, logs
    assert refused[0] == "unknown order 'no-such-order'"
    assert "adopt needs 4 sockets" in refused[2]
    for i in range(1, 4):  # the call's media never stopped
        await talk(session, a, b, i)
    assert worker.alive and pool.restarts == 0
