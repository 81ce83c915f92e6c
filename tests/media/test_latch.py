"""Symmetric RTP latching (sans-IO): who may send, where replies go, and the RTP Bleed rules.

Addresses follow RFC 5737 documentation ranges; nothing here touches a socket.
"""

from __future__ import annotations

from media.latch import Latch, normalize

SDP = ("192.0.2.10", 4000)  # what the phone wrote in its SDP
NAT = ("203.0.113.7", 61002)  # where its packets really come from
ATTACKER = ("198.51.100.66", 5555)
SSRC = 0x1234ABCD


def latch(window: float = 3.0, *, strict: bool = False, relatch: bool = True) -> Latch:
    new = Latch(window=window, strict=strict, relatch_on_ssrc=relatch)
    new.set_remote(SDP)
    return new


def test_sdp_address_is_the_destination_until_a_packet_teaches_better() -> None:
    lt = latch()
    assert (lt.dest, lt.source, lt.learning) == (SDP, None, True)


def test_phone_behind_nat_is_learned_from_its_first_packet() -> None:
    lt = latch()
    assert lt.admit(NAT, SSRC, now=100.0)
    assert (lt.source, lt.dest) == (NAT, NAT)


def test_exact_sdp_match_ends_learning_at_once() -> None:
    lt = latch()
    assert lt.admit(SDP, SSRC, now=100.0)
    assert not lt.learning
    assert not lt.admit(ATTACKER, 1, now=100.1)  # still inside the 3 s, but nothing ranks higher
    assert lt.dest == SDP


def test_within_the_window_only_a_better_match_takes_over() -> None:
    lt = latch()
    assert lt.admit(ATTACKER, 1, now=100.0)  # sprayed first: rank 0
    assert not lt.admit(("198.51.100.67", 6666), 2, now=100.5)  # another rank 0: refused
    assert lt.admit(("192.0.2.10", 61000), SSRC, now=101.0)  # SDP host, NATed port: rank 2
    assert lt.dest == ("192.0.2.10", 61000)
    assert not lt.admit(("203.0.113.9", 4000), 3, now=101.5)  # port only (rank 1) < 2
    assert lt.admit(SDP, SSRC, now=102.0)  # exact: rank 3
    assert lt.dest == SDP


def test_window_runs_from_the_first_packet_not_from_the_signalling() -> None:
    # A caller's phone may send nothing until the call is answered, long after its offer.
    lt = latch(window=3.0)
    assert lt.admit(NAT, SSRC, now=1000.0)
    assert lt.learning
    assert not lt.admit(ATTACKER, 1, now=1003.5)
    assert not lt.learning


def test_after_the_window_other_senders_are_refused() -> None:
    lt = latch(window=3.0)
    lt.admit(NAT, SSRC, now=100.0)
    assert not lt.admit(ATTACKER, 1, now=104.0)
    assert not lt.admit(SDP, 1, now=104.0)  # even the SDP address: the source is locked
    assert lt.dest == NAT


def test_nat_rebinding_is_followed_by_the_ssrc_of_the_locked_stream() -> None:
    lt = latch(window=3.0)
    lt.admit(NAT, SSRC, now=100.0)
    lt.ssrc = SSRC  # the relay keeps it up to date from the packets it forwards
    moved = ("203.0.113.7", 61500)
    assert not lt.admit(moved, 0xBAD, now=200.0)
    assert lt.admit(moved, SSRC, now=200.0)
    assert (lt.source, lt.dest, lt.relatches) == (moved, moved, 1)


def test_ssrc_relatching_can_be_switched_off() -> None:
    lt = latch(window=3.0, relatch=False)
    lt.admit(NAT, SSRC, now=100.0)
    lt.ssrc = SSRC
    assert not lt.admit(("203.0.113.7", 61500), SSRC, now=200.0)


def test_strict_source_accepts_the_sdp_address_only() -> None:
    lt = latch(strict=True)
    assert not lt.admit(NAT, SSRC, now=100.0)
    assert lt.dest == SDP
    assert lt.admit(SDP, SSRC, now=100.0)
    assert lt.source == SDP


def test_ssrc_from_sdp_must_match_before_anything_is_learned() -> None:
    lt = Latch(window=3.0, strict=False, relatch_on_ssrc=True)
    lt.set_remote(SDP, ssrc=SSRC)
    assert not lt.admit(ATTACKER, 0x5555, now=100.0)
    assert lt.admit(NAT, SSRC, now=100.1)


def test_reinvite_with_the_same_address_keeps_what_was_learned() -> None:
    lt = latch(window=3.0)
    lt.admit(NAT, SSRC, now=100.0)
    lt.set_remote(SDP)  # e.g. a re-INVITE for hold/unhold
    assert (lt.dest, lt.source, lt.learning) == (NAT, None, True)
    assert not lt.admit(ATTACKER, 1, now=500.0)  # rank 0 does not beat the incumbent
    assert lt.admit(NAT, SSRC, now=500.1)
    assert lt.source == NAT


