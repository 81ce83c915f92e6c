"""Call transfer through the B2BUA with pjsua2 phones over loopback: blind (REFER, RFC 3515),
attended (REFER with Replaces, RFC 3891), and a transfer to a busy phone (the call stays).

Alice (101) calls Bob (102); Bob transfers her to Carol (103). Alice hangs up when the test
says so ("hangup" on her stdin), after the media had time to flow; the call record's target
leg then shows the relay's counters of Alice and Carol after the transfer, both ways.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import USERS, Daemon, free_port, wait_until
from tests.daemon.sipclient import SipClient
from tests.daemon.test_calls import PJSUA_CALL, call_legs, records

# Every test here runs with the media in the daemon and in two media workers.
pytestmark = pytest.mark.both_media_ways


def phone(daemon: Daemon, work: Path, user: str, *extra: str) -> subprocess.Popen[str]:
    pytest.importorskip("pjsua2")
    return subprocess.Popen(
        [sys.executable, str(PJSUA_CALL), "--server", f"127.0.0.1:{daemon.sip_port}",
         "--local-port", str(free_port(both=True)), "--user", user, "--password", USERS[user],
         "--log", str(work / f"pjsua-{user}.log"), "--timeout", "15", *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@contextmanager
def phones(*started: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()


def transfer_event(daemon: Daemon, timeout: float = 20.0) -> dict[str, Any]:
    events = wait_until(lambda: daemon.events_named("CCEventTransfer"), timeout, what="transfer")
    return dict(events[0])


def finish(process: subprocess.Popen[str], word: str | None = None) -> list[dict[str, Any]]:
    out, _ = process.communicate(input=word, timeout=40)
    return lines(out)


def said(*started: subprocess.Popen[str]) -> list[tuple[int | None, str]]:
    """(exit code, output) of each phone, what a failure shows. One still running gets
    SIGABRT first: its Python threads' stacks (faulthandler) show where it waits."""
    found = []
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGABRT)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        out, _ = process.communicate(timeout=10)
        found.append((process.returncode, out))
    return found


def states(reports: list[dict[str, Any]]) -> list[str]:
    return [r["state"] for r in reports if "state" in r]


def xfers(reports: list[dict[str, Any]]) -> list[tuple[int, bool]]:
    """The transfer's progress as pjsua reports it: 100 for the 202, then each NOTIFY's."""
    return [(r["xfer"], r["final"]) for r in reports if "xfer" in r]


@dataclass
class Transferred:
    """What each phone said, and the daemon's CCEventTransfer."""

    event: dict[str, Any]
    alice: list[dict[str, Any]]
    bob: list[dict[str, Any]]
    carol: list[dict[str, Any]]
    codes: tuple[int | None, ...]


def transferred_call(
    daemon: Daemon,
    work: Path,
    bob_does: tuple[str, ...],
    carol_does: tuple[str, ...] = (),
    alice_does: tuple[str, ...] = (),
) -> Transferred:
    """Alice calls Bob, Bob transfers as told; Alice hangs up 2 s after the transfer."""
    bob = phone(daemon, work, "102", *bob_does)
    carol = phone(daemon, work, "103", *carol_does)
    with phones(bob, carol):
        wait_until(lambda: daemon.registrations() == 2, 10, what="102 and 103 to register")
        alice = phone(daemon, work, "101", "--call", "sip:102@acme.example", "--talk", "30",
                      "--wait-word", *alice_does)  # fmt: skip
        with phones(alice):
            try:
                event = transfer_event(daemon)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the phones: {said(alice, bob, carol)}") from None
            time.sleep(2.0)  # the phones talk through the relay
            alice_says = finish(alice, "hangup\n")
        bob_says, carol_says = finish(bob), finish(carol)
    codes = (alice.returncode, bob.returncode, carol.returncode)
    return Transferred(event, alice_says, bob_says, carol_says, codes)


def test_blind_transfer_connects_the_caller_with_the_target(daemon: Daemon, work: Path) -> None:
    t = transferred_call(
        daemon,
        work,
        (
            "--xfer",
            "sip:103@acme.example",
        ),
    )
    event, alice_says, bob_says, carol_says = t.event, t.alice, t.bob, t.carol
    assert (event["kind"], event["by"], event["target"], event["status"]) == (
        "blind", "102", "103", 200)  # fmt: skip
    assert states(alice_says) == ["registered", "confirmed", "disconnected"], alice_says
    assert states(carol_says) == ["registered", "confirmed", "disconnected"], carol_says
    assert states(bob_says) == ["registered", "confirmed", "disconnected"], bob_says
    assert xfers(bob_says) == [(100, False), (100, False), (180, False), (200, True)], bob_says
    assert t.codes == (0, 0, 0), t
    (row,) = records(daemon)
    assert (row["caller"], row["callee"], row["disposition"]) == ("101", "102", "answered")
    assert (row["hangup_by"], row["hangup_cause"]) == ("caller", "BYE")
    caller, callee, target = call_legs(daemon, row["call_id"])
    assert (callee["role"], callee["answered"]) == ("callee", 1)
    assert (target["role"], target["answered"], target["referred_by"]) == ("target", 1, "102")
    assert callee["ended_at"] == target["answered_at"] <= target["ended_at"] == row["ended_at"]
    # The relay carried Carol's RTP to Alice and Alice's to Carol after the transfer.
    assert target["packets_in"] > 0 and target["packets_out"] > 0, target
    assert caller["packets_in"] > target["packets_out"] > 0, (caller, target)
    daemon.wait_metric("softswitch_transfers_total", 1, kind="blind", result="done")
    daemon.wait_metric("softswitch_calls_active", 0)


