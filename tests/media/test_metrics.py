"""The relay's counters as Prometheus metrics (what /metrics shows)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from media import Side
from media.metrics import RelayCollector
from tests.media.conftest import MakeRelay, Phone, rtp


async def test_metrics_show_packets_loss_sessions_and_jitter(make_relay: MakeRelay) -> None:
    relay = make_relay()
    registry = CollectorRegistry()
    registry.register(RelayCollector(relay))
    a, b = Phone(), Phone()
    try:
        session = relay.allocate("call-1")
        session.set_remote(Side.A, *a.addr)
        session.set_remote(Side.B, *b.addr)
        local = session.local(Side.A)
        for seq in (1, 2, 3, 5):
            a.send(rtp(seq, seq * 160), (local.host, local.rtp_port))
            await b.recv()
        text = generate_latest(registry).decode()
        assert 'softswitch_rtp_packets_total{direction="in"} 4.0' in text
        assert 'softswitch_rtp_packets_total{direction="out"} 4.0' in text
        assert 'softswitch_rtp_bytes_total{direction="in"} 688.0' in text
        assert "softswitch_rtp_packets_lost_total 1.0" in text
        assert "softswitch_media_sessions 1.0" in text
        assert 'softswitch_media_port_pairs{state="in_use"} 2.0' in text
        session.close()
        text = generate_latest(registry).decode()
        assert 'softswitch_rtp_packets_total{direction="in"} 4.0' in text  # kept after close
        assert "softswitch_media_sessions 0.0" in text
        assert "softswitch_media_sessions_allocated_total 1.0" in text
        assert 'softswitch_rtp_jitter_ms_bucket{le="+Inf"} 1.0' in text
        assert 'softswitch_media_port_pairs{state="quarantine"} 2.0' in text
    finally:
        a.close()
        b.close()