def test_reinvite_with_a_new_address_starts_over() -> None:
    lt = latch(window=3.0)
    lt.admit(NAT, SSRC, now=100.0)
    moved = ("192.0.2.20", 5000)
    lt.set_remote(moved)
    assert (lt.dest, lt.source) == (moved, None)
    assert lt.admit(("203.0.113.8", 40000), SSRC, now=500.0)
    assert lt.dest == ("203.0.113.8", 40000)


def test_hold_with_no_address_stops_sending_but_keeps_the_sender() -> None:
    lt = latch()
    lt.admit(NAT, SSRC, now=100.0)
    lt.set_remote(normalize("0.0.0.0", 4000))  # RFC 3264 old-style hold
    assert lt.dest is None
    assert lt.source == NAT  # its music on hold is still relayed
    lt.set_remote(SDP)
    assert (lt.dest, lt.learning) == (SDP, True)


def fresh(window: float = 3.0) -> Latch:
    """A port's latch before its phone's first SDP is known."""
    return Latch(window=window, strict=False, relatch_on_ssrc=True)


def test_a_packet_before_the_first_sdp_is_learned_when_the_sdp_comes() -> None:
    # The callee answers and sends at once: its first packet may be read before its 200 OK.
    lt = fresh()
    assert not lt.admit(NAT, SSRC, now=100.0)  # nowhere to send it yet: dropped
    lt.set_remote(SDP, now=100.2)
    assert (lt.source, lt.dest, lt.learning) == (NAT, NAT, True)
    assert lt.admit(("192.0.2.10", 61000), SSRC, now=100.5)  # a better rank still wins...
    assert not lt.admit(("192.0.2.10", 61001), 7, now=103.1)  # ...in the window that began
    assert lt.dest == ("192.0.2.10", 61000)  # with the early packet, not with the SDP


def test_early_packets_are_ranked_and_an_exact_match_wins() -> None:
    lt = fresh()
    lt.admit(ATTACKER, 1, now=100.0)
    lt.admit(SDP, SSRC, now=100.1)
    lt.set_remote(SDP, now=100.2)
    assert (lt.dest, lt.learning) == (SDP, False)


def test_early_packets_older_than_the_window_are_forgotten() -> None:
    lt = fresh(window=3.0)
    lt.admit(ATTACKER, 1, now=100.0)
    lt.set_remote(SDP, now=103.5)
    assert (lt.source, lt.dest, lt.learning) == (None, SDP, True)
    assert lt.admit(NAT, SSRC, now=103.6)
    assert lt.dest == NAT


def test_early_packets_must_carry_the_ssrc_the_sdp_names() -> None:
    lt = fresh()
    lt.admit(ATTACKER, 0x5555, now=100.0)
    lt.set_remote(SDP, ssrc=SSRC, now=100.1)
    assert (lt.source, lt.dest) == (None, SDP)


def test_a_spray_before_the_sdp_keeps_only_a_few_sources() -> None:
    lt = fresh()
    for port in range(1000, 1100):
        lt.admit(("198.51.100.66", port), 1, now=100.0)
    lt.admit(SDP, SSRC, now=100.1)  # the phone, after the spray: not remembered
    lt.set_remote(SDP, now=100.2)
    assert lt.dest == ("198.51.100.66", 1000)  # a spray before the answer ranks like one after
    assert lt.admit(SDP, SSRC, now=100.3)  # and the phone's next packet still takes over
    assert lt.dest == SDP


def test_only_the_first_sdp_learns_from_earlier_packets() -> None:
    lt = latch()
    lt.admit(NAT, SSRC, now=100.0)
    lt.set_remote(normalize("0.0.0.0", 4000))  # hold: no destination
    assert not lt.admit(ATTACKER, 1, now=101.0)  # sprayed while the call is on hold
    lt.set_remote(("192.0.2.20", 5000), now=101.5)
    assert lt.source is None  # the spray was not remembered


def test_strict_source_learns_nothing_before_the_sdp() -> None:
    lt = Latch(window=3.0, strict=True, relatch_on_ssrc=True)
    assert not lt.admit(SDP, SSRC, now=100.0)
    lt.set_remote(SDP, now=100.1)
    assert lt.source is None
    assert lt.admit(SDP, SSRC, now=100.2)


def test_normalize_means_no_destination_for_hold_addresses() -> None:
    assert normalize("0.0.0.0", 4000) is None
    assert normalize("192.0.2.10", 0) is None
    assert normalize("192.0.2.10", 4000) == SDP
