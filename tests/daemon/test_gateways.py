"""Gateways (trunk peers known by address) with real peers: DIDs in, outside numbers out.

A carrier is a sipp bound to an address of its own on the loopback network
(127.0.0.2 sends calls in; 127.0.0.3 and 127.0.0.4 take calls out), so the
daemon tells it from a phone by where its packets come from, as it must in
production. Phones are sipp with digest credentials, registered as in
test_calls.py. Each test checks what the far end saw and the call record.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switch.sip.digest import parse_challenge, respond
from tests.daemon.harness import USERS, Daemon, free_port
from tests.daemon.sipclient import Exchange, SipClient
from tests.daemon.sipp import run_sipp
from tests.daemon.test_calls import call, call_legs, callee, ok, records, register_callee

INBOUND = "127.0.0.2"  # the carrier's address for calls in
PRIMARY, SECONDARY = "127.0.0.3", "127.0.0.4"  # gateways for calls out, in this order
OTHER_SOURCE = "127.0.0.5"  # another address the inbound carrier sends from
DID = "+74951234567"  # acme's main number, rings 102
CALLER_ID = "+74951234500"


class Ports:
    def __init__(self) -> None:
        self.inbound = free_port(INBOUND, both=True)
        self.primary = free_port(PRIMARY, both=True)
        self.secondary = free_port(SECONDARY, both=True)


def with_gateways(ports: Ports, **inbound: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["gateways"] = [
            {"name": "carrier", "address": f"{INBOUND}:{ports.inbound}",
             "sources": [OTHER_SOURCE], **inbound},
            {"name": "primary", "address": f"{PRIMARY}:{ports.primary}"},
            {"name": "secondary", "address": f"{SECONDARY}:{ports.secondary}", "format": "e164"},
        ]  # fmt: skip
        acme = config["tenants"][0]
        acme.update(
            country="RU",
            gateways=["primary", "secondary"],
            caller_id=CALLER_ID,
            dids={DID: "102", "+74951234568": "103"},
        )

    return edit


def sent_invite(messages: Path) -> str:
    """The first INVITE in a sipp message trace (what the gateway received)."""
    text = messages.read_text(errors="replace")
    start = text.index("INVITE sip:")
    return text[start : text.index("\n\n", start)]


# -- inbound: a carrier calls a company number -------------------------------------------


def test_a_call_from_the_gateway_to_a_did_rings_its_extension(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()
    daemon = make_daemon(with_gateways(ports))
    port = register_callee(daemon, work)  # 102, which the DID rings
    with callee(daemon, work, "call_uas_answer.xml", port) as phone:
        carrier = run_sipp(
            "gateway_uac_call.xml", daemon.sip_port, work, local_ip=INBOUND,
            local_port=ports.inbound, keys={"callee": DID.removeprefix("+"),
                                            "caller": "+79161234567"},
        )  # fmt: skip
    assert ok(carrier), carrier
    assert ok(phone[0]), phone[0]
    assert daemon.metric("softswitch_sip_responses_total", code="407") == 0  # not challenged
    (row,) = records(daemon)
    assert (row["direction"], row["did"], row["tenant"]) == ("inbound", DID, "acme")
    assert (row["caller"], row["callee"]) == ("+79161234567", "102")  # P-Asserted-Identity
    assert (row["disposition"], row["hangup_by"]) == ("answered", "caller")


def gateway_invite(client: SipClient, daemon: Daemon, number: str) -> Exchange:
    data, branch = client.build(
        "INVITE", f"sip:{number}@127.0.0.1:{daemon.sip_port}",
        from_uri=f"sip:+79161234567@{client.local[0]}", to_uri=f"sip:{number}@127.0.0.1",
        call_id=f"{secrets.token_hex(8)}@carrier", cseq=1,
    )  # fmt: skip
    return client.transact(data, branch)


def test_a_call_from_the_gateway_to_an_unknown_number_gets_404(
    make_daemon: Callable[..., Daemon],
) -> None:
    ports = Ports()
    daemon = make_daemon(with_gateways(ports))
    with SipClient(daemon.sip_port, local_host=INBOUND, local_port=ports.inbound) as carrier:
        assert gateway_invite(carrier, daemon, "+74951230000").status == 404
        assert gateway_invite(carrier, daemon, "102").status == 404  # no extension by short number


def test_an_outsider_calling_a_did_is_challenged(make_daemon: Callable[..., Daemon]) -> None:
    ports = Ports()
    daemon = make_daemon(with_gateways(ports))
    # The right address with another port is not the gateway (UDP: address and port).
    with SipClient(daemon.sip_port, local_host=INBOUND) as outsider:
        exchange = gateway_invite(outsider, daemon, DID)
    assert exchange.status == 407, exchange.raw
    assert exchange.response is not None
    challenge = exchange.response.headers.get("Proxy-Authenticate") or ""
    assert 'realm="acme.example"' in challenge
    with SipClient(daemon.sip_port) as outsider:
        assert gateway_invite(outsider, daemon, "+74951230000").status == 404  # not ours at all


def test_the_gateway_call_limit_gives_503_with_a_reason(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()
    daemon = make_daemon(with_gateways(ports, max_calls=1))
    port = register_callee(daemon, work)
    with (
        callee(daemon, work, "call_uas_ring.xml", port) as phone,
        SipClient(daemon.sip_port, local_host=OTHER_SOURCE) as carrier,
    ):
        first = {"from_uri": "sip:+79161234567@carrier.example", "call_id": "first@carrier",
                 "to_uri": f"sip:{DID}@127.0.0.1", "cseq": 1}  # fmt: skip
        data, branch = carrier.build("INVITE", f"sip:{DID}@127.0.0.1", **first)
        carrier.send(data)
        _wait_for(carrier, b"SIP/2.0 180 ")  # the first call rings 102
        second = gateway_invite(carrier, daemon, "+74951234568")
        cancel, own_branch = carrier.build("CANCEL", f"sip:{DID}@127.0.0.1", **first)
        cancel = cancel.replace(own_branch.encode(), branch.encode())  # §9.1: the INVITE's
        assert carrier.transact(cancel, branch).status == 200
    assert second.status == 503, second.raw
    assert second.response is not None
    assert "Call limit of gateway carrier" in (second.response.headers.get("Reason") or "")
    assert ok(phone[0]), phone[0]


def _wait_for(client: SipClient, start: bytes, timeout: float = 5.0) -> bytes:
    for _ in range(20):
        data = client.recv(timeout / 20)
        if data is not None and data.startswith(start):
            return data
    raise AssertionError(f"no {start!r} within {timeout} s")


# -- outbound: a phone calls an outside number ---------------------------------------------


def test_a_phone_calls_out_through_the_gateway_in_e164_with_the_caller_id(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()
    daemon = make_daemon(with_gateways(ports))
    trace = work / "primary.log"
    with callee(daemon, work, "call_uas_answer.xml", ports.primary, local_ip=PRIMARY,
                messages=trace) as gateway:  # fmt: skip
        # 8-10 is Russia's international prefix: 8 10 44 20 7946 0958 is +44 20 7946 0958
        phone = call(daemon, work, "call_uac_bye.xml", callee="810442079460958")
    assert ok(phone), phone
    assert ok(gateway[0]), gateway[0]
    invite = sent_invite(trace)
    assert invite.startswith(f"INVITE sip:+442079460958@{PRIMARY}:{ports.primary} SIP/2.0")
    (from_,) = [line for line in invite.splitlines() if line.startswith("From:")]
    assert f"sip:{CALLER_ID}@acme.example" in from_ and "101" not in from_, from_
    (row,) = records(daemon)
    assert (row["direction"], row["caller"], row["callee"]) == ("outbound", "101", "+442079460958")
    assert (row["did"], row["disposition"]) == (CALLER_ID, "answered")


def test_a_gateway_answering_503_fails_over_to_the_next(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()
    daemon = make_daemon(with_gateways(ports))
    trace = work / "secondary.log"
    with (
        callee(daemon, work, "gateway_uas_503.xml", ports.primary, local_ip=PRIMARY) as first,
        callee(daemon, work, "call_uas_answer.xml", ports.secondary, local_ip=SECONDARY,
               messages=trace) as second,
    ):  # fmt: skip
        phone = call(daemon, work, "call_uac_bye.xml", callee="84991234567")
    assert ok(phone), phone
    assert ok(first[0]), first[0]
    assert ok(second[0]), second[0]
    # the secondary wants E.164 without '+', in the From as well
    invite = sent_invite(trace)
    assert invite.startswith(f"INVITE sip:74991234567@{SECONDARY}:{ports.secondary} SIP/2.0")
    assert f"<sip:{CALLER_ID.removeprefix('+')}@acme.example>" in invite
    (row,) = records(daemon)
    assert (row["disposition"], row["callee"]) == ("answered", "+74991234567")
    legs = call_legs(daemon, row["call_id"])
    assert [(leg["status"], leg["address"]) for leg in legs[1:]] == [
        (503, f"udp:{PRIMARY}:{ports.primary}"),
        (200, f"udp:{SECONDARY}:{ports.secondary}"),
    ]


def test_a_busy_number_is_not_tried_on_the_next_gateway(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()  # nothing listens on the secondary: trying it would time out
    daemon = make_daemon(with_gateways(ports))
    with callee(daemon, work, "call_uas_busy.xml", ports.primary, local_ip=PRIMARY) as gateway:
        phone = call(daemon, work, "call_uac_486.xml", callee="84991234567")
    assert ok(phone), phone
    assert ok(gateway[0]), gateway[0]
    (row,) = records(daemon)
    assert len(call_legs(daemon, row["call_id"])) == 2  # the caller's and one gateway's


def authenticated_invite(client: SipClient, daemon: Daemon, dialled: str) -> Exchange:
    """A phone's INVITE to ``dialled``, answering the 407; the final response is ACKed."""
    call_id, uri = f"{secrets.token_hex(8)}@phone", f"sip:{dialled}@acme.example"
    exchange: Exchange | None = None
    headers: list[str] = []
    for cseq in (1, 2):
        data, branch = client.build(
            "INVITE", uri, from_uri="sip:101@acme.example", to_uri=uri, call_id=call_id,
            cseq=cseq, headers=headers,
        )  # fmt: skip
        exchange = client.transact(data, branch)
        assert exchange.response is not None, f"no answer to {dialled}"
        to = exchange.response.headers.get("To")
        ack = data.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"ACK sip", 1)
        ack = ack.replace(f"CSeq: {cseq} INVITE".encode(), f"CSeq: {cseq} ACK".encode())
        ack = ack.replace(f"To: <{uri}>".encode(), f"To: {to}".encode())
        client.send(ack + b"\r\n\r\n")  # §17.1.1.3
        if exchange.status != 407:
            break
        (challenge,) = [
            parse_challenge(value)
            for value in exchange.response.headers.values("Proxy-Authenticate")
            if "MD5" in value
        ]
        credentials = respond(
            challenge, method="INVITE", uri=uri, username="101", password=USERS["101"],
            cnonce=secrets.token_hex(8),
        )  # fmt: skip
        headers = [f"Proxy-Authorization: {credentials.header_value()}"]
    assert exchange is not None
    return exchange


def test_a_number_that_cannot_be_normalised_gets_484(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(with_gateways(Ports()))
    with SipClient(daemon.sip_port) as phone:
        assert authenticated_invite(phone, daemon, "5").status == 484
        assert authenticated_invite(phone, daemon, "84951").status == 484


def test_a_tenant_without_gateways_has_no_route_out(make_daemon: Callable[..., Daemon]) -> None:
    def no_gateways(config: dict[str, Any]) -> None:
        config["tenants"][0]["country"] = "RU"

    daemon = make_daemon(no_gateways)
    with SipClient(daemon.sip_port) as phone:
        exchange = authenticated_invite(phone, daemon, "84991234567")
    assert exchange.status == 403, exchange.raw
    assert (
        exchange.response is not None and exchange.response.reason == "No route to outside numbers"
    )
