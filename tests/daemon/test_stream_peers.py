"""Calls to TCP peers the switch must connect to itself (RFC 3261 §18.1.1, §8.1.3.1).

A gateway with ``transport: tcp`` is a sipp listening on TCP (``-t t1``) on
an address of its own, as in test_gateways.py: the switch opens the
connection for the INVITE. A gateway whose port is closed fails at once
(a transport error is a 503 made by the switch) and the call goes to the
next gateway, long before Timer B. A phone registered over TCP is reached
over the connection it keeps, and when that is gone, at its Contact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon.harness import Daemon, free_port
from tests.daemon.sipp import run_sipp
from tests.daemon.test_calls import (
    CALLEE,
    call,
    call_legs,
    callee,
    ok,
    pjsua_call,
    records,
    require_module,
    states,
)
from tests.daemon.test_gateways import PRIMARY, SECONDARY, Ports, sent_invite, with_gateways

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
