"""Prometheus view of the relay's and the media engine's counters, read at scrape time.

The hot path only adds to plain ints; this collector turns `Relay.totals()` into metric
families when /metrics is scraped, so forwarding a packet never touches a metrics library.
Register it once: `metrics.registry.register(RelayCollector(relay))`. No per-call labels.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from media.api import EngineLike, RelayLike
from media.relay import JITTER_BOUNDS_MS
from media.workers import RelayPool


class RelayCollector(Collector):
    def __init__(self, relay: RelayLike) -> None:
        self.relay = relay

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        t = self.relay.totals()
        packets = CounterMetricFamily(
            "softswitch_rtp_packets", "RTP packets relayed", labels=["direction"]
        )
        packets.add_metric(["in"], t.rtp_packets_in)
        packets.add_metric(["out"], t.rtp_packets_out)
        yield packets
        octets = CounterMetricFamily(
            "softswitch_rtp_bytes", "RTP bytes relayed (UDP payload)", labels=["direction"]
        )
        octets.add_metric(["in"], t.rtp_bytes_in)
        octets.add_metric(["out"], t.rtp_bytes_out)
        yield octets
        rtcp = CounterMetricFamily(
            "softswitch_rtcp_packets", "RTCP packets relayed", labels=["direction"]
        )
        rtcp.add_metric(["in"], t.rtcp_packets_in)
        rtcp.add_metric(["out"], t.rtcp_packets_out)
        yield rtcp
        yield CounterMetricFamily(
            "softswitch_rtp_packets_lost",
            "RTP packets lost before reaching the relay (RFC 3550 sequence gaps)",
            value=t.lost,
        )
        yield CounterMetricFamily(
            "softswitch_rtp_foreign_packets",
            "Packets dropped because their source was not the latched phone",
            value=t.foreign_packets,
        )
        yield CounterMetricFamily(
            "softswitch_rtp_dropped_packets",
            "Accepted packets that could not be sent on (no destination or send error)",
            value=t.dropped_packets,
        )
        yield CounterMetricFamily(
            "softswitch_rtp_kernel_packets",
            "RTP packets in that the kernel forwarded (media.kernel), of softswitch_rtp_packets",
            value=t.rtp_packets_kernel,
        )
        yield GaugeMetricFamily("softswitch_media_sessions", "Relay sessions open", t.sessions)
        yield CounterMetricFamily(
            "softswitch_media_sessions_allocated",
            "Relay sessions allocated",
            value=t.sessions_total,
        )
        yield CounterMetricFamily(
            "softswitch_media_allocation_failures",
            "Relay sessions refused (ports exhausted or unbindable)",
            value=t.allocation_failures,
        )
        yield CounterMetricFamily(
            "softswitch_media_timeouts", "Calls ended by media timeout", value=t.timeouts
        )
        ports = GaugeMetricFamily(
            "softswitch_media_port_pairs", "RTP/RTCP port pairs by state", labels=["state"]
        )
        ports.add_metric(["in_use"], t.pairs_in_use)
        ports.add_metric(["free"], t.pairs_free)
        ports.add_metric(["quarantine"], t.pairs_resting)
        yield ports
        if isinstance(self.relay, RelayPool):
            alive = sum(1 for w in self.relay.workers if w.alive)
            yield GaugeMetricFamily("softswitch_media_workers", "Media worker processes running",
                                    alive)  # fmt: skip
            yield CounterMetricFamily(
                "softswitch_media_worker_restarts",
                "Media workers that died and were started again (their calls went on)",
                value=self.relay.restarts,
            )
        cumulative = 0
        buckets = []
        for bound, count in zip((*JITTER_BOUNDS_MS, float("inf")), t.jitter_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        yield HistogramMetricFamily(
            "softswitch_rtp_jitter_ms",
            "Interarrival jitter (RFC 3550) of each finished call leg, milliseconds",
            buckets=buckets,
            sum_value=t.jitter_sum_ms,
        )


class EngineCollector(Collector):
    """The media engine: endpoints, its clock's health, packets and digits."""

    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        e, s = self.engine, self.engine.stats
        yield GaugeMetricFamily(
            "softswitch_media_endpoints", "Media engine endpoints open", e.endpoints
        )
        yield GaugeMetricFamily(
            "softswitch_media_recordings", "Recordings being written", len(e.recordings)
        )
        yield CounterMetricFamily(
            "softswitch_media_ticks", "20 ms media clock ticks", value=s.ticks
        )
        yield CounterMetricFamily(
            "softswitch_media_late_ticks",
            "Media clock ticks run late (the event loop was busy for more than 20 ms)",
            value=s.late_ticks,
        )
        yield CounterMetricFamily(
            "softswitch_media_tick_seconds", "Time spent in media clock ticks", value=s.tick_seconds
        )
        packets = CounterMetricFamily(
            "softswitch_media_engine_packets", "RTP packets of engine endpoints",
            labels=["direction"],
        )  # fmt: skip
        packets.add_metric(["in"], s.packets_in)
        packets.add_metric(["out"], s.packets_out)
        yield packets
        yield CounterMetricFamily(
            "softswitch_dtmf_digits", "DTMF digits received (RFC 4733, INFO, tones)", value=s.digits
        )
