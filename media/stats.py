"""What the relay tells the rest of the switch: sides, counters and events.

All values are frozen snapshots. Counters are cumulative since the session was allocated and
never reset, so a call record can take them as they are at hang-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final

Addr = tuple[str, int]


class Side(StrEnum):
    """A call leg of a relay session: A is the caller's phone, B the callee's."""

    A = "a"
    B = "b"

    @property
    def other(self) -> Side:
        return Side.B if self is Side.A else Side.A


@dataclass(frozen=True, slots=True)
class LocalMedia:
    """Where a leg's phone must send: what the B2BUA writes into the SDP it sends that phone."""

    host: str
    rtp_port: int
    rtcp_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LegStats:
    """One leg as the relay saw it. "in" is from this leg's phone, "out" is towards it.

    `lost` and `jitter_ms` describe the RTP stream this phone sends (RFC 3550 §6.4.1: the
    cumulative number of packets lost, A.3; the interarrival jitter, A.8, in milliseconds).
    `foreign_packets` came from sources the latching rules refused; `dropped_packets` were
    accepted but could not be sent on (no destination known yet, or the send failed).
    `kernel_packets` of `packets_in` were forwarded by the kernel (`media.kernel`), not by
    the relay process.
    """

    side: Side
    local: LocalMedia
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    rtcp_packets_in: int
    rtcp_packets_out: int
    lost: int
    jitter_ms: float
    foreign_packets: int
    dropped_packets: int
    kernel_packets: int
    remote: Addr | None  # from SDP
    latched: Addr | None  # where RTP for this phone goes now
    rtcp_latched: Addr | None
    ssrc: int | None  # of the stream this phone sends
    last_packet_at: float | None  # UNIX time of the last RTP packet from this phone
    on_hold: bool


# The counters of a leg (LegStats fields that add up), in the order `RelaySession.counts` gives.
LEG_COUNTERS: Final = (
    "packets_in",
    "bytes_in",
    "packets_out",
    "bytes_out",
    "rtcp_packets_in",
    "rtcp_packets_out",
    "lost",
    "foreign_packets",
    "dropped_packets",
    "kernel_packets",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStats:
    call_id: str
    a: LegStats
    b: LegStats

    def record(self) -> dict[str, Any]:
        """Plain values for a call record (JSON-friendly)."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaTimeout:
    """A leg stopped sending RTP; the B2BUA should hang the call up and close the session.

    Sent once per session. `silent_for` is how long the leg had been quiet when noticed.
    """

    call_id: str
    side: Side
    silent_for: float
    on_hold: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayTotals:
    """Counters of the whole relay, live sessions and closed ones together (for /metrics)."""

    sessions: int
    sessions_total: int
    allocation_failures: int
    timeouts: int
    pairs_in_use: int
    pairs_free: int
    pairs_resting: int
    rtp_packets_in: int
    rtp_bytes_in: int
    rtp_packets_out: int
    rtp_bytes_out: int
    rtcp_packets_in: int
    rtcp_packets_out: int
    lost: int
    foreign_packets: int
    dropped_packets: int
    rtp_packets_kernel: int  # of rtp_packets_in, forwarded by the kernel
    # Final jitter of each closed leg that received RTP, counted into buckets (ms, upper
    # bounds) for a Prometheus histogram; the last bucket is +Inf.
    jitter_buckets: tuple[int, ...]
    jitter_sum_ms: float


class StatsCell:
    """A session's counters as they were at one moment (`snapshot()`): exact at once from an
    in-process relay; from a media worker, the latest reported figures until the worker's own
    for that moment arrive (`media.workers.RelayPool.settle`)."""

    __slots__ = ("stats",)

    def __init__(self, stats: SessionStats) -> None:
        self.stats = stats

    def leg(self, side: Side) -> LegStats:
        return self.stats.a if side is Side.A else self.stats.b
