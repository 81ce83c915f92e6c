"""B2BUA pieces without a network peer: the caller's final response when every fork
failed (after RFC 3261 §16.7 step 6), and SDP through a relay session."""

from __future__ import annotations

import pytest

from media import Relay, RelayConfig, Side
from switch.b2bua.forks import best_failure
from switch.b2bua.media import RelayMedia
from switch.sip.sdp import SdpError, parse_sdp

# statuses of the forks → the status for the caller
CASES = [
    ([486], 486),
    ([480, 486], 486),  # one phone busy, one gone: the caller hears busy
    ([408, 404], 404),  # a fork that never answered says least
    ([408, 408], 408),
    ([603, 486], 603),  # a 6xx is definitive
    ([503, 480], 480),
    ([], 480),
]


@pytest.mark.parametrize(("statuses", "expected"), CASES)
def test_best_failure(statuses: list[int], expected: int) -> None:
    assert best_failure(statuses) == expected


OFFER = (
    b"v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 101\r\na=rtcp:4001\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"m=video 4002 RTP/AVP 96\r\n"
)


async def test_relay_media_points_each_phone_at_its_own_leg() -> None:
    relay = Relay(RelayConfig(port_min=41000, port_max=41100))
    try:
        media = RelayMedia(relay.allocate("call-1"))
        a, b = media.session.local(Side.A), media.session.local(Side.B)
        offer = parse_sdp(media.offer(OFFER))
        # the callee sends to leg B's ports; the caller's address is the relay's secret
        assert offer.connection is not None and offer.connection.address == b.host
        assert offer.origin[5] == b.host
        audio, video = offer.media
        assert (audio.port, audio.attributes("rtcp")) == (b.rtp_port, [str(b.rtcp_port)])
        assert audio.attributes("rtpmap") == ["101 telephone-event/8000"]
        assert video.port == 0  # one relayed stream per call (RFC 3264 §6: refused)
        answer = parse_sdp(media.answer(OFFER.replace(b"192.0.2.10", b"192.0.2.20")))
        assert answer.media[0].port == a.rtp_port
        with pytest.raises(SdpError):
            media.answer(b"v=0\r\no=x 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n")
        media.close()
        assert media.session.closed
    finally:
        relay.close()


def held(media: RelayMedia) -> tuple[bool, bool]:
    stats = media.session.stats()
    return stats.a.on_hold, stats.b.on_hold


async def test_relay_media_keeps_the_direction_and_marks_a_held_call() -> None:
    """RFC 3264 §8.4: hold by a=sendonly / c=0.0.0.0, passed through; the relay's
    media timeout must spare both legs until a sendrecv offer resumes the call."""
    relay = Relay(RelayConfig(port_min=41000, port_max=41100))
    try:
        media = RelayMedia(relay.allocate("call-2"))
        media.offer(OFFER)
        assert held(media) == (False, False)
        hold = OFFER.replace(b"a=rtcp:4001\r\n", b"a=rtcp:4001\r\na=sendonly\r\n")
        offer = parse_sdp(media.offer(hold))
        assert offer.media[0].own_direction() == "sendonly"
        assert held(media) == (True, True)
        answer = parse_sdp(media.answer(hold.replace(b"a=sendonly", b"a=recvonly")))
        assert answer.media[0].own_direction() == "recvonly"
        assert held(media) == (True, True)
        media.answer(OFFER)  # the callee resumes
        assert held(media) == (False, False)
        old_style = OFFER.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0")
        media.offer(old_style)  # RFC 2543 hold
        assert held(media) == (True, True)
        media.close()
    finally:
        relay.close()
