"""The media path: RTP/RTCP relay (more to come: play, record, DTMF, mixing)."""

from media.config import RelayConfig
from media.ports import PortAllocator, PortsExhausted
from media.relay import Relay, RelaySession
from media.stats import LegStats, LocalMedia, MediaTimeout, RelayTotals, SessionStats, Side

__all__ = [
    "LegStats",
    "LocalMedia",
    "MediaTimeout",
    "PortAllocator",
    "PortsExhausted",
    "Relay",
    "RelayConfig",
    "RelaySession",
    "RelayTotals",
    "SessionStats",
    "Side",
]
