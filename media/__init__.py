"""The media path: the RTP/RTCP relay, and the media engine (prompts, DTMF, recording, mixing).

Importing it holds BLAS to one thread (unless the environment says otherwise), before NumPy
loads: the engine's NumPy work is small matrices on the event loop's thread, and a thread
pool per process would only compete with the loop, and with other processes.
"""

import os

for _blas in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas, "1")

from media.api import RelayLike, RelaySessionLike
from media.config import RelayConfig
from media.ports import PortAllocator, PortsExhausted
from media.relay import Relay, RelaySession
from media.stats import (
    LegStats,
    LocalMedia,
    MediaTimeout,
    RelayTotals,
    SessionStats,
    Side,
    StatsCell,
)

__all__ = [
    "LegStats",
    "LocalMedia",
    "MediaTimeout",
    "PortAllocator",
    "PortsExhausted",
    "Relay",
    "RelayConfig",
    "RelayLike",
    "RelaySession",
    "RelaySessionLike",
    "RelayTotals",
    "SessionStats",
    "Side",
    "StatsCell",
]