def test_transfer_to_a_busy_phone_leaves_the_call_as_it_was(daemon: Daemon, work: Path) -> None:
    t = transferred_call(
        daemon,
        work,
        (
            "--xfer",
            "sip:103@acme.example",
        ),
        ("--busy",),
    )
    event, alice_says, bob_says = t.event, t.alice, t.bob
    assert event["status"] == 486, event
    assert xfers(bob_says) == [(100, False), (100, False), (180, False), (486, True)], bob_says
    assert states(alice_says) == ["registered", "confirmed", "disconnected"], alice_says
    assert states(bob_says) == ["registered", "confirmed", "disconnected"], bob_says
    assert t.codes[:2] == (0, 0), t
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("answered", "caller")
    _, callee, target = call_legs(daemon, row["call_id"])
    assert (callee["answered"], callee["ended_at"]) == (1, row["ended_at"])
    assert (target["status"], target["answered"], target["referred_by"]) == (486, 0, "102")
    daemon.wait_metric("softswitch_transfers_total", 1, kind="blind", result="failed")


def test_attended_transfer_joins_the_two_far_phones(
    daemon: Daemon, work: Path, media_workers: int
) -> None:
    t = transferred_call(
        daemon,
        work,
        (
            "--xfer-replaces",
            "sip:103@acme.example",
        ),
    )
    event, alice_says, bob_says, carol_says = t.event, t.alice, t.bob, t.carol
    assert (event["kind"], event["by"], event["target"], event["status"]) == (
        "attended", "102", "103", 200)  # fmt: skip
    assert xfers(bob_says) == [(100, False), (100, False), (200, True)], bob_says
    assert states(alice_says) == ["registered", "confirmed", "disconnected"], alice_says
    assert states(carol_says) == ["registered", "confirmed", "disconnected"], carol_says
    assert states(bob_says).count("disconnected") == 2, bob_says
    assert t.codes == (0, 0, 0), t
    first, second = records(daemon, 2)
    assert (first["caller"], first["callee"]) == ("101", "102")
    assert (second["caller"], second["callee"], second["hangup_cause"]) == (
        "102", "103", "transferred")  # fmt: skip
    assert first["hangup_by"] == "caller" and first["ended_at"] >= second["ended_at"]
    legs = call_legs(daemon, first["call_id"])
    target = legs[-1]
    assert (target["role"], target["answered"], target["referred_by"]) == ("target", 1, "102")
    assert target["packets_in"] > 0 and target["packets_out"] > 0, target
    daemon.wait_metric("softswitch_transfers_total", 1, kind="attended", result="done")
    daemon.wait_metric("softswitch_calls_active", 0)
    if media_workers:  # the two calls went to the two workers: the moved leg crossed over
        (joined,) = [e for e in daemon.events_named("media joined") if "worker" not in e]
        assert joined["across_workers"] is True, joined


@pytest.mark.parametrize("how", ["--xfer", "--xfer-replaces"])
def test_a_phone_held_by_the_transferor_is_resumed(daemon: Daemon, work: Path, how: str) -> None:
    # Desk phones hold the call before they transfer it; the held phone must be taken off
    # hold by the switch, or the new party would never hear it.
    t = transferred_call(daemon, work, (how, "sip:103@acme.example", "--hold-first"),
                         alice_does=("--report-media",))  # fmt: skip
    assert t.event["status"] == 200, t.event
    media = [r["media"] for r in t.alice if "media" in r]
    assert media[:2] == ["active", "remote_hold"] and media[-1] == "active", t.alice
    assert t.codes == (0, 0, 0), t
    (first, *_) = records(daemon, 1 if how == "--xfer" else 2)
    target = call_legs(daemon, first["call_id"])[-1]
    assert target["role"] == "target" and target["packets_in"] > 0, target
    assert target["packets_out"] > 0, target  # Alice's audio reached Carol after the resume


def test_refer_outside_any_dialog_gets_481(daemon: Daemon) -> None:
    with SipClient(daemon.sip_port) as client:
        data, branch = client.build(
            "REFER",
            "sip:102@acme.example",
            from_uri="sip:101@acme.example",
            to_uri="sip:102@acme.example",
            call_id="nowhere@test",
            cseq=2,
            headers=["Refer-To: <sip:103@acme.example>"],
        )
        data = data.replace(b"<sip:102@acme.example>", b"<sip:102@acme.example>;tag=x", 1)
        assert client.transact(data, branch).status == 481
    assert daemon.metric("softswitch_transfers_total", kind="blind", result="done") == 0
