"""Numbers the switch answers itself: their configuration, routing, Q.850 causes and SDP.

The pieces of call control (switch/b2bua/control.py) that need no call: a tenant's
``routes`` in the configuration, where a dialled or called number goes, the RFC 3398
tables between SIP statuses and Q.850 causes, and the SDP of media that ends at the switch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from media import LocalMedia
from switch.b2bua import endpoint_sdp
from switch.b2bua.q850 import Cause, cause_of, parse_reason
from switch.b2bua.routing import ToExtension, ToHandler, dialled
from switch.config import (
    AnswerHangup,
    Config,
    ConfigError,
    FollowMe,
    Menu,
    PlayPrompts,
    Supervise,
    Voicemail,
    load_config,
)
from switch.sip.sdp import SdpError, parse_sdp

ROUTES = """\
tenants:
  - name: acme
    domain: acme.example
    country: RU
    dids: {"+74951234567": 500}
    users:
      - {extension: "101", password: s3cret}
    routes:
      500: {handler: answer-hangup, seconds: 2}
      "501": {handler: follow-me, extension: 101}
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "softswitch.yaml"
    path.write_text(text)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problems of ``text``, as ``LINE: where: what``."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [f"{p.line}: {p.where}: {p.message}" for p in caught.value.problems]


def test_routes_and_a_did_that_points_at_one(tmp_path: Path) -> None:
    config = load(tmp_path, ROUTES)
    (acme,) = config.tenants
    assert acme.routes == {
        "500": AnswerHangup(handler="answer-hangup", seconds=2.0),
        "501": FollowMe(handler="follow-me", extension="101", timeout=20),
    }
    assert dialled(acme, "500") == ToHandler(acme, "500", acme.routes["500"])
    assert dialled(acme, "84951234567") == ToHandler(
        acme, "500", acme.routes["500"], did="+74951234567"
    )
    assert dialled(acme, "101") == ToExtension(acme, "101")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "handler: answer-hangup, ",
            "handler: echo, ",
            "routes.500.handler: unknown handler 'echo' (expected one of 'answer-hangup', "
            "'follow-me', 'prompt', 'menu', 'voicemail', 'supervise')",
        ),
        (
            "extension: 101}",
            "extension: 109}",
            "10: tenants[0].routes.501.extension: "
            "follow-me names unknown extension '109' (known: 101)",
        ),
        ('"501": {', '"101": {', "10: tenants[0].routes.101: route '101' is also an extension"),
        (
            "seconds: 2",
            "seconds: -1",
            "9: tenants[0].routes.500.seconds: got '-1' (expected a number greater than 0",
        ),
        ('"501"', '"5x1"', "'5x1' is not an extension"),
    ],
)
def test_route_mistakes_are_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in ROUTES
    (found,) = problems(tmp_path, ROUTES.replace(old, new, 1))
    assert expected in found


MEDIA_ROUTES = (
    ROUTES
    + """\
      "502": {handler: prompt, play: [greeting, goodbye], language: ru}
      "503": {handler: menu, prompt: greeting, choices: {"1": "101"}}
      "504": {handler: voicemail, extension: "101"}
"""
)


