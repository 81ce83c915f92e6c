"""Per-leg counters against RFC 3550: loss (A.1, A.3) and interarrival jitter (A.8).

The relay's own packet handler (`RtpPort.forward`) is fed crafted packets with chosen arrival
times, and compared with a straightforward transcription of the RFC's appendix code.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from media.forward import RtpPort
from media.latch import Latch
from media.stats import Side
from tests.media.conftest import rtp

RATE = 8000
RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100


def rfc3550(packets: list[tuple[int, int, float]]) -> tuple[int, int, float]:
    """(received, lost, jitter in timestamp units) per RFC 3550 A.1, A.3 and A.8.

    `packets` are (seq, ts, arrival seconds) in arrival order, all of one SSRC. The source is
    valid from its first packet (no probation), as in the relay.
    """
    seq0 = packets[0][0]
    base_seq = max_seq = seq0
    cycles = 0
    received = 0
    bad_seq = RTP_SEQ_MOD + 1
    jitter = 0.0
    transit: float | None = None
    for seq, ts, arrival in packets:
        udelta = (seq - max_seq) % RTP_SEQ_MOD
        counted = True
        if received == 0:
            pass
        elif udelta < MAX_DROPOUT:
            if seq < max_seq:
                cycles += RTP_SEQ_MOD
            max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:
            if seq == bad_seq:
                base_seq = max_seq = seq  # init_seq(): the sender restarted
                cycles = 0
                received = 0
                bad_seq = RTP_SEQ_MOD + 1
            else:
                bad_seq = (seq + 1) & (RTP_SEQ_MOD - 1)
                counted = False
        if counted:
            received += 1
        now_transit = arrival * RATE - ts
        if transit is not None:
            d = abs(now_transit - transit)
            jitter += (d - jitter) / 16
        transit = now_transit
    expected = cycles + max_seq - base_seq + 1
    return received, expected - received, jitter


@pytest.fixture
def port() -> Iterator[RtpPort]:
    """A relay RTP port whose peer collects what it would send."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    buf = bytearray(2048)

    def make(sock: socket.socket) -> RtpPort:
        return RtpPort(
            sock,
            latch=Latch(window=3, strict=False, relatch_on_ssrc=True),
            buf=buf,
            own=lambda addr: False,
            watch=lambda sock, reader: None,
            call_id="counters",
            side=Side.A,
        )

    port, peer = make(socks[0]), make(socks[1])
    port.peer = peer
    sent: list[bytes] = []
    peer.tx = lambda data: sent.append(bytes(data)) or len(data)
    yield port
    assert len(sent) == port.sent
    for s in socks:
        s.close()


def feed(port: RtpPort, packets: list[tuple[int, int, float]]) -> None:
    for seq, ts, arrival in packets:
        data = rtp(seq, ts)
        port.buf[: len(data)] = data
        port.forward(len(data), arrival)


def stream(
    seqs: list[int], *, jitter_ms: list[float] | None = None
) -> list[tuple[int, int, float]]:
    """Packets 20 ms apart by timestamp; arrival = send time + the given delay variation."""
    out = []
    for i, seq in enumerate(seqs):
        delay = (jitter_ms[i % len(jitter_ms)] if jitter_ms else 0.0) / 1000
        out.append((seq, 1000 + (seq - seqs[0]) * 160, 100.0 + (seq - seqs[0]) * 0.02 + delay))
    return out


@pytest.mark.parametrize(
    ("name", "seqs"),
    [
        ("no loss", list(range(100, 150))),
        ("gaps", [s for s in range(100, 150) if s not in (103, 104, 120, 149)]),
        ("reordered", [100, 101, 103, 102, 104, 106, 105, 107]),
        ("duplicates", [100, 101, 101, 102, 103, 103, 104]),
        ("wrap", [65530, 65531, 65533, 65534, 65535, 0, 1, 3, 4]),
        ("late", [100, 101, 102, 104, 105, 106, 107, 103, 108]),
        ("big gap", [100, 101, 2500, 2501]),
    ],
)
def test_loss_matches_rfc3550(port: RtpPort, name: str, seqs: list[int]) -> None:
    packets = stream(seqs)
    feed(port, packets)
    _, lost, _ = rfc3550(packets)
    assert port.lost() == max(0, lost), name
    assert port.packets == len(packets)
    assert port.sent == len(packets)  # counting never stops forwarding


def test_jitter_matches_rfc3550_a8(port: RtpPort) -> None:
    packets = stream(list(range(500, 600)), jitter_ms=[0.0, 7.0, 2.0, 12.0, 0.5, 4.0])
    feed(port, packets)
    _, _, jitter = rfc3550(packets)
    assert port.jitter == pytest.approx(jitter, rel=1e-9)
    # J estimates the mean |D|, here the mean change of delay between packets: 6.8 ms.
    assert jitter / RATE * 1000 == pytest.approx(6.8, abs=1.5)


def test_steady_stream_has_no_jitter(port: RtpPort) -> None:
    feed(port, stream(list(range(0, 200))))
    assert port.jitter == pytest.approx(0.0, abs=1e-6)


def test_timestamp_wrap_is_not_jitter(port: RtpPort) -> None:
    start = (1 << 32) - 160 * 5
    packets = [(i, (start + 160 * i) & 0xFFFFFFFF, 50.0 + 0.02 * i) for i in range(10)]
    feed(port, packets)
    assert port.jitter == pytest.approx(0.0, abs=1e-6)


def test_sequence_restart_is_believed_after_two_packets(port: RtpPort) -> None:
    feed(port, stream([100, 101, 102, 104, 105]))  # 1 lost
    feed(port, [(30000, 9000, 200.0), (30001, 9160, 200.02), (30002, 9320, 200.04)])
    # RFC A.1: the first packet of the jump is held back, the second restarts the count.
    # Unlike A.1's init_seq(), the loss counted before the restart is kept: it happened, and
    # the call record should say so.
    assert port.max_seq == 30002
    assert port.lost() == 1


def test_new_ssrc_keeps_the_losses_of_the_old_stream(port: RtpPort) -> None:
    feed(port, stream([1, 2, 5, 6]))  # 2 lost
    for seq in (7000, 7001, 7003):  # a new SSRC, 1 lost
        data = rtp(seq, seq * 160, ssrc=0x99)
        port.buf[: len(data)] = data
        port.forward(len(data), 300.0)
    assert port.ssrc == 0x99
    assert port.lost() == 3


def test_rtcp_multiplexed_on_the_rtp_port_is_forwarded_not_counted(port: RtpPort) -> None:
    feed(port, stream([10, 11, 12]))
    report = bytes([0x81, 201, 0, 7]) + bytes(28)  # RTCP RR on the RTP port (RFC 5761)
    port.buf[: len(report)] = report
    port.forward(len(report), 101.0)
    assert (port.packets, port.sent, port.lost(), port.max_seq) == (4, 4, 0, 12)


def test_a_send_the_kernel_refuses_is_counted_dropped_not_sent(port: RtpPort) -> None:
    def refuse(data: memoryview) -> int:
        raise BlockingIOError  # a full socket buffer: EAGAIN

    feed(port, stream([1, 2]))
    port.peer.tx = refuse
    feed(port, stream([3, 4, 5]))
    assert (port.packets, port.sent, port.dropped) == (5, 2, 3)
    assert (port.octets, port.sent_octets) == (5 * 172, 2 * 172)
    assert port.lost() == 0  # received all the same: loss is about the phone's stream
