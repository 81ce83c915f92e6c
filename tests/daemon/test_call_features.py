"""Call features past the basic call, with sipp on both ends: hold and unhold by
re-INVITE (RFC 3261 §14, RFC 3264 §8.4), the concurrent call limits per user
(403) and per tenant (486), a late offer (§13.2.1) and a callee's broken SDP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import USERS, Daemon, wait_until
from tests.daemon.sipp import SippResult, run_sipp
from tests.daemon.test_calls import call, callee, ok, pjsua_call, register_callee


def test_caller_holds_and_resumes_through_reinvite(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_hold.xml", port) as uas:
        caller = call(daemon, work, "call_uac_hold.xml")
    # Each sipp checks the direction it was sent: the callee sees a=sendonly, then
    # a=sendrecv; the caller sees the callee's recvonly, then sendrecv.
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    # the 407'd INVITE, the INVITE with credentials, two re-INVITEs
    assert daemon.metric("softswitch_sip_requests_total", method="INVITE") == 4
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "caller"
    daemon.wait_metric("softswitch_calls_active", 0)


def test_callee_holds_and_sends_info_through_the_other_leg(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_holds.xml", port) as uas:
        caller = call(daemon, work, "call_uac_held.xml")
    # the caller sees a=sendonly and the INFO's body; the callee sees a=recvonly
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "callee"


def limited(max_per_user: int, max_per_tenant: int) -> Callable[[dict[str, Any]], None]:
    def configure(config: dict[str, Any]) -> None:
        config["calls"] = {"max_per_user": max_per_user, "max_per_tenant": max_per_tenant}

    return configure


@contextmanager
def call_in_progress(daemon: Daemon, work: Path) -> Iterator[None]:
    """101 talks to 102 for 3 s while the body runs."""
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_answer.xml", port) as uas:
        results: list[SippResult] = []
        thread = threading.Thread(
            target=lambda: results.append(call(daemon, work, "call_uac_talk.xml"))
        )
        thread.start()
        wait_until(lambda: daemon.events_named("CCEventConnect"), 5, what="the first call")
        yield
        thread.join(20)
    assert results and ok(results[0]), results
    assert ok(uas[0]), uas[0]


def test_caller_over_the_user_limit_gets_403(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    daemon = make_daemon(limited(max_per_user=1, max_per_tenant=0))
    with call_in_progress(daemon, work):
        second = call(daemon, work, "call_uac_403.xml")
        assert ok(second), second
    assert daemon.metric("softswitch_sip_responses_total", code="403") == 1
    (refused,) = [e for e in daemon.events() if e.get("event") == "call limit reached"]
    assert refused["scope"] == "user" and refused["user"] == "101" and refused["limit"] == 1


def test_caller_over_the_tenant_limit_gets_486(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    daemon = make_daemon(limited(max_per_user=0, max_per_tenant=1))
    other = ("103", "acme.example", USERS["103"])
    with call_in_progress(daemon, work):
        second = run_sipp("call_uac_486.xml", daemon.sip_port, work, users=[other],
                          keys={"callee": "102"})  # fmt: skip
        assert ok(second), second
    (refused,) = [e for e in daemon.events() if e.get("event") == "call limit reached"]
    assert refused["scope"] == "tenant" and refused["user"] == "103"
    # the first call ended: the limit counts it no more
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_answer.xml", port) as uas:
        third = call(daemon, work, "call_uac_bye.xml")
    assert ok(third), third
    assert ok(uas[0]), uas[0]


def test_late_offer_the_callees_offer_and_the_callers_answer_in_the_ack(
    daemon: Daemon, work: Path
) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_late_offer.xml", port) as uas:
        caller = call(daemon, work, "call_uac_late_offer.xml")
    # the callee checks its INVITE had no SDP and its ACK carried the (relayed) answer
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "caller"


def test_bad_sdp_in_the_callees_answer_fails_the_call_cleanly(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_bad_sdp.xml", port) as uas:
        caller = call(daemon, work, "call_uac_500.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]  # it got its ACK, then the switch's BYE
    (fail,) = daemon.events_named("CCEventFail")
    assert fail["status"] == 500
    daemon.wait_metric("softswitch_calls_active", 0)


def reports(output: str, key: str) -> list[str]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line[key] for line in lines if key in line]


def test_pjsua_phone_holds_and_resumes(daemon: Daemon, work: Path) -> None:
    """pjsua2's own hold (Call.setHold) and unhold (reinvite with PJSUA_CALL_UNHOLD)."""
    pytest.importorskip("pjsua2")
    phones = pjsua_call(daemon, work, ("--hold",), ("--hold",))
    alice_out, bob_out = phones.caller_out, phones.callee_out
    assert reports(alice_out, "state") == ["registered", "confirmed", "disconnected"], alice_out
    assert reports(alice_out, "media") == ["active", "local_hold", "active"], alice_out
    assert reports(bob_out, "media") == ["active", "remote_hold", "active"], bob_out
    assert phones.exited_0, (alice_out, bob_out)
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "caller"


def test_reinvite_glare_the_second_offer_gets_491_and_the_first_completes(
    daemon: Daemon, work: Path
) -> None:
    # RFC 3261 §14.1: while the callee's re-INVITE waits for the caller's answer, the
    # caller's own re-INVITE must get 491 Request Pending, and the first one still succeed.
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_glare.xml", port) as uas:
        caller = call(daemon, work, "call_uac_glare.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    assert daemon.metric("softswitch_sip_responses_total", code="491") == 1
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "caller"
