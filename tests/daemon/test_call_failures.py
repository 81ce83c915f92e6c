"""Calls whose callee is registered but does not answer at the SIP level.

A phone that registered and then vanished (crashed, unplugged, its NAT binding gone) leaves a
binding behind. Its INVITE is retransmitted (Timer A) until Timer B gives up after 64*T1
(RFC 3261 §17.1.1.2); the caller must then get 408, and the call record must say so, instead
of the call hanging until the ring timeout or forever. sip.t1 is lowered so Timer B fires
in 3.2 s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon.harness import Daemon
from tests.daemon.test_calls import call, call_legs, ok, records, register_callee

T1 = 0.05  # Timer B = 64 * T1 = 3.2 s


def test_a_callee_that_never_answers_the_invite_gives_408_after_timer_b(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    def short_timers(config: dict[str, Any]) -> None:
        config["sip"]["t1"] = T1

    daemon = make_daemon(short_timers)
    port = register_callee(daemon, work)  # then that sipp exits: nobody listens on `port`
    caller = call(daemon, work, "call_uac_408.xml")
    assert ok(caller), caller
    (row,) = records(daemon)
    # Nobody answered (Q.850 cause 18, "no user responding"), and the switch gave up.
    assert (row["disposition"], row["hangup_by"]) == ("no-answer", "system"), row
    assert row["hangup_cause"].startswith("408"), row
    assert 64 * T1 * 0.9 <= row["ended_at"] - row["started_at"] < 64 * T1 + 5, row
    _, b = call_legs(daemon, row["call_id"])
    assert (b["status"], b["address"]) == (408, f"udp:127.0.0.1:{port}"), b
    assert daemon.metric("softswitch_sip_responses_total", code="408") == 1
