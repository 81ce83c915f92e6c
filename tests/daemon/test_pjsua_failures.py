"""pjsua2 phone A calls phone B, and B does not take the call: busy, no answer, A gives up.

Real phones on both ends (tests/daemon/pjsua_call.py in subprocesses): what A hears is
checked in its own call state (the final status pjsip reports), what B saw in its own, and the
switch's call record says the same.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import Daemon, wait_until
from tests.daemon.test_calls import call_legs, pjsua, records, require_module, states


def codes(output: str) -> list[int]:
    lines = (json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return [line["code"] for line in lines if line.get("state") == "disconnected"]


def unanswered_call(
    daemon: Daemon, work: Path, callee: tuple[str, ...], caller: tuple[str, ...]
) -> tuple[str, str, tuple[int | None, int | None]]:
    require_module("pjsua2")
    bob = pjsua(daemon, work, "102", *callee)
    alice: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: daemon.registrations() == 1, 10, what="102 to register")
        alice = pjsua(daemon, work, "101", "--call", "sip:102@acme.example", *caller)
        alice_out, _ = alice.communicate(timeout=40)
        bob_out, _ = bob.communicate(timeout=40)
    finally:
        for phone in (bob, alice):
            if phone is not None and phone.poll() is None:
                phone.kill()
    return alice_out, bob_out, (alice.returncode, bob.returncode)


def test_busy_phone(daemon: Daemon, work: Path) -> None:
    alice, bob, rc = unanswered_call(daemon, work, ("--busy",), ("--expect", "486"))
    assert rc == (0, 0), (alice, bob)
    assert codes(alice) == [486] and codes(bob) == [486], (alice, bob)
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("busy", "callee")


def test_caller_gives_up_before_answer(daemon: Daemon, work: Path) -> None:
    alice, bob, rc = unanswered_call(
        daemon, work, ("--ring-only",), ("--expect", "487", "--cancel-after", "1.5")
    )
    assert rc == (0, 0), (alice, bob)
    # B's phone stopped ringing because of our CANCEL: its INVITE ended with 487 too.
    assert codes(alice) == [487] and codes(bob) == [487], (alice, bob)
    assert "confirmed" not in states(alice) + states(bob)
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("cancelled", "caller")
    _, b = call_legs(daemon, row["call_id"])
    assert (b["status"], b["answered"]) == (487, 0)


@pytest.fixture
def short_ring(make_daemon: Callable[..., Daemon]) -> Daemon:
    def edit(config: dict[str, Any]) -> None:
        config["calls"] = {"ring_timeout": 2}

    return make_daemon(edit)


def test_nobody_answers_within_the_ring_timeout(short_ring: Daemon, work: Path) -> None:
    alice, bob, rc = unanswered_call(short_ring, work, ("--ring-only",), ("--expect", "480"))
    assert rc == (0, 0), (alice, bob)
    assert codes(alice) == [480] and codes(bob) == [487], (alice, bob)
    (row,) = records(short_ring)
    assert (row["disposition"], row["hangup_by"]) == ("no-answer", "system")
    assert 2 <= row["ended_at"] - row["started_at"] < 6, row
