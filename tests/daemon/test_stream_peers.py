"""Calls to TCP peers the switch must connect to itself (RFC 3261 §18.1.1, §8.1.3.1).

A gateway with ``transport: tcp`` is a sipp listening on TCP (``-t t1``) on
an address of its own, as in test_gateways.py: the switch opens the
connection for the INVITE. A gateway whose port is closed fails at once
(a transport error is a 503 made by the switch) and the call goes to the
next gateway, long before Timer B. A phone registered over TCP is reached
over the connection it keeps, and when that is gone, at its Contact.
"""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switch.sip.message import Response, parse_message
from tests.daemon.baresip_phone import Baresip, Phones
from tests.daemon.conftest import require
from tests.daemon.harness import Daemon, free_port, self_signed
from tests.daemon.sipclient import SipClient
from tests.daemon.sipp import run_sipp
from tests.daemon.test_calls import (
    CALLEE,
    call,
    call_legs,
    callee,
    ok,
    pjsua_call,
    records,
    register_callee,
    require_module,
    states,
)
from tests.daemon.test_gateways import (
    DID,
    INBOUND,
    PRIMARY,
    SECONDARY,
    Ports,
    sent_invite,
    with_gateways,
)
from tests.daemon.test_phone_audio import tone_file

TIMER_B = 64 * 0.5  # the test daemon's T1 is the default


def tcp_primary(ports: Ports) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        with_gateways(ports)(config)
        config["gateways"][1]["transport"] = "tcp"

    return edit


