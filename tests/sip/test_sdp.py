"""SDP parsing, serialization and the edits the B2BUA makes (RFC 4566, RFC 3264)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.sip.message import parse_message
from switch.sip.sdp import Connection, SdpError, parse_sdp

TORTURE = Path(__file__).parent.parent / "torture"

OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.168.1.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 8 0 101\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)


def test_round_trip_is_byte_exact_for_a_phone_offer() -> None:
    assert bytes(parse_sdp(OFFER)) == OFFER


def test_codecs_in_offered_order_and_rtpmap() -> None:
    (audio,) = parse_sdp(OFFER).media
    assert audio.codec_names() == ["PCMA", "PCMU", "TELEPHONE-EVENT"]
    assert audio.rtpmap()["101"] == ("telephone-event", 8000)


@pytest.mark.parametrize(
    ("formats", "rtpmaps", "voice"),
    [
        (b"8 0 101", b"", ("PCMA", 8000)),
        (b"101 13 0", b"a=rtpmap:101 telephone-event/8000\r\na=rtpmap:13 CN/8000\r\n",
         ("PCMU", 8000)),
        (b"96 0", b"a=rtpmap:96 opus/48000/2\r\n", ("OPUS", 48000)),
        (b"101", b"a=rtpmap:101 telephone-event/8000\r\n", None),
        (b"97", b"", None),  # a dynamic type without rtpmap names nothing
    ],
)  # fmt: skip
def test_voice_codec_skips_events_and_comfort_noise(
    formats: bytes, rtpmaps: bytes, voice: tuple[str, int] | None
) -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
    (audio,) = parse_sdp(body + b"m=audio 4000 RTP/AVP " + formats + b"\r\n" + rtpmaps).media
    assert audio.voice_codec() == voice


def test_relay_rewrite_changes_only_address_and_port() -> None:
    sdp = parse_sdp(OFFER)
    sdp.connection = Connection("127.0.0.1")
    sdp.media[0].port = 30000
    text = bytes(sdp)
    assert text == OFFER.replace(b"c=IN IP4 192.168.1.20", b"c=IN IP4 127.0.0.1").replace(
        b"49170", b"30000"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (b"a=sendrecv", "sendrecv"),
        (b"a=sendonly", "sendonly"),
        (b"a=recvonly", "recvonly"),
        (b"a=inactive", "inactive"),
    ],
)
def test_directions(edit: bytes, expected: str) -> None:
    sdp = parse_sdp(OFFER.replace(b"a=sendrecv", edit))
    assert sdp.direction(sdp.media[0]) == expected


def test_rfc2543_hold_and_session_level_direction() -> None:
    hold = parse_sdp(OFFER.replace(b"c=IN IP4 192.168.1.20", b"c=IN IP4 0.0.0.0"))
    assert hold.direction(hold.media[0]) == "sendonly"
    session_level = parse_sdp(
        OFFER.replace(b"a=sendrecv\r\n", b"").replace(b"t=0 0\r\n", b"t=0 0\r\na=recvonly\r\n")
    )
    assert session_level.direction(session_level.media[0]) == "recvonly"


def test_set_direction_and_keep_formats() -> None:
    sdp = parse_sdp(OFFER)
    audio = sdp.media[0]
    audio.set_direction("sendonly")
    audio.keep_formats(["0", "101"])
    text = bytes(sdp).decode()
    assert "m=audio 49170 RTP/AVP 0 101" in text
    assert "PCMA" not in text and "a=fmtp:101 0-16" in text
    assert text.count("a=sendonly") == 1 and "a=sendrecv" not in text


@pytest.mark.parametrize(
    "name", ["rfc5118-crlf/ipv6-in-sdp", "rfc5118-crlf/mult-ip-in-sdp", "rfc4475/wsinv.dat"]
)
def test_torture_bodies_parse_and_round_trip(name: str) -> None:
    body = parse_message((TORTURE / name).read_bytes()).body
    sdp = parse_sdp(body)
    assert bytes(parse_sdp(bytes(sdp))) == bytes(sdp)


def test_ipv6_and_per_media_connection() -> None:
    body = parse_message((TORTURE / "rfc5118-crlf/mult-ip-in-sdp").read_bytes()).body
    audio, video = parse_sdp(body).media
    assert audio.connection == Connection("192.0.2.1", "IP4")
    assert video.connection == Connection("2001:db8::1", "IP6")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"v=1\r\n",
        b"v=0\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\no=a b c\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\nc=IN IP4 h\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN XX h\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nbogus\r\n",
        b"\xff\xfe",
    ],
)
def test_bad_sdp_raises_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda tail: OFFER[: len(tail) % len(OFFER)] + tail))
def test_arbitrary_bodies_raise_only_sdp_error(body: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(body)
