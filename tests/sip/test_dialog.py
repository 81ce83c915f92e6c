"""RFC 3261 §12 dialogs: created from an INVITE and its response on either side,
then used to build and check in-dialog requests. Messages follow the call
flow of RFC 3665 §3.2 (through a record-routing proxy)."""

from __future__ import annotations

import pytest

from switch.sip.dialog import Dialog, DialogId, DialogState, uac_id, uas_id
from switch.sip.message import Request, Response, parse_message

INVITE = """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP ss1.atlanta.example.com;branch=z9hG4bK2d4790.1
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101
Max-Forwards: 69
Record-Route: <sip:ss2.biloxi.example.com;lr>
Record-Route: <sip:ss1.atlanta.example.com;lr>
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com;transport=tcp>
Content-Length: 0

"""

OK = """\
SIP/2.0 200 OK
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101
Record-Route: <sip:ss2.biloxi.example.com;lr>
Record-Route: <sip:ss1.atlanta.example.com;lr>
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=314159
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:bob@client.biloxi.example.com>
Content-Length: 0

"""

ALICE_CONTACT = "<sip:alice@client.atlanta.example.com;transport=tcp>"
BOB_CONTACT = "<sip:bob@client.biloxi.example.com>"


def msg(text: str) -> Request | Response:
    return parse_message(text.replace("\n", "\r\n").encode())


def req(text: str) -> Request:
    m = msg(text)
    assert isinstance(m, Request)
    return m


def resp(text: str, status: int = 200, reason: str = "OK") -> Response:
    m = msg(text.replace("200 OK", f"{status} {reason}", 1))
    assert isinstance(m, Response)
    return m


def alice() -> Dialog:
    return Dialog.uac(req(INVITE), resp(OK))


def bob() -> Dialog:
    return Dialog.uas(req(INVITE), resp(OK), BOB_CONTACT)


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (
            alice,
            {
                "id": DialogId("3848276298220188511@atlanta.example.com", "9fxced76sl", "314159"),
                "local_seq": 1,
                "remote_seq": None,
                "remote_target": "sip:bob@client.biloxi.example.com",
                # §12.1.2: the UAC reverses the Record-Route of the response
                "route_set": ["sip:ss1.atlanta.example.com;lr", "sip:ss2.biloxi.example.com;lr"],
                "state": DialogState.CONFIRMED,
            },
        ),
        (
            bob,
            {
                "id": DialogId("3848276298220188511@atlanta.example.com", "314159", "9fxced76sl"),
                "local_seq": 0,
                "remote_seq": 1,
                "remote_target": "sip:alice@client.atlanta.example.com;transport=tcp",
                # §12.1.1: the UAS keeps the request's Record-Route in order
                "route_set": ["sip:ss2.biloxi.example.com;lr", "sip:ss1.atlanta.example.com;lr"],
                "state": DialogState.CONFIRMED,
            },
        ),
    ],
    ids=["uac", "uas"],
)
def test_dialog_state_from_invite_and_2xx(side: object, expected: dict[str, object]) -> None:
    assert callable(side)
    dialog: Dialog = side()
    assert dialog.id == expected["id"]
    assert dialog.local_seq == expected["local_seq"]
    assert dialog.remote_seq == expected["remote_seq"]
    assert str(dialog.remote_target) == expected["remote_target"]
    assert [str(r.uri) for r in dialog.route_set] == expected["route_set"]
    assert dialog.state is expected["state"]


def test_ids_of_messages_match_each_side() -> None:
    assert uac_id(resp(OK)) == alice().id
    bye_from_alice = alice().request("BYE")
    bye_from_alice.headers.add("Via", "SIP/2.0/UDP a;branch=z9hG4bKx")
    assert uas_id(req(bytes(bye_from_alice).decode().replace("\r\n", "\n"))) == bob().id
    assert uas_id(req(INVITE)) is None  # no To tag: not in a dialog


def test_early_dialog_confirmed_by_2xx_takes_its_route_set() -> None:
    ringing = resp(OK, 180, "Ringing")
    ringing.headers.remove("Record-Route")
    dialog = Dialog.uac(req(INVITE), ringing)
    assert dialog.state is DialogState.EARLY
    assert dialog.route_set == ()
    dialog.receive_response(resp(OK))
    assert dialog.state is DialogState.CONFIRMED
    assert len(dialog.route_set) == 2


def test_no_dialog_without_to_tag_or_from_a_final_error() -> None:
    no_tag = resp(OK.replace(";tag=314159", ""))
    with pytest.raises(ValueError, match="To tag"):
        Dialog.uac(req(INVITE), no_tag)
    with pytest.raises(ValueError, match="no dialog"):
        Dialog.uac(req(INVITE), resp(OK, 486, "Busy Here"))


