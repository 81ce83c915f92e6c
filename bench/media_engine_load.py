"""The load of `bench/media_engine.py`: phones that talk to media endpoints, for S seconds.

One UDP socket stands in for every phone of a step. Each endpoint that listens to a phone
(``send_to``) gets one 172-byte PCMU packet (a 400 Hz tone) every 20 ms, sequence numbers
+1 and timestamps +160, one SSRC per phone; the sends are spread over the 20 ms (a
fortieth of the endpoints every 0.5 ms) as independent phones would, in sendmmsg batches
(`media_relay_mmsg`). What the endpoints send back is received in recvmmsg batches and told
apart by its source port.

Checked, over the measured window (after a warm-up in which every jitter buffer starts):

- in: packets the server counted as received, against packets sent (in flight at the edges
  of the window is a few packets, far below the 0.1 % limit);
- out, per endpoint that sends back: the RTP timestamps must advance by exactly one frame
  (160) from packet to packet, so a frame the endpoint did not send (nothing heard, a tick
  skipped) or a packet lost on the way is a gap; sequence numbers must be continuous too;
- the rate: packets back per sending endpoint per second, against 50;
- the server's late ticks (run a period or more after their time);
- the generator's own lateness: a send more than 20 ms behind its schedule (the generator's
  core was taken by other work) arrives as network jitter would, and may be too late for
  the server's playout; the bench reports those steps as the generator's, not the server's.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from media_relay_load import SLICES, TICK, _fine_sleep, _machine_busy
from media_relay_mmsg import RTP_HEADER, Receiver, Sender
from media_relay_targets import cpu_ticks

from media.g711 import ENCODE

CLK_TCK = os.sysconf("SC_CLK_TCK")
# A send this late is network jitter the server's 40 ms playout delay may not absorb.
GEN_LATE = 0.020
PACKET = np.dtype([*RTP_HEADER, ("payload", "u1", 160)])
_TONE = (6000 * np.sin(2 * np.pi * 400 * np.arange(160) / 8000)).astype(np.int16)
PAYLOAD = ENCODE["PCMU"][_TONE.view(np.uint16)]  # 8 whole periods: repeats seamlessly


@dataclass
class Window:
    """What one measured window showed."""

    seconds: float  # how long the window took
    nominal: float  # how long it should have taken
    sent: int  # packets the phones sent
    received_in: int  # of those, counted by the server
    back: int  # packets the endpoints sent back that arrived
    back_missing: int  # frames missing in what came back (timestamp gaps)
    seq_gaps: int  # sequence number discontinuities in what came back
    senders: int  # endpoints expected to send back
    gen_late: float  # share of the generator's sends more than GEN_LATE behind schedule
    ticks: int  # server ticks (per session for the reference)
    late_ticks: int
    too_late: int  # packets the server dropped as arriving after their frame was played
    tick_seconds: float  # wall time the engine spent in its ticks (0: not measured)
    server_cpu: float  # seconds
    gen_cpu: float  # seconds
    machine_cpu: float  # seconds of CPU the whole machine used

    @property
    def in_loss(self) -> float:
        return max(0.0, 1 - self.received_in / self.sent) if self.sent else 0.0

    @property
    def out_loss(self) -> float:
        expected = self.back + self.back_missing
        return self.back_missing / expected if expected else 0.0

    @property
    def back_rate(self) -> float:
        """Packets back per sending endpoint per second (50 when on time)."""
        return self.back / self.senders / self.seconds if self.senders else 50.0

    @property
    def late_fraction(self) -> float:
        return self.late_ticks / self.ticks if self.ticks else 0.0

    @property
    def cpu_percent(self) -> float:
        return 100 * self.server_cpu / self.seconds

    @property
    def other_percent(self) -> float:
        other = self.machine_cpu - self.server_cpu - self.gen_cpu
        return 100 * max(0.0, other) / self.seconds


def run(
    sock: socket.socket,
    send_to: list[tuple[str, int]],
    hear_from: list[int],
    seconds: float,
    warmup: float,
    server_pid: int,
    server_stats: Callable[[], dict[str, int]],
) -> Window:
    """Send to ``send_to`` from the socket for ``warmup`` + ``seconds`` and measure the
    second part (``server_stats`` is read at both ends of it)."""
    _fine_sleep()
    n = len(send_to)
    rng = np.random.default_rng(n)
    packets = np.zeros(n, PACKET)
    packets["vpxcc"] = 0x80
    packets["seq"] = rng.integers(0, 1 << 16, n)
    packets["ts"] = rng.integers(0, 1 << 32, n)
    packets["ssrc"] = rng.integers(1, 1 << 32, n)
    packets["payload"] = PAYLOAD
    sender = Sender(sock, packets, send_to) if n else None
    receiver = Receiver(sock, timestamps=False)
    endpoint_of = np.full(1 << 16, -1, np.int64)  # source port -> index in hear_from
    endpoint_of[np.asarray(hear_from, np.int64)] = np.arange(len(hear_from))
    seq, ts = packets["seq"], packets["ts"]
    bounds = [k * n // SLICES for k in range(SLICES + 1)]
    warm = round(warmup / TICK)
    ticks = max(1, round(seconds / TICK))
    got_who: list[np.ndarray] = []
    got_seq: list[np.ndarray] = []
    got_ts: list[np.ndarray] = []
    measuring = False

    def drain() -> None:
        while (m := receiver.recv()) > 0:
            if measuring:
                got_who.append(endpoint_of[receiver.addrs["port"][:m]])
                got_seq.append(receiver.packets["seq"][:m].astype(np.int64))
                got_ts.append(receiver.packets["ts"][:m].astype(np.int64))
            if m < receiver.batch:
                break

    clock = time.monotonic
    start = clock() + 0.01
    sent = 0
    gen_late = 0
    for tick in range(warm + ticks):
        if tick == warm:
            drain()
            before = server_stats()
            cpu0, gen0, busy0 = cpu_ticks(server_pid), os.times(), _machine_busy()
            failed0 = sender.failed if sender else 0
            measuring = True
            began = clock()
        if tick:
            seq += 1
            ts += 160
        base = start + tick * TICK
        for k in range(SLICES):
            due = base + k * (TICK / SLICES)
            drain()
            now = clock()
            if now < due:
                time.sleep(due - now)
            elif measuring and now - due > GEN_LATE:
                gen_late += 1
            lo, hi = bounds[k], bounds[k + 1]
            if sender is not None and lo < hi:
                sender.send(lo, hi)
        if measuring:
            sent += n
    time.sleep(0.005)
    drain()
    elapsed = clock() - began
    cpu1, gen1, busy1 = cpu_ticks(server_pid), os.times(), _machine_busy()
    after = server_stats()
    sent -= (sender.failed if sender else 0) - failed0
    missing, gaps, back = _continuity(got_who, got_seq, got_ts)
    return Window(
        seconds=elapsed,
        nominal=ticks * TICK,
        sent=sent,
        received_in=after["packets_in"] - before["packets_in"],
        back=back,
        back_missing=missing,
        seq_gaps=gaps,
        senders=len(hear_from),
        gen_late=gen_late / (ticks * SLICES),
        ticks=after["ticks"] - before["ticks"],
        late_ticks=after["late_ticks"] - before["late_ticks"],
        too_late=after["too_late"] - before["too_late"],
        tick_seconds=(after["tick_us"] - before["tick_us"]) / 1e6,
        server_cpu=(cpu1 - cpu0) / CLK_TCK,
        gen_cpu=(gen1.user - gen0.user) + (gen1.system - gen0.system),
        machine_cpu=(busy1 - busy0) / CLK_TCK,
    )


def _continuity(
    who: list[np.ndarray], seqs: list[np.ndarray], stamps: list[np.ndarray]
) -> tuple[int, int, int]:
    """Frames missing (timestamp gaps), sequence discontinuities, and packets, of what came
    back from known endpoints, each endpoint's packets in their order of arrival."""
    if not who:
        return 0, 0, 0
    endpoint = np.concatenate(who)
    known = endpoint >= 0
    endpoint = endpoint[known]
    seq = np.concatenate(seqs)[known]
    ts = np.concatenate(stamps)[known]
    order = np.argsort(endpoint, kind="stable")
    endpoint, seq, ts = endpoint[order], seq[order], ts[order]
    same = endpoint[1:] == endpoint[:-1]
    frames = ((ts[1:] - ts[:-1]) & 0xFFFFFFFF) // 160
    frames = frames[same]
    missing = int((frames[(frames > 1) & (frames < 0x8000)] - 1).sum())  # not a step back
    gaps = int(np.count_nonzero(((seq[1:] - seq[:-1]) & 0xFFFF)[same] != 1))
    return missing, gaps, len(endpoint)
