"""Calls the switch handles itself (switch/b2bua/control.py), with sipp on both ends.

The tenant's ``routes`` send 500 to ``answer-hangup`` (answer, wait, hang up) and
501/502 to ``follow-me`` (answer, dial 102, bridge), the built-in handlers that
exercise the call-control API from end to end: our 200 and BYE with a Q.850
Reason, RTP from the caller reaching the switch, a dialled phone bridged with the
caller through the relay, the dialled phone CANCELled when the caller leaves
mid-dial, and a dial that times out ending the call with that cause.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import Daemon, free_port, wait_until
from tests.daemon.test_calls import call, call_legs, callee, ok, records, register_callee
from tests.daemon.test_media_paths import write_tone

HANG_UP_AFTER = 2  # seconds the answer-hangup number keeps the line open
SHORT_RING = 2  # seconds follow-me 502 rings before it gives up


def with_routes(config: dict[str, Any]) -> None:
    config["tenants"][0]["routes"] = {
        "500": {"handler": "answer-hangup", "seconds": HANG_UP_AFTER},
        "501": {"handler": "follow-me", "extension": "102", "timeout": 10},
        "502": {"handler": "follow-me", "extension": "102", "timeout": SHORT_RING},
    }


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(with_routes)


def reasons(messages: Path, method: str) -> list[str]:
    """The Reason headers of each ``method`` request sipp received (its -trace_msg file)."""
    text = messages.read_text(errors="replace")
    found = []
    for block in re.split(r"\n-{5,}[^\n]*\n", text):
        if re.search(rf"^\s*{method} sip:", block, re.M):
            match = re.search(r"^\s*Reason:\s*(.+?)\s*$", block, re.M)
            found.append(match.group(1) if match else "")
    return found


def test_answer_and_hang_up_counts_the_callers_rtp(daemon: Daemon, work: Path) -> None:
    write_tone(work)
    messages = work / "caller-messages.log"
    caller = call(
        daemon, work, "call_uac_rtp_wait_bye.xml", "500",
        media_port=free_port(both=True), messages=messages,
    )  # fmt: skip
    assert ok(caller), caller
    assert reasons(messages, "BYE") == ['Q.850;cause=16;text="Normal clearing"']
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("answered", "system")
    assert (row["callee"], row["hangup_cause"]) == ("500", "16 Normal clearing")
    assert HANG_UP_AFTER - 1 <= row["billsec"] <= HANG_UP_AFTER + 1
    (a,) = call_legs(daemon, row["call_id"])
    # The caller streamed from its ACK to our BYE: about 50 packets a second reached the
    # relay, and the relay sent each on to the switch's own endpoint.
    assert a["answered"] == 1 and a["codec"] == "PCMU", a
    assert HANG_UP_AFTER * 50 * 0.6 <= a["packets_in"] <= HANG_UP_AFTER * 50 * 1.5, a
    assert a["lost"] == 0
    daemon.wait_metric("softswitch_calls_total", 1, disposition="answered")
    daemon.wait_metric("softswitch_calls_active", 0)
    daemon.wait_metric("softswitch_rtp_packets_total", a["packets_in"], direction="in")
    (ended,) = [e for e in daemon.events_named("leg ended") if e["leg"] == "the caller"]
    assert (ended["by_phone"], ended["cause"]) == (False, 16)


def test_follow_me_bridges_the_caller_with_the_dialled_phone(daemon: Daemon, work: Path) -> None:
    write_tone(work)
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_rtp.xml", port, media_port=free_port(both=True)) as uas:
        caller = call(daemon, work, "call_uac_rtp.xml", "501", media_port=free_port(both=True),
                      keys={"sdp_ip": "127.0.0.1"})  # fmt: skip
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"], row["callee"]) == ("answered", "caller", "501")
    a, b = call_legs(daemon, row["call_id"])
    assert (a["role"], b["role"], b["answered"], b["status"]) == ("caller", "callee", 1, 200)
    assert a["codec"] == b["codec"] == "PCMU"
    # Both phones streamed; once bridged, each one's packets went to the other. The caller
    # streamed while 102 was being dialled too (to the switch's endpoint, not to 102), and
    # 102 may have sent a packet or two before the bridge.
    assert a["packets_in"] >= 100 and b["packets_in"] >= 50, (a, b)
    assert 0 < b["packets_out"] <= a["packets_in"], (a, b)
    assert b["packets_in"] - 5 <= a["packets_out"] <= b["packets_in"], (a, b)
    assert a["lost"] == 0 and b["lost"] == 0
    daemon.wait_metric("softswitch_calls_active", 0)


def test_caller_hanging_up_mid_dial_cancels_the_dialled_phone(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_ring.xml", port) as uas:
        caller = call(daemon, work, "call_uac_bye.xml", "501")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]  # it got CANCEL, answered 487 and got its ACK
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"], row["hangup_cause"]) == (
        "answered", "caller", "BYE",
    )  # fmt: skip
    _, b = call_legs(daemon, row["call_id"])
    # The 487 may come after the record was written: the fork's status is then unknown.
    assert b["answered"] == 0 and b["status"] in (None, 487), b
    daemon.wait_metric("softswitch_calls_active", 0)


def test_dial_timeout_ends_the_call_with_no_answer(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    messages = work / "caller-messages.log"
    with callee(daemon, work, "call_uas_ring.xml", port) as uas:
        caller = call(daemon, work, "call_uac_wait_bye.xml", "502", messages=messages)
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]  # our ring timeout CANCELled it
    assert reasons(messages, "BYE") == ['Q.850;cause=19;text="No answer"']
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"], row["hangup_cause"]) == (
        "answered", "system", "19 No answer",
    )  # fmt: skip
    assert SHORT_RING - 1 <= row["billsec"] <= SHORT_RING + 2
    (fail,) = daemon.events_named("dial failed")
    assert (fail["status"], fail["reason"], fail["cause"]) == (480, "No Answer", 19), fail
    daemon.wait_metric("softswitch_calls_active", 0)


def test_follow_me_to_a_phone_not_registered(daemon: Daemon, work: Path) -> None:
    messages = work / "caller-messages.log"
    caller = call(daemon, work, "call_uac_wait_bye.xml", "501", messages=messages)
    assert ok(caller), caller
    # 480 Not registered reads as Q.850 18 "no user responding" (RFC 3398 §8.2.6.1)
    assert reasons(messages, "BYE") == ['Q.850;cause=18;text="No user response"']
    (fail,) = wait_until(lambda: daemon.events_named("dial failed"), 3, what="the dial to fail")
    assert (fail["target"], fail["status"], fail["reason"]) == ("102", 480, "Not registered")