# (side, method) → (Request-URI, Route values, From tag, To tag, CSeq, has Contact)
REQUESTS = [
    (alice, "BYE", "sip:bob@client.biloxi.example.com",
     ["<sip:ss1.atlanta.example.com;lr>", "<sip:ss2.biloxi.example.com;lr>"],
     "9fxced76sl", "314159", "2 BYE", False),
    (bob, "BYE", "sip:alice@client.atlanta.example.com;transport=tcp",
     ["<sip:ss2.biloxi.example.com;lr>", "<sip:ss1.atlanta.example.com;lr>"],
     "314159", "9fxced76sl", "1 BYE", False),
    (alice, "INVITE", "sip:bob@client.biloxi.example.com",
     ["<sip:ss1.atlanta.example.com;lr>", "<sip:ss2.biloxi.example.com;lr>"],
     "9fxced76sl", "314159", "2 INVITE", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("side", "method", "uri", "routes", "from_tag", "to_tag", "cseq", "contact"), REQUESTS
)
def test_in_dialog_request(
    side: object,
    method: str,
    uri: str,
    routes: list[str],
    from_tag: str,
    to_tag: str,
    cseq: str,
    contact: bool,
) -> None:
    assert callable(side)
    dialog: Dialog = side()
    request = dialog.request(method)
    assert request.uri == uri
    assert request.headers.values("Route") == routes
    assert request.from_.tag == from_tag
    assert request.to.tag == to_tag
    assert request.headers.get("CSeq") == cseq
    assert request.call_id == dialog.call_id
    assert request.headers.get("Max-Forwards") == "70"
    assert ("Contact" in request.headers) is contact


def test_ack_for_2xx_reuses_the_invite_cseq_number() -> None:
    dialog = alice()
    reinvite = dialog.request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.cseq.number == 2
    ack = dialog.ack(reinvite.cseq.number)
    assert ack.headers.get("CSeq") == "2 ACK"
    assert ack.uri == "sip:bob@client.biloxi.example.com"
    assert dialog.local_seq == 2  # the ACK takes no number of its own
    with pytest.raises(ValueError):
        dialog.request("ACK")


def test_strict_router_becomes_the_request_uri() -> None:
    strict = OK.replace("<sip:ss1.atlanta.example.com;lr>", "<sip:ss1.atlanta.example.com>")
    dialog = Dialog.uac(req(INVITE), resp(strict))
    bye = dialog.request("BYE")
    # §12.2.1.1: first route as Request-URI, remote target appended as last Route
    assert bye.uri == "sip:ss1.atlanta.example.com"
    assert bye.headers.values("Route") == [
        "<sip:ss2.biloxi.example.com;lr>",
        "<sip:bob@client.biloxi.example.com>",
    ]
    assert str(dialog.next_hop) == "sip:ss1.atlanta.example.com"


# (CSeq of the incoming request, method) → status to reject with, remote CSeq after
INCOMING = [
    (2, "BYE", None, 2),
    (1, "BYE", 500, 1),  # §12.2.2: lower than the last one seen
    (1, "ACK", None, 1),  # an ACK carries its INVITE's number
]


@pytest.mark.parametrize(("number", "method", "status", "after"), INCOMING)
def test_incoming_cseq_order(number: int, method: str, status: int | None, after: int) -> None:
    dialog = bob()
    request = req(
        INVITE.replace("CSeq: 1 INVITE", f"CSeq: {number} {method}")
        .replace("INVITE sip:", f"{method} sip:", 1)
        .replace(
            "<sip:bob@biloxi.example.com>\nCall", "<sip:bob@biloxi.example.com>;tag=314159\nCall"
        )
    )
    assert dialog.receive_request(request) == status
    assert dialog.remote_seq == after


def test_target_refresh_and_bye_end() -> None:
    dialog = bob()
    reinvite = req(
        INVITE.replace("CSeq: 1", "CSeq: 2").replace(
            "client.atlanta.example.com;transport=tcp>", "moved.atlanta.example.com>"
        )
    )
    assert dialog.receive_request(reinvite) is None
    assert str(dialog.remote_target) == "sip:alice@moved.atlanta.example.com"
    bye = req(INVITE.replace("CSeq: 1 INVITE", "CSeq: 3 BYE").replace("INVITE sip:", "BYE sip:"))
    assert dialog.receive_request(bye) is None
    assert dialog.state is DialogState.TERMINATED


@pytest.mark.parametrize("status", [408, 481])
def test_408_or_481_to_an_in_dialog_request_ends_the_dialog(status: int) -> None:
    dialog = alice()
    dialog.request("BYE")
    dialog.receive_response(resp(OK.replace("1 INVITE", "2 BYE"), status, "x"))
    assert dialog.state is DialogState.TERMINATED
