"""The port pool (sans-IO) and the relay settings that feed it."""

from __future__ import annotations

import random

import pytest

from media import PortAllocator, PortsExhausted, RelayConfig


def pool(pairs: int = 4, quarantine: float = 10.0) -> PortAllocator:
    return PortAllocator(30000, pairs, quarantine, rng=random.Random(7))


def test_pairs_are_even_rtp_ports_within_the_range() -> None:
    ports = pool(pairs=50)
    taken = [ports.take(0.0) for _ in range(50)]
    assert sorted(taken) == list(range(30000, 30100, 2))
    assert all(port % 2 == 0 for port in taken)
    assert ports.in_use == 50


def test_order_is_not_predictable_from_the_range() -> None:
    # RTP Bleed scanners try likely ports first: the next call's ports must not be guessable.
    ports = PortAllocator(30000, 50, 0)  # system randomness, as the relay uses it
    sequence = [ports.take(0.0) for _ in range(50)]
    assert sequence != sorted(sequence)  # by chance: 1 in 50!


def test_exhaustion_names_the_range_and_what_holds_it() -> None:
    ports = pool(pairs=2, quarantine=5)
    first = ports.take(0.0)
    ports.take(0.0)
    ports.release(first, 1.0)
    with pytest.raises(PortsExhausted) as raised:
        ports.take(2.0)
    message = str(raised.value)
    assert "30000-30003" in message
    assert "1 pairs in use" in message
    assert "1 resting" in message
    assert "media.port_min/port_max" in message


def test_released_pair_rests_in_quarantine_then_comes_back() -> None:
    ports = pool(pairs=1, quarantine=10)
    port = ports.take(0.0)
    ports.release(port, 100.0)
    assert ports.resting(105.0) == 1
    with pytest.raises(PortsExhausted):
        ports.take(109.9)
    assert ports.take(110.0) == port
    assert ports.bound(port) and ports.bound(port + 1)


def test_reuse_is_first_released_first_out_after_fresh_pairs() -> None:
    ports = pool(pairs=3, quarantine=0)
    a, b = ports.take(0.0), ports.take(0.0)
    ports.release(b, 1.0)
    ports.release(a, 2.0)
    fresh = ports.take(3.0)
    assert fresh not in (a, b)  # a never-used pair goes before any released one
    assert [ports.take(3.0), ports.take(3.0)] == [b, a]


def test_bound_is_about_pairs_in_use_not_the_range() -> None:
    ports = pool(pairs=2)
    port = ports.take(0.0)
    other = 30002 if port == 30000 else 30000
    assert ports.bound(port) and ports.bound(port + 1)
    assert not ports.bound(other)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"port_min": 30000, "port_max": 30002}, "hold 1 RTP/RTCP pair(s); a call needs 2"),
        ({"port_min": 40000, "port_max": 30000}, "port_min <= port_max"),
        ({"port_min": 80, "port_max": 1000}, "1024 <= port_min"),
        ({"address": "pbx.example"}, "'pbx.example' is not an IP address"),
        ({"address": "::1"}, "IPv6 media is not supported yet"),
        ({"address": "0.0.0.0"}, "set media.advertise"),
        ({"timeout": 0}, "timeouts must be positive"),
        ({"latch_window": -1}, "latch_window must not be negative"),
    ],
)
def test_config_errors_say_what_to_change(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        RelayConfig(**fields)  # type: ignore[arg-type]


def test_config_range_counts_whole_pairs() -> None:
    config = RelayConfig(port_min=30001, port_max=30010)
    assert (config.first_pair, config.pairs) == (30002, 4)  # 30002/3 ... 30008/9; 30010 alone
    assert RelayConfig(address="0.0.0.0", advertise="203.0.113.10").sdp_address == "203.0.113.10"