def test_an_outside_call_reaches_a_tcp_gateway_over_a_connection_the_switch_opens(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()
    daemon = make_daemon(tcp_primary(ports))
    trace = work / "primary.log"
    with callee(daemon, work, "call_uas_answer.xml", ports.primary, local_ip=PRIMARY,
                transport="t1", messages=trace) as gateway:  # fmt: skip
        phone = call(daemon, work, "call_uac_bye.xml", callee="84991234567")
    assert ok(phone), phone
    assert ok(gateway[0]), gateway[0]
    invite = sent_invite(trace)
    assert invite.startswith(
        f"INVITE sip:+74991234567@{PRIMARY}:{ports.primary};transport=tcp SIP/2.0"
    ), invite
    # sent-by is where we listen for TCP; the Contact says TCP (§18.1.1, §8.1.1.8)
    assert f"Via: SIP/2.0/TCP 127.0.0.1:{daemon.tcp_port};branch=" in invite, invite
    assert f"Contact: <sip:127.0.0.1:{daemon.tcp_port};transport=tcp>" in invite, invite
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("answered", "caller")
    legs = call_legs(daemon, row["call_id"])
    assert [(leg["status"], leg["address"]) for leg in legs[1:]] == [
        (200, f"tcp:{PRIMARY}:{ports.primary}")
    ]
    (connected,) = daemon.events_named("connected")
    assert (connected["host"], connected["port"]) == (PRIMARY, ports.primary)


def test_a_tcp_gateway_that_refuses_the_connection_fails_over_at_once(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    ports = Ports()  # nothing listens on the primary's TCP port
    daemon = make_daemon(tcp_primary(ports))
    with callee(daemon, work, "call_uas_answer.xml", ports.secondary, local_ip=SECONDARY) as second:
        phone = call(daemon, work, "call_uac_bye.xml", callee="84991234567")
    assert ok(phone), phone
    assert ok(second[0]), second[0]
    (row,) = records(daemon)
    assert row["disposition"] == "answered"
    # A functional bound, not a speed goal: the failure is known when the connect fails,
    # not when Timer B (32 s) gives up on an INVITE that never left.
    assert row["answered_at"] - row["started_at"] < 5.0 < TIMER_B, row
    legs = call_legs(daemon, row["call_id"])
    assert [(leg["status"], leg["address"]) for leg in legs[1:]] == [
        (503, f"tcp:{PRIMARY}:{ports.primary}"),
        (200, f"udp:{SECONDARY}:{ports.secondary}"),
    ]
    (error,) = daemon.events_named("transport error")
    assert error["method"] == "INVITE" and "ConnectionRefused" in error["error"], error


def test_a_phone_registered_over_tcp_gets_its_call_over_the_connection_it_keeps(
    daemon: Daemon, work: Path
) -> None:
    require_module("pjsua2")
    phones = pjsua_call(daemon, work, callee_args=("--transport", "tcp"))
    alice_out, bob_out = phones.caller_out, phones.callee_out
    assert states(alice_out) == ["registered", "confirmed", "disconnected"], (alice_out, bob_out)
    assert states(bob_out) == ["registered", "confirmed", "disconnected"], bob_out
    log = (work / "pjsua-102.log").read_text(errors="replace")
    assert "INVITE sip:102@127.0.0.1" in log and "transport=tcp" in log.lower()
    assert daemon.events_named("connected") == []  # the phone's own connection, none of ours


def invite_2xx_received(pjsua_log: str) -> list[str]:
    """The 2xx responses to INVITE a pjsua phone logged as received."""
    return re.findall(r"RX \d+ bytes Response msg 2\d\d/INVITE/cseq=\d+", pjsua_log)


def test_two_phones_over_tcp_talk_and_each_2xx_is_acked_once(daemon: Daemon, work: Path) -> None:
    # Both phones on TCP: our 2xx to the caller now waits for its ACK as over UDP
    # (§13.3.1.4), and a real phone's ACK stops it: no 2xx goes twice, nothing times out.
    require_module("pjsua2")
    tcp = ("--transport", "tcp")
    phones = pjsua_call(daemon, work, callee_args=tcp, caller_args=tcp)
    assert states(phones.caller_out) == ["registered", "confirmed", "disconnected"], phones
    assert states(phones.callee_out) == ["registered", "confirmed", "disconnected"], phones
    caller_log = (work / "pjsua-101.log").read_text(errors="replace")
    assert "SIP/2.0/TCP" in caller_log
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("answered", "caller"), row
    assert daemon.events_named("no ACK from the caller") == []
    assert len(invite_2xx_received(caller_log)) == 1, caller_log


def test_a_phone_whose_tcp_connection_is_gone_is_called_at_its_contact(
    daemon: Daemon, work: Path
) -> None:
    port = free_port(both=True)
    registered = run_sipp(
        "register.xml", daemon.tcp_port, work, users=[CALLEE], local_port=port, transport="t1"
    )
    assert registered.returncode == 0 and registered.successful == 1, registered
    # sipp has exited: its connection is closed, the binding (transport tcp) stays.
    assert daemon.registrations() == 1
    with callee(daemon, work, "call_uas_answer.xml", port, transport="t1") as phone:
        caller = call(daemon, work, "call_uac_bye.xml")
    assert ok(caller), caller
    assert ok(phone[0]), phone[0]
    (connected,) = daemon.events_named("connected")
    assert (connected["transport"], connected["port"]) == ("tcp", port)


def offer(host: str, port: int) -> bytes:
    return (
        f"v=0\r\no=carrier 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


def accept_answer(
    listener: socket.socket, call_id: str, timeout: float = 5.0
) -> tuple[SipClient, Response]:
    """The next connection the switch opens to ``listener``, and the 2xx it carried."""
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    client = SipClient(0, "tcp", sock=conn)
    raw = client.recv(timeout)
    assert raw is not None, "the switch connected but sent nothing"
    answer = parse_message(raw)
    assert isinstance(answer, Response) and answer.status == 200, raw
    assert answer.headers.get("Call-ID") == call_id, raw
    return client, answer


def test_a_2xx_whose_tcp_connection_broke_is_resent_over_a_new_one_until_acked(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    # A carrier over TCP calls a DID and drops its connection while the phone rings; then it
    # drops the switch's new connection too, with our 2xx unacknowledged. The 2xx goes again
    # (§13.3.1.4: whatever the transport) over yet another connection to the Via's sent-by
    # (§18.2.2), where the ACK and the BYE finally come from.
    ports = Ports()
    daemon = make_daemon(with_gateways(ports, transport="tcp"))
    port = register_callee(daemon, work)  # 102, which the DID rings
    call_id = f"{secrets.token_hex(8)}@carrier"
    sent_by = f"{INBOUND}:{ports.inbound}"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener,
        callee(daemon, work, "call_uas_answer_late.xml", port) as phone,
    ):
        listener.bind((INBOUND, ports.inbound))
        listener.listen()
        with SipClient(daemon.tcp_port, "tcp", local_host=INBOUND) as carrier:
            invite, _ = carrier.build(
                "INVITE", f"sip:{DID}@127.0.0.1:{daemon.tcp_port};transport=tcp",
                from_uri=f"sip:+79161234567@{INBOUND}", to_uri=f"sip:{DID}@127.0.0.1",
                call_id=call_id, cseq=1, headers=["Content-Type: application/sdp"],
                body=offer(INBOUND, free_port(INBOUND, both=True)),
            )  # fmt: skip
            # Via (and Contact) name the carrier's listening port, not this connection's.
            own = f"{carrier.local[0]}:{carrier.local[1]}"
            carrier.send(invite.replace(own.encode(), sent_by.encode()))
            ringing = carrier.recv(5.0)
            while ringing is not None and b" 180 " not in ringing.split(b"\r\n", 1)[0]:
                ringing = carrier.recv(5.0)
            assert ringing is not None, "no 180 before the carrier hung up its connection"
            tag = carrier.tag
        first, _ = accept_answer(listener, call_id)
        first.close()  # the 2xx is not acknowledged
        again, answer = accept_answer(listener, call_id)
        with again:
            again.tag = tag  # the same dialog, on a new connection
            target = (answer.headers.get("Contact") or "").strip("<>")
            for method, cseq in (("ACK", 1), ("BYE", 2)):
                request, _ = again.build(
                    method, target, from_uri=f"sip:+79161234567@{INBOUND}",
                    to_uri=f"sip:{DID}@127.0.0.1", to_tag=answer.to.tag, call_id=call_id,
                    cseq=cseq,
                )  # fmt: skip
                again.send(request)
            bye_ok = again.recv(5.0)
            while bye_ok is not None and b"CSeq: 2 BYE" not in bye_ok:
                bye_ok = again.recv(5.0)
            assert bye_ok is not None and bye_ok.startswith(b"SIP/2.0 200 "), bye_ok
    assert ok(phone[0]), phone[0]
    (row,) = records(daemon)
    assert (row["direction"], row["did"], row["disposition"]) == ("inbound", DID, "answered")
    assert row["hangup_by"] == "caller", row
    connects = [(e["transport"], e["host"], e["port"]) for e in daemon.events_named("connected")]
    assert connects == [("tcp", INBOUND, ports.inbound)] * 2, connects


# -- TLS gateways: baresip as the carrier (sipp here has no TLS) ----------------------------


def tls_gateway(
    ports: Ports, carrier: Baresip, cert: Path, name: str = "localhost"
) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        with_gateways(ports)(config)
        config["gateways"][1].update(
            address=f"{PRIMARY}:{carrier.sip_port + 1}", transport="tls",
            tls_ca=str(cert), tls_name=name,
        )  # fmt: skip

    return edit


def carrier_pem(tmp_path: Path) -> tuple[Path, Path]:
    """The carrier's certificate (for the switch to trust) and its certificate + key in one
    file (for baresip)."""
    require("openssl")
    cert, key = self_signed(tmp_path, "localhost")
    pem = tmp_path / "carrier.pem"
    pem.write_text(cert.read_text() + key.read_text())
    return cert, pem


def test_an_outside_call_reaches_a_tls_gateway_that_answers(
    make_daemon: Callable[..., Daemon], baresip: Phones, work: Path, tmp_path: Path
) -> None:
    cert, pem = carrier_pem(tmp_path)
    number = "+74991234567"
    carrier = baresip.start(
        None, number, answer=True, gateway=(PRIMARY, pem), source=tone_file(tmp_path, 800)
    )
    carrier.ready()
    ports = Ports()
    daemon = make_daemon(tls_gateway(ports, carrier, cert))
    phone = call(daemon, work, "call_uac_bye.xml", callee="84991234567")
    assert ok(phone), phone
    # The BYE as baresip's SIP trace shows it (its own end-of-call line varies: "Call with ...
    # terminated", or "session closed: Connection reset by peer", libre's word for a BYE).
    carrier.wait_for(r"^BYE sip:", 10)
    said = carrier.said
    assert f"INVITE sip:{number}@{PRIMARY}:{carrier.sip_port + 1};transport=tls" in said, said
    assert "SIP/2.0/TLS" in said
    (row,) = records(daemon)
    assert (row["direction"], row["disposition"], row["hangup_by"]) == (
        "outbound", "answered", "caller",
    )  # fmt: skip
    legs = call_legs(daemon, row["call_id"])
    assert [(leg["status"], leg["address"]) for leg in legs[1:]] == [
        (200, f"tls:{PRIMARY}:{carrier.sip_port + 1}")
    ]
    (connected,) = daemon.events_named("connected")
    assert (connected["transport"], connected["host"]) == ("tls", PRIMARY), connected


def test_a_tls_gateway_whose_certificate_does_not_match_is_not_called(
    make_daemon: Callable[..., Daemon], baresip: Phones, work: Path, tmp_path: Path
) -> None:
    # The switch expects the carrier to be "carrier.example"; its certificate says
    # "localhost". Nothing goes over that connection: the call fails over to the next
    # gateway at once, and the log says why.
    cert, pem = carrier_pem(tmp_path)
    carrier = baresip.start(
        None, "+74991234567", answer=True, gateway=(PRIMARY, pem), source=tone_file(tmp_path, 800)
    )
    carrier.ready()
    ports = Ports()
    daemon = make_daemon(tls_gateway(ports, carrier, cert, name="carrier.example"))
    with callee(daemon, work, "call_uas_answer.xml", ports.secondary, local_ip=SECONDARY) as second:
        phone = call(daemon, work, "call_uac_bye.xml", callee="84991234567")
    assert ok(phone), phone
    assert ok(second[0]), second[0]
    assert "INVITE sip:" not in carrier.said
    (row,) = records(daemon)
    legs = call_legs(daemon, row["call_id"])
    assert [(leg["status"], leg["address"]) for leg in legs[1:]] == [
        (503, f"tls:{PRIMARY}:{carrier.sip_port + 1}"),
        (200, f"udp:{SECONDARY}:{ports.secondary}"),
    ]
    (error,) = daemon.events_named("transport error")
    assert "CERTIFICATE_VERIFY_FAILED" in error["error"] or "match" in error["error"], error