def test_media_routes_are_read_with_their_defaults(tmp_path: Path) -> None:
    routes = load(tmp_path, MEDIA_ROUTES).tenants[0].routes
    assert routes["502"] == PlayPrompts(handler="prompt", play=["greeting", "goodbye"],
                                        language="ru")  # fmt: skip
    menu = routes["503"]
    assert isinstance(menu, Menu)
    assert (menu.choices, menu.digits, menu.timeout, menu.tries) == ({"1": "101"}, 1, 5.0, 3)
    assert routes["504"] == Voicemail(handler="voicemail", extension="101")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("play: [greeting, goodbye]", "play: [greeting, godbye]",
         "11: tenants[0].routes.502.play[1]: no prompt 'godbye' in language 'ru' "
         "(did you mean goodbye?)"),
        ("prompt: greeting", "prompt: /nowhere/hello.wav",
         "12: tenants[0].routes.503.prompt: no WAV file '/nowhere/hello.wav'"),
        ('choices: {"1": "101"}', 'choices: {"1": "109"}',
         "12: tenants[0].routes.503.choices.1: menu names unknown extension '109'"),
        ("play: [greeting, goodbye]", "play: []",
         "11: tenants[0].routes.502.play: got a list (expected at least 1 item"),
    ],
)  # fmt: skip
def test_media_route_mistakes_are_named(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in MEDIA_ROUTES
    (found,) = problems(tmp_path, MEDIA_ROUTES.replace(old, new, 1))
    assert found.startswith(expected), found


def test_a_supervise_route_makes_the_tenant_supervised(tmp_path: Path) -> None:
    assert not load(tmp_path, ROUTES).tenants[0].supervised
    text = ROUTES + '      "555": {handler: supervise, mode: whisper}\n'
    (acme,) = load(tmp_path, text).tenants
    assert acme.supervised
    assert acme.routes["555"] == Supervise(handler="supervise", mode="whisper")
    (found,) = problems(tmp_path, text.replace("whisper", "spy"))
    assert "11: tenants[0].routes.555.mode: " in found, found
    assert "'listen', 'whisper' or 'barge'" in found, found


def test_routes_need_the_media_relay(tmp_path: Path) -> None:
    found = problems(tmp_path, "media: {relay: false}\n" + ROUTES)
    assert found == [
        "9: tenants[0].routes: routes need media.relay: true "
        "(the switch answers them with its own media)"
    ]


@pytest.mark.parametrize(
    ("status", "cause", "back"),
    [
        (486, Cause.USER_BUSY, 486),
        (404, Cause.UNALLOCATED_NUMBER, 404),
        (480, Cause.NO_USER_RESPONSE, 408),  # RFC 3398 maps each way on its own
        (603, Cause.CALL_REJECTED, 403),
        (503, Cause.TEMPORARY_FAILURE, 503),
        (408, Cause.RECOVERY_ON_TIMER_EXPIRY, 504),
        (599, Cause.INTERWORKING, 500),
    ],
)
def test_sip_status_and_q850_cause(status: int, cause: Cause, back: int) -> None:
    assert cause_of(status) is cause
    assert cause.status() == back


def test_reason_header_both_ways() -> None:
    assert Cause.NO_ANSWER.reason() == 'Q.850;cause=19;text="No answer"'
    assert parse_reason('SIP;cause=200, Q.850;cause=17;text="x"') is Cause.USER_BUSY
    assert parse_reason("SIP;cause=487") is None
    assert parse_reason("Q.850;cause=99") is None  # not one we name
    assert parse_reason(None) is None


LOCAL = LocalMedia("192.0.2.1", 30000, 30001)
OFFER = (
    b"v=0\r\no=p 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 18 0 8 96\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n"
    b"m=video 4002 RTP/AVP 97\r\n"
)


def test_answer_takes_the_phones_first_g711_and_refuses_other_streams() -> None:
    body, agreed = endpoint_sdp.answer(OFFER, LOCAL)
    desc = parse_sdp(body)
    audio, video = desc.media
    assert (audio.port, audio.formats, video.port) == (30000, ["0", "96"], 0)
    assert audio.attributes("rtcp") == ["30001"] and audio.own_direction() == "recvonly"
    assert desc.connection is not None and desc.connection.address == "192.0.2.1"
    assert (agreed.voice.name, agreed.host, agreed.port, agreed.held) == ("PCMU", "10.0.0.5",
                                                                         4000, True)  # fmt: skip
    assert agreed.events == endpoint_sdp.Format("96", "TELEPHONE-EVENT")
    _, preferred = endpoint_sdp.answer(OFFER, LOCAL, prefer="PCMA")
    assert preferred.voice.name == "PCMA"


def test_answer_refuses_an_offer_without_g711() -> None:
    with pytest.raises(SdpError, match=r"offered: G729; takes PCMU, PCMA"):
        endpoint_sdp.answer(OFFER.replace(b"18 0 8 96", b"18"), LOCAL)


def test_read_answer_takes_what_the_phone_chose_of_our_offer() -> None:
    offered = list(endpoint_sdp.DEFAULT_FORMATS)
    answer = OFFER.replace(b"18 0 8 96", b"8 101").replace(b"96 telephone", b"101 telephone")
    agreed = endpoint_sdp.read_answer(answer, offered)
    assert (agreed.voice.name, agreed.events) == ("PCMA", offered[2])
    with pytest.raises(SdpError, match="chose no codec that was offered"):
        endpoint_sdp.read_answer(OFFER.replace(b"18 0 8 96", b"18"), offered)


def test_a_dialled_phone_is_offered_the_callers_codec_first_then_the_other_law() -> None:
    Format = endpoint_sdp.Format
    pcmu, pcma = Format("0", "PCMU"), Format("8", "PCMA")
    events = Format("96", "TELEPHONE-EVENT", fmtp="0-15")
    assert endpoint_sdp.with_every_voice([pcmu, events]) == [pcmu, pcma, events]
    assert endpoint_sdp.with_every_voice([pcma]) == [pcma, pcmu]
    assert endpoint_sdp.with_every_voice([pcma, pcmu, events]) == [pcma, pcmu, events]
    # The static type is the caller's for something else: the law is not added.
    odd = Format("0", "PCMA")
    assert endpoint_sdp.with_every_voice([odd]) == [odd]
    assert endpoint_sdp.with_every_voice([]) == list(endpoint_sdp.DEFAULT_FORMATS)
