"""Transfer pieces without a network peer: Refer-To and Replaces (RFC 3515 §2.1, RFC 3891
§6.1), the SDP a transfer target is offered, and joining legs of two relay sessions."""

from __future__ import annotations

import pytest

from media import Relay, RelayConfig, Side
from switch.b2bua.media import RelayMedia
from switch.b2bua.transfer import TransferError, parse_refer_to, parse_replaces
from switch.sip.dialog import DialogId
from switch.sip.message import Request, parse_message
from switch.sip.sdp import SdpError, parse_sdp


def refer(*refer_to: str) -> Request:
    head = (
        "REFER sip:softswitch@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        "From: <sip:102@acme.example>;tag=b\r\nTo: <sip:101@acme.example>;tag=s\r\n"
        "Call-ID: c1\r\nCSeq: 7 REFER\r\n"
    )
    head += "".join(f"Refer-To: {value}\r\n" for value in refer_to)
    message = parse_message((head + "Content-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_blind_refer_to() -> None:
    target = parse_refer_to(refer("<sip:103@acme.example>"))
    assert (target.uri.user, target.uri.host, target.replaces) == ("103", "acme.example", None)


def test_attended_refer_to_as_pjsua_writes_it() -> None:
    value = (
        "<sip:103@acme.example?Replaces=abc%40host%3Bto-tag%3Dours%3Bfrom-tag%3Dtheirs"
        "&Require=replaces>"
    )
    replaces = parse_refer_to(refer(value)).replaces
    assert replaces is not None
    # RFC 3891 §3: to-tag is the tag of the recipient (us), from-tag the other end's
    assert replaces.dialog_id == DialogId("abc@host", "ours", "theirs")
    assert not replaces.early_only


@pytest.mark.parametrize(
    ("values", "status"),
    [
        ((), 400),  # RFC 3515 §2.4.1: exactly one Refer-To
        (("<sip:103@acme.example>", "<sip:104@acme.example>"), 400),
        (("<sip:103@acme.example",), 400),
        (("<tel:+4930123>",), 403),
        (("<sip:acme.example>",), 403),
        (("<sip:103@acme.example?method=BYE>",), 403),
        (("<sip:103@acme.example?Replaces=nocallid>",), 400),
    ],
)
def test_bad_refer_to_is_refused(values: tuple[str, ...], status: int) -> None:
    with pytest.raises(TransferError) as error:
        parse_refer_to(refer(*values))
    assert error.value.status == status


def test_replaces_header_with_early_only() -> None:
    replaces = parse_replaces("98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff;early-only")
    assert replaces.dialog_id == DialogId("98732@sip.example.com", "ff87ff", "r33th4x0r")
    assert replaces.early_only


def sdp(host: str, port: int, *formats: str) -> bytes:
    maps = {
        "0": "PCMU/8000",
        "8": "PCMA/8000",
        "101": "telephone-event/8000",
        "9": "G722/8000",
        "18": "G729/8000",
    }
    lines = [
        "v=0", f"o=- 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(formats)}",
        *(f"a=rtpmap:{pt} {maps[pt]}" for pt in formats),
    ]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n").encode()


async def test_the_target_is_offered_the_agreed_codecs_on_the_transferors_ports() -> None:
    relay = Relay(RelayConfig(port_min=41200, port_max=41300))
    try:
        media = RelayMedia(relay.allocate("call-t"))
        media.offer(sdp("192.0.2.10", 4000, "0", "8", "9", "101"))  # A offers four
        media.answer(sdp("192.0.2.20", 5000, "8", "101"))  # B takes PCMA
        offer = parse_sdp(media.offer_for(Side.B))
        (audio,) = offer.media
        assert audio.port == media.session.local(Side.B).rtp_port  # B's relay leg, for C
        assert audio.formats == ["8", "101"]  # only what A already agreed to
        media.retarget(Side.B, sdp("192.0.2.30", 6000, "8", "101"))
        assert media.session.stats().b.remote == ("192.0.2.30", 6000)
        assert media.session.stats().a.remote == ("192.0.2.10", 4000)  # A untouched
        # An INVITE with Replaces: its offer is answered from A's side, narrowed to it.
        answer = parse_sdp(media.answer_for(Side.B, sdp("192.0.2.40", 7000, "9", "0")))
        assert answer.media[0].formats == ["0", "9"]
        with pytest.raises(SdpError):
            media.answer_for(Side.B, sdp("192.0.2.40", 7000, "18"))
        media.close()
    finally:
        relay.close()


async def test_join_keeps_the_ports_and_releases_the_transferors_legs() -> None:
    relay = Relay(RelayConfig(port_min=41200, port_max=41300))
    try:
        first, second = relay.allocate("call-1"), relay.allocate("call-2")
        a_port, c_port = first.local(Side.A).rtp_port, second.local(Side.B).rtp_port
        assert relay.ports.in_use == 4
        joined = first.join(Side.A, second, Side.B)
        assert (joined.local(Side.A).rtp_port, joined.local(Side.B).rtp_port) == (a_port, c_port)
        assert first.closed and second.closed and not joined.closed
        assert relay.ports.in_use == 2
        assert relay.totals().sessions == 1
        with pytest.raises(RuntimeError):
            first.join(Side.A, joined, Side.B)
        joined.close()
        assert relay.ports.in_use == 0
    finally:
        relay.close()
