"""DTMF signalled out of band: RFC 4733 telephone-events and SIP INFO bodies.

The RFC 4733 cases start from real captures (the ones sipp plays, from package sip-tester)
and then lose, repeat and reorder their packets the way a network does.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.dtmf import DIGITS, Digit, EventReceiver, event_packets, info_body, parse_info
from tests.media.captures import CAPTURES, rtp_payloads

CAPTURED_KEYS = [*"0123456789", "star", "pound"]


def feed_all(receiver: EventReceiver, packets: list[tuple[int, bytes]]) -> list[Digit]:
    """Everything the receiver reports for these packets, then at the end of the stream."""
    digits = [d for ts, payload in packets if (d := receiver.feed(payload, ts)) is not None]
    while (d := receiver.flush()) is not None:
        digits.append(d)
    return digits


def press(key: str, ts: int, duration_ms: int = 100, **kw: int) -> list[tuple[int, bytes]]:
    return [(ts, payload) for payload, _ in event_packets(key, duration_ms, **kw)]


@pytest.mark.skipif(not CAPTURES.is_dir(), reason="sip-tester is not installed (scripts/test)")
@pytest.mark.parametrize("name", CAPTURED_KEYS)
def test_sipp_capture_is_one_press(name: str) -> None:
    packets = rtp_payloads(CAPTURES / f"dtmf_2833_{name}.pcap")
    key = {"star": "*", "pound": "#"}.get(name, name)
    assert len(packets) == 10  # 7 updates, 3 end packets
    assert feed_all(EventReceiver(), packets) == [Digit(key, 280, 10)]


def test_reported_at_first_end_packet_only() -> None:
    receiver = EventReceiver()
    reports = [receiver.feed(payload, 1234) for payload, _ in event_packets("7", 100)]
    assert reports == [None] * 4 + [Digit("7", 100, 10), None, None]


def test_lost_end_packets_reported_when_next_press_starts() -> None:
    first = press("1", 1000)[:-3]
    second = press("2", 5000)
    receiver = EventReceiver()
    assert [receiver.feed(p, ts) for ts, p in first] == [None] * 4
    assert receiver.feed(second[0][1], 5000) == Digit("1", 80, 10)  # longest duration seen
    assert feed_all(receiver, second[1:]) == [Digit("2", 100, 10)]


def test_lost_end_packets_of_last_press_reported_by_flush() -> None:
    assert feed_all(EventReceiver(), press("9", 1000)[:-3]) == [Digit("9", 80, 10)]


def test_only_one_end_packet_arrives() -> None:
    packets = press("3", 1000)
    assert feed_all(EventReceiver(), [packets[0], packets[-1]]) == [Digit("3", 100, 10)]


def test_duplicated_packets_count_once() -> None:
    packets = [p for pair in zip(press("4", 1000), press("4", 1000), strict=True) for p in pair]
    assert feed_all(EventReceiver(), packets + packets[-3:]) == [Digit("4", 100, 10)]


def test_reordered_packets_count_once() -> None:
    packets = press("5", 1000, 120)
    shuffled = [packets[1], packets[0], packets[3], packets[2], packets[5], packets[4]]
    shuffled += packets[6:]
    assert feed_all(EventReceiver(), shuffled) == [Digit("5", 120, 10)]


def test_late_packets_of_a_reported_press_are_dropped() -> None:
    first, second = press("6", 1000), press("8", 2000)
    # The network delays the end of "6" past the start of "8": "6" is reported when "8"
    # starts, then its own late packets change nothing.
    packets = first[:3] + second[:2] + first[3:] + second[2:]
    assert feed_all(EventReceiver(), packets) == [Digit("6", 60, 10), Digit("8", 100, 10)]


def test_same_key_twice_is_two_presses() -> None:
    packets = press("0", 1000) + press("0", 3000)
    assert feed_all(EventReceiver(), packets) == [Digit("0", 100, 10)] * 2


def test_new_press_already_ending_is_not_lost() -> None:
    # "1" lost its ends, "2" lost all but its ends: both complete on the first packet of "2".
    packets = press("1", 1000)[:2] + press("2", 5000)[-3:]
    receiver = EventReceiver()
    assert receiver.feed(packets[0][1], 1000) is None
    assert receiver.feed(packets[1][1], 1000) is None
    assert receiver.feed(packets[2][1], 5000) == Digit("1", 40, 10)
    assert receiver.feed(packets[3][1], 5000) == Digit("2", 100, 10)
    assert receiver.flush() is None


def test_timestamp_wraps_and_sender_restarts() -> None:
    near_end = 0xFFFFFFFF - 100
    packets = press("A", near_end) + press("B", 600) + press("C", 20) + press("D", 0xFFFFFF00)
    assert [d.digit for d in feed_all(EventReceiver(), packets)] == list("ABCD")


def test_long_press_in_segments_reported_once() -> None:
    """§2.5.1.3: a press longer than 0xFFFF units goes on in a new segment (new timestamp)."""
    start = 0xFFFF0000  # the second segment's timestamp wraps past 2**32
    step = 160
    packets = [(start, struct.pack("!BBH", 5, 10, d)) for d in range(step, 0xFFFF, step)]
    packets.append((start, struct.pack("!BBH", 5, 10, 0xFFFF)))
    second = (start + 0xFFFF) & 0xFFFFFFFF
    packets += [(second, struct.pack("!BBH", 5, 10, d)) for d in range(step, 8000, step)]
    packets += [(second, struct.pack("!BBH", 5, 0x80 | 10, 8000))] * 3
    packets.insert(-5, (start, struct.pack("!BBH", 5, 10, 0xFFFF)))  # a late one
    assert feed_all(EventReceiver(), packets) == [Digit("5", (0xFFFF + 8000) // 8, 10)]


@st.composite
def network(draw: st.DrawFn) -> tuple[list[str], list[tuple[int, bytes]]]:
    """Presses as sent, and their packets after random loss, duplication and local reordering.

    Each press keeps at least one packet (a press of which nothing arrives is not knowable).
    """
    presses = draw(st.lists(st.tuples(st.sampled_from(DIGITS), st.integers(20, 400)), max_size=8))
    ts = draw(st.integers(0, 0xFFFFFFFF))
    sent: list[str] = []
    packets: list[tuple[int, bytes]] = []
    for key, duration_ms in presses:
        mine = press(key, ts, duration_ms)
        kept = [p for p in mine if draw(st.booleans())] or [draw(st.sampled_from(mine))]
        packets += [p for p in kept for _ in range(draw(st.integers(1, 2)))]
        sent.append(key)
        ts = (ts + duration_ms * 8 + draw(st.integers(1, 2000))) & 0xFFFFFFFF
    for i in range(len(packets) - 1):
        if draw(st.booleans()) and draw(st.booleans()):
            packets[i], packets[i + 1] = packets[i + 1], packets[i]
    return sent, packets


@given(network())
def test_every_press_reported_once_whatever_the_network_does(
    case: tuple[list[str], list[tuple[int, bytes]]],
) -> None:
    sent, packets = case
    got = [d.digit for d in feed_all(EventReceiver(), packets)]
    assert sorted(got) == sorted(sent)


def test_bad_payloads_are_counted_not_raised() -> None:
    receiver = EventReceiver()
    bad = [b"", b"\x01", b"\x05\x8a\x00", bytes([16, 0x8A, 0, 160]), bytes([255, 0, 0, 0])]
    assert [receiver.feed(p, 1) for p in bad] == [None] * len(bad)
    assert receiver.bad == len(bad)
    assert feed_all(receiver, press("#", 9)) == [Digit("#", 100, 10)]


def test_longer_payload_uses_its_first_event() -> None:
    payload = event_packets("1", 20)[0][0] + b"\x00" * 4
    assert EventReceiver().feed(payload, 77) == Digit("1", 20, 10)


@pytest.mark.parametrize("key", DIGITS)
def test_event_packets_round_trip(key: str) -> None:
    packets = event_packets(key, 250, volume=7, ptime_ms=20)
    assert [marker for _, marker in packets] == [True] + [False] * 14
    assert [struct.unpack("!BBH", p) for p, _ in packets[:2]] == [
        (DIGITS.index(key), 7, 160),
        (DIGITS.index(key), 7, 320),
    ]
    assert {p for p, _ in packets[-3:]} == {struct.pack("!BBH", DIGITS.index(key), 0x87, 2000)}
    assert feed_all(EventReceiver(), [(42, p) for p, _ in packets]) == [Digit(key, 250, 7)]


def test_event_packets_short_press_and_options() -> None:
    assert event_packets("5", 10, end_repeats=1) == [(bytes([5, 0x8A, 0, 80]), True)]
    wide = event_packets("5", 100, rate=16000, ptime_ms=30)
    assert [struct.unpack("!BBH", p)[2] for p, _ in wide] == [480, 960, 1440, 1600, 1600, 1600]
    assert feed_all(EventReceiver(16000), [(0, p) for p, _ in wide]) == [Digit("5", 100, 10)]


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("x", {}),
        ("", {}),
        ("12", {}),
        ("1", {"duration_ms": 0}),
        ("1", {"duration_ms": 9000}),  # past 0xFFFF units at 8 kHz
        ("1", {"volume": 64}),
        ("1", {"volume": -1}),
        ("1", {"ptime_ms": 0}),
        ("1", {"end_repeats": 0}),
    ],
)
def test_event_packets_refuses_bad_input(key: str, options: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        event_packets(key, **options)


# SIP INFO


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", Digit("5", 160)),
        ("Application/DTMF-Relay; charset=x", b"signal = *\nduration= 250\n", Digit("*", 250)),
        ("application/dtmf-relay", b"Signal= #\rDuration=100", Digit("#", 100)),
        ("application/dtmf-relay", b"Signal=a\r\n", Digit("A", 0)),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=90\r\n", Digit("#", 90)),
        ("application/dtmf-relay", b"\r\nSIGNAL=0\r\nDURATION=x\r\n", Digit("0", 0)),
        ("application/dtmf-relay", b"Signal=1\r\nSignal=2\r\n", Digit("1", 0)),
        ("application/dtmf", b"5", Digit("5", 0)),
        ("application/dtmf", b" 10\r\n", Digit("*", 0)),
        ("application/dtmf", b"11", Digit("#", 0)),
        ("application/dtmf", b"D", Digit("D", 0)),
    ],
)
def test_parse_info(content_type: str, body: bytes, expected: Digit) -> None:
    assert parse_info(content_type, body) == expected


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", b""),
        ("application/dtmf-relay", b"Signal=\r\nDuration=160\r\n"),
        ("application/dtmf-relay", b"Signal=16\r\n"),
        ("application/dtmf-relay", b"Signal=55\r\n"),
        ("application/dtmf-relay", b"Signal=E\r\n"),
        ("application/dtmf-relay", b"Duration=160\r\n"),
        ("application/dtmf-relay", b"\xff\xfe\x00garbage=\x80\r\n"),
        ("application/dtmf-relay", b"Signal=\xb2\r\n"),  # a superscript two in latin-1
        ("application/dtmf-relay", b"Signal=5" + b" " * 2000),
        ("application/dtmf", b""),
        ("application/dtmf", b"12345"),
        ("application/dtmf", b"Signal=5"),
        ("application/sdp", b"Signal=5\r\n"),
        ("text/plain", b"5"),
        ("", b"5"),
    ],
)
def test_parse_info_ignores_what_is_not_dtmf(content_type: str, body: bytes) -> None:
    assert parse_info(content_type, body) is None


def test_parse_info_huge_duration_is_not_a_number() -> None:
    digit = parse_info("application/dtmf-relay", b"Signal=5\r\nDuration=" + b"9" * 5000)
    assert digit is None  # longer than any INFO body we read
    assert parse_info("application/dtmf-relay", b"Signal=5\r\nDuration=9999999") == Digit("5", 0)


@pytest.mark.parametrize("key", DIGITS)
def test_info_round_trip(key: str) -> None:
    relay = info_body(key, 200)
    assert relay == f"Signal={key}\r\nDuration=200\r\n".encode()
    assert parse_info("application/dtmf-relay", relay) == Digit(key, 200)
    plain = info_body(key, content_type="application/dtmf")
    assert parse_info("application/dtmf", plain) == Digit(key, 0)


def test_info_body_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="not a DTMF key"):
        info_body("E")
    with pytest.raises(ValueError, match="Content-Type"):
        info_body("5", content_type="text/plain")
    with pytest.raises(ValueError, match="negative"):
        info_body("5", -1)
