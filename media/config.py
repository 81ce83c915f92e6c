"""Settings of the RTP relay: what the `media:` section of softswitch.yaml turns into.

Every value has the default a small office wants; `RelayConfig()` runs a relay on loopback.
Validation happens here, once, so the hot path never re-checks a setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """How the relay binds, learns sources and times out calls.

    Times are seconds. Ports come in pairs: RTP on an even port, RTCP on the next odd one
    (RFC 3550 §11), so the range must hold at least one even port with its odd neighbour.
    """

    address: str = "127.0.0.1"  # the local address media sockets bind to
    advertise: str | None = None  # the address written into SDP (public IP behind 1:1 NAT)
    port_min: int = 30000
    port_max: int = 39999
    # A released pair rests this long before reuse, so late packets of a finished call can
    # never be learned as the source of the next call that gets the same ports.
    quarantine: float = 10.0
    # After each offer/answer, sources are learned for this long from the first packet on
    # (rtpengine's "delayed"/"heuristic" learning also uses 3 s). After it, the source is
    # locked and other senders are dropped (the RTP Bleed fix).
    latch_window: float = 3.0
    # Accept media only from the address the SDP names, never learn: for trunks with
    # fixed, known addresses. Breaks phones behind NAT.
    strict_source: bool = False
    # After the window, a new source is still accepted if it carries the SSRC of the locked
    # stream: the same phone after a NAT rebinding. An off-path attacker cannot guess it.
    relatch_on_ssrc: bool = True
    # A leg that sent RTP and then nothing for `timeout` s ends the call (rtpengine: timeout).
    timeout: float = 60.0
    # The same for a leg on hold, or one that never sent a packet (rtpengine: silent-timeout).
    silent_timeout: float = 3600.0
    # Forward latched RTP in the kernel (`media.kernel`, eBPF at tcx ingress): "auto" where the
    # kernel allows it (Linux 6.6+, CAP_BPF and CAP_NET_ADMIN), else in this process; "on"
    # refuses to start without it; "off" never.
    kernel: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        for name in ("address", "advertise"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                ip = ip_address(value)
            except ValueError:
                raise ValueError(f"media.{name}: {value!r} is not an IP address") from None
            if ip.version != 4:
                raise ValueError(f"media.{name}: {value!r}: IPv6 media is not supported yet")
        if ip_address(self.address).is_unspecified and self.advertise is None:
            raise ValueError(
                f"media.address {self.address} binds every interface: set media.advertise to "
                "the address phones should send to"
            )
        if not 1024 <= self.port_min <= self.port_max <= 65535:
            raise ValueError(
                f"media ports {self.port_min}-{self.port_max}: expected "
                "1024 <= port_min <= port_max <= 65535"
            )
        if self.pairs < 2:
            raise ValueError(
                f"media ports {self.port_min}-{self.port_max} hold {self.pairs} RTP/RTCP pair(s); "
                "a call needs 2 (one per leg)"
            )
        for name in ("quarantine", "latch_window", "timeout", "silent_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"media.{name} must not be negative")
        if self.kernel not in ("auto", "on", "off"):
            raise ValueError(f"media.kernel: {self.kernel!r} (expected auto, on or off)")
        if self.timeout == 0 or self.silent_timeout == 0:
            raise ValueError("media timeouts must be positive")

    @property
    def first_pair(self) -> int:
        """The lowest even port of the range."""
        return self.port_min + (self.port_min & 1)

    @property
    def pairs(self) -> int:
        """How many RTP (even) + RTCP (odd) pairs fit in the range."""
        return max(0, (self.port_max - self.first_pair + 1) // 2)

    @property
    def local_host(self) -> str:
        """The address this host's own media peers (media engine endpoints) use to reach the
        relay, and bind on."""
        return "127.0.0.1" if ip_address(self.address).is_unspecified else self.address

    @property
    def sdp_address(self) -> str:
        return self.advertise or self.address
