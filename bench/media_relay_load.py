"""The load generator of `bench/media_relay.py`: N bidirectional G.711 calls for S seconds.

Each call has an A and a B phone; each sends one 172-byte RTP packet every 20 ms with
increasing sequence numbers and timestamps (seq +1, ts +160, one SSRC per phone). All A
phones share one socket and all B phones another: a relay learns each leg's source as
usual (they are just the same address), and the generator can send and receive in
sendmmsg/recvmmsg batches. Calls are spread evenly over the 20 ms: the packets of 1/20 of the
calls leave every millisecond, as independent phones would, not as one burst per 20 ms.

Every packet carries its send time (CLOCK_REALTIME ns), call and leg; the kernel stamps its
arrival (SO_TIMESTAMPNS), so latency does not depend on when the generator gets round to
reading. Loss is counted per call and leg from what arrives.
"""

from __future__ import annotations

import ctypes
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from media_relay_mmsg import PACKET, PACKET_SIZE, Receiver, Sender, udp_socket
from media_relay_targets import HOSTS, Target

TICK = 0.020  # one G.711 packet per 20 ms per direction
SLICES = 40  # sends per tick: every 0.5 ms, a fortieth of the calls
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP = 1.0  # seconds of traffic before the measured window: every call has latched


def _fine_sleep() -> None:
    """Ask for 1 us timer slack (the default 50 us would blur 1 ms pacing)."""
    pr_set_timerslack = 29
    ctypes.CDLL(None).prctl(pr_set_timerslack, 1000, 0, 0, 0)


@dataclass
class Point:
    calls: int
    seconds: float  # how long the measured window took
    nominal: float  # how long it should have taken: longer means the generator fell behind
    sent: int
    received: int
    misrouted: int
    worst_call_loss: float
    calls_over: int  # calls with loss >= 0.1 %
    latency_us: tuple[float, float, float]  # p50, p99, max
    relay_cpu: float  # % of one core
    gen_cpu: float
    other_cpu: float  # the rest of the machine, % of one core
    late_ms: tuple[float, float]  # generator behind schedule: p99, max
    counters: str = ""

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 1.0

    @property
    def generator_behind(self) -> bool:
        return self.seconds > self.nominal * 1.03

    @property
    def passed(self) -> bool:
        return self.loss < 0.001 and self.misrouted == 0 and not self.generator_behind

    @property
    def pps(self) -> float:
        """Packets per second the relay forwarded (both directions)."""
        return self.received / self.seconds


def _machine_busy() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def run(
    target: Target, calls: int, seconds: float, during: Callable[[int], None] | None = None
) -> Point:
    """Start `target`, send `calls` calls through it for `seconds`, stop it.

    `during(pid)` is called when the measured window starts (e.g. to attach a profiler).
    """
    _fine_sleep()
    sock_a, sock_b = udp_socket(HOSTS.phones), udp_socket(HOSTS.phones)
    target.start()
    try:
        dests = target.calls(calls, sock_a.getsockname(), sock_b.getsockname())
        point = _load(target, sock_a, sock_b, dests, seconds, during)
        point.counters = target.counters()
        return point
    finally:
        target.stop()
        sock_a.close()
        sock_b.close()


def _packets(n: int, leg: int, rng: np.random.Generator) -> np.ndarray:
    p = np.zeros(n, PACKET)
    p["vpxcc"] = 0x80  # RTP version 2
    p["mpt"] = 0  # PCMU
    p["seq"] = rng.integers(0, 1 << 16, n)
    p["ts"] = rng.integers(0, 1 << 32, n)
    p["ssrc"] = rng.integers(1, 1 << 32, n)
    p["call"] = np.arange(n)
    p["leg"] = leg
    return p


def _load(
    target: Target,
    sock_a: socket.socket,
    sock_b: socket.socket,
    dests: list[tuple[tuple[str, int], tuple[str, int]]],
    seconds: float,
    during: Callable[[int], None] | None,
) -> Point:
    n = len(dests)
    rng = np.random.default_rng(n)
    pk = [_packets(n, 0, rng), _packets(n, 1, rng)]
    senders = [
        Sender(sock_a, pk[0], [d[0] for d in dests]),
        Sender(sock_b, pk[1], [d[1] for d in dests]),
    ]
    receivers = [Receiver(sock_a), Receiver(sock_b)]
    # Through a relay, what A sent arrives at B; through the echo it comes back to A.
    expect_leg = [0, 1] if target.reflects else [1, 0]
    tx = [p["tx"] for p in pk]
    seq = [p["seq"] for p in pk]
    ts = [p["ts"] for p in pk]
    bounds = [k * n // SLICES for k in range(SLICES + 1)]
    warm = round(WARMUP / TICK)
    ticks = max(1, round(seconds / TICK))
    late = np.zeros((warm + ticks) * SLICES)  # how far behind schedule each send was
    latencies: list[np.ndarray] = []
    origins: list[np.ndarray] = []
    misrouted = 0
    window_start = 1 << 62  # CLOCK_REALTIME ns of the first measured send; none yet

    def drain() -> None:
        nonlocal misrouted
        for side, r in enumerate(receivers):
            while (m := r.recv()) > 0:
                got = r.packets[:m]
                measured = got["tx"] >= window_start
                if measured.any():
                    got = got[measured]
                    latencies.append(r.rx_ns(m)[measured] - got["tx"])
                    origins.append(got["call"].astype(np.int64) * 2 + got["leg"])
                    misrouted += int(np.count_nonzero(got["leg"] != expect_leg[side]))
                    misrouted += int(np.count_nonzero(r.lengths[:m][measured] != PACKET_SIZE))
                if m < r.batch:
                    break

    clock = time.monotonic
    start = clock() + 0.01
    i = 0
    for tick in range(warm + ticks):
        if tick == warm:
            relay_cpu0, gen0, busy0 = target.cpu_ticks(), os.times(), _machine_busy()
            window_start = time.time_ns()
            failed0 = sum(s.failed for s in senders)
            if during is not None:
                during(target.pid)
            measured_from = clock()
        if tick:
            for leg in (0, 1):
                seq[leg] += 1
                ts[leg] += 160
        base = start + tick * TICK
        for k in range(SLICES):
            due = base + k * (TICK / SLICES)
            drain()
            now = clock()
            if now < due:
                time.sleep(due - now)
                now = clock()
            late[i] = now - due
            i += 1
            lo, hi = bounds[k], bounds[k + 1]
            if lo == hi:
                continue
            stamp = time.time_ns()
            for leg in (0, 1):
                tx[leg][lo:hi] = stamp
                senders[leg].send(lo, hi)
    elapsed = clock() - measured_from
    relay_cpu1, gen1, busy1 = target.cpu_ticks(), os.times(), _machine_busy()
    quiet_until = clock() + 0.3  # what is still in flight arrives or is lost
    while clock() < quiet_until:
        drain()
        time.sleep(0.002)
    drain()

    sent = 2 * n * ticks - (sum(s.failed for s in senders) - failed0)
    late = late[warm * SLICES :]
    per_origin = (
        np.bincount(np.concatenate(origins), minlength=2 * n) if origins else np.zeros(2 * n)
    )
    per_call = per_origin.reshape(n, 2).sum(axis=1)
    call_loss = 1 - per_call / (2 * ticks)
    lat_us = np.concatenate(latencies) / 1000 if latencies else np.zeros(1)
    relay = (relay_cpu1 - relay_cpu0) / CLK_TCK
    gen = (gen1.user - gen0.user) + (gen1.system - gen0.system)
    machine = (busy1 - busy0) / CLK_TCK
    return Point(
        calls=n,
        seconds=elapsed,
        nominal=ticks * TICK,
        sent=sent,
        received=int(per_origin.sum()),
        misrouted=misrouted,
        worst_call_loss=float(call_loss.max()),
        calls_over=int(np.count_nonzero(call_loss >= 0.001)),
        latency_us=(
            float(np.percentile(lat_us, 50)),
            float(np.percentile(lat_us, 99)),
            float(lat_us.max()),
        ),
        relay_cpu=100 * relay / elapsed,
        gen_cpu=100 * gen / elapsed,
        other_cpu=100 * max(0.0, machine - relay - gen) / elapsed,
        late_ms=(float(np.percentile(late, 99)) * 1000, float(late.max()) * 1000),
    )
