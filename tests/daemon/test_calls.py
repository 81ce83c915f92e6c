"""Basic calls through the B2BUA (RFC 3261 §13-§15, RFC 3665 §3), with sipp on both ends.

The callee is a sipp that first registers extension 102 from its port, then
plays the UAS on that same port: the daemon must reach it at the address
the REGISTER came from. The caller is a sipp that answers the daemon's 407
with its credentials. Each test checks both ends finished their scenario.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from switch.store import driver_url
from tests.daemon.harness import USERS, Daemon, free_port, wait_until
from tests.daemon.sipclient import Exchange, SipClient
from tests.daemon.sipp import SippResult, run_sipp

PJSUA_CALL = Path(__file__).with_name("pjsua_call.py")
CALLER = ("101", "acme.example", USERS["101"])
CALLEE = ("102", "acme.example", USERS["102"])


def register_callee(daemon: Daemon, work: Path) -> int:
    port = free_port(both=True)
    result = run_sipp("register.xml", daemon.sip_port, work, users=[CALLEE], local_port=port)
    assert result.returncode == 0 and result.successful == 1, result
    return port


@contextmanager
def callee(
    daemon: Daemon, work: Path, scenario: str, port: int, **kw: Any
) -> Iterator[list[SippResult]]:
    """sipp as the UAS of ``scenario`` on ``port``, in the background for one call."""
    results: list[SippResult] = []

    def run() -> None:
        results.append(run_sipp(scenario, daemon.sip_port, work, local_port=port, timeout=20, **kw))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)  # sipp binds its port before the caller's INVITE can reach it
    yield results
    thread.join(35)
    assert results, "the callee's sipp did not finish"


def call(
    daemon: Daemon,
    work: Path,
    scenario: str,
    callee: str = "102",
    keys: dict[str, str] | None = None,
    **kw: Any,
) -> SippResult:
    """sipp as 101 calling ``callee`` with ``scenario`` (more -key values in ``keys``)."""
    keys = {"callee": callee, **(keys or {})}
    return run_sipp(scenario, daemon.sip_port, work, users=[CALLER], keys=keys, **kw)


def require_module(name: str) -> None:
    pytest.importorskip(name)


def ok(result: SippResult) -> bool:
    return result.returncode == 0 and result.successful == 1


def test_basic_call_caller_hangs_up(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_answer.xml", port) as uas:
        caller = call(daemon, work, "call_uac_bye.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    events = [e["event"] for e in daemon.events() if e.get("event", "").startswith("CCEvent")]
    assert events == ["CCEventTry", "CCEventRing", "CCEventConnect", "CCEventDisconnect"]
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "caller"
    assert daemon.metric("softswitch_sip_responses_total", code="407") == 1
    daemon.wait_metric("softswitch_calls_active", 0)


def test_basic_call_callee_hangs_up(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_answer_bye.xml", port) as uas:
        caller = call(daemon, work, "call_uac_wait_bye.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "callee"


def test_caller_cancels_before_answer(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_ring.xml", port) as uas:
        caller = call(daemon, work, "call_uac_cancel.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    (fail,) = daemon.events_named("CCEventFail")
    assert fail["status"] == 487


def test_busy_callee_gives_486(daemon: Daemon, work: Path) -> None:
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_busy.xml", port) as uas:
        caller = call(daemon, work, "call_uac_486.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]


def test_callee_not_registered_gives_480(daemon: Daemon, work: Path) -> None:
    caller = call(daemon, work, "call_uac_480.xml")
    assert ok(caller), caller
    assert daemon.metric("softswitch_sip_responses_total", code="480") == 1


def test_ring_timeout_cancels_the_callee_and_gives_480(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    def short_ring(config: dict[str, Any]) -> None:
        config["calls"] = {"ring_timeout": 2}

    daemon = make_daemon(short_ring)
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_ring.xml", port) as uas:
        caller = call(daemon, work, "call_uac_480.xml")
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    wait_until(lambda: daemon.events_named("CCEventFail"), 2.0, what="the call to fail")
    (fail,) = daemon.events_named("CCEventFail")
    assert fail["status"] == 480


def invite(client: SipClient, daemon: Daemon, max_forwards: int = 70, via: str = "") -> Exchange:
    data, branch = client.build(
        "INVITE",
        "sip:102@acme.example",
        from_uri="sip:101@acme.example",
        to_uri="sip:102@acme.example",
        call_id=f"{time.monotonic_ns()}@test",
        cseq=1,
        headers=[f"Contact: <sip:101@{client.local[0]}:{client.local[1]}>"],
    )
    data = data.replace(b"Max-Forwards: 70", f"Max-Forwards: {max_forwards}".encode())
    if via:
        data = data.replace(b"\r\nMax-Forwards", f"\r\nVia: {via}\r\nMax-Forwards".encode(), 1)
    return client.transact(data, branch)


def test_proxy_checks_before_authentication(daemon: Daemon) -> None:
    with SipClient(daemon.sip_port) as client:
        assert invite(client, daemon, max_forwards=0).status == 483  # §16.3 step 3
        ours = f"SIP/2.0/UDP 127.0.0.1:{daemon.sip_port};branch=z9hG4bKloop"
        assert invite(client, daemon, via=ours).status == 482  # §16.3 step 4
        challenge = invite(client, daemon)
    assert challenge.status == 407, challenge.raw
    assert challenge.response is not None
    assert 'realm="acme.example"' in (challenge.response.headers.get("Proxy-Authenticate") or "")


def test_bye_outside_any_dialog_gets_481(daemon: Daemon) -> None:
    with SipClient(daemon.sip_port) as client:
        data, branch = client.build(
            "BYE",
            "sip:102@acme.example",
            from_uri="sip:101@acme.example",
            to_uri="sip:102@acme.example",
            call_id="nowhere@test",
            cseq=2,
        )
        data = data.replace(b"<sip:102@acme.example>", b"<sip:102@acme.example>;tag=x", 1)
        assert client.transact(data, branch).status == 481


def pjsua(daemon: Daemon, work: Path, user: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PJSUA_CALL), "--server", f"127.0.0.1:{daemon.sip_port}",
         "--local-port", str(free_port(both=True)), "--user", user, "--password", USERS[user],
         "--log", str(work / f"pjsua-{user}.log"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@dataclass(frozen=True)
class PhoneCall:
    """What two pjsua phones printed and how they exited: 101 calling 102."""

    caller: subprocess.Popen[str]
    caller_out: str
    callee: subprocess.Popen[str]
    callee_out: str

    @property
    def exited_0(self) -> bool:
        return self.caller.returncode == 0 and self.callee.returncode == 0


def pjsua_call(
    daemon: Daemon, work: Path, callee_args: tuple[str, ...] = (), caller_args: tuple[str, ...] = ()
) -> PhoneCall:
    """pjsua 102 registers, then pjsua 101 calls it and talks 1 s; both are waited for."""
    callee = pjsua(daemon, work, "102", *callee_args)
    caller: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: daemon.registrations() == 1, 10, what="102 to register")
        caller = pjsua(daemon, work, "101", "--call", "sip:102@acme.example", "--talk", "1",
                       *caller_args)  # fmt: skip
        caller_out, _ = caller.communicate(timeout=30)
        callee_out, _ = callee.communicate(timeout=30)
    finally:
        for phone in (callee, caller):
            if phone is not None and phone.poll() is None:
                phone.kill()
    return PhoneCall(caller, caller_out, callee, callee_out)


def reports(output: str) -> list[dict[str, Any]]:
    """The JSON lines a pjsua phone printed."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def states(output: str) -> list[str]:
    return [report["state"] for report in reports(output) if "state" in report]


def test_pjsua_phone_calls_phone(daemon: Daemon, work: Path) -> None:
    require_module("pjsua2")
    phones = pjsua_call(daemon, work)
    alice_out, bob_out = phones.caller_out, phones.callee_out
    assert states(alice_out) == ["registered", "confirmed", "disconnected"], (alice_out, bob_out)
    assert states(bob_out) == ["registered", "confirmed", "disconnected"], bob_out
    assert phones.exited_0, (alice_out, bob_out)
    (disconnect,) = daemon.wait_events("CCEventDisconnect")
    assert disconnect["by"] == "caller"
    # The callee was offered the relay's port (media section defaults: 30000-39999), and
    # the caller's RTCP reached it through the relay, though pjsua wrote 192.0.2.2 (its
    # guess of a public address) in its SDP: the relay latched onto the real source.
    bob_log = (work / "pjsua-102.log").read_text(errors="replace")
    match = re.search(r"^m=audio (\d+) ", bob_log, re.M)
    assert match is not None and 30000 <= int(match.group(1)) <= 39999, bob_log[:3000]
    assert "Received RTCP BYE" in bob_log


def test_fork_first_answer_wins_and_the_other_is_cancelled(daemon: Daemon, work: Path) -> None:
    answering, ringing = register_callee(daemon, work), register_callee(daemon, work)
    with (
        callee(daemon, work, "call_uas_ring_elsewhere.xml", ringing) as loser,
        callee(daemon, work, "call_uas_answer.xml", answering) as winner,
    ):
        caller = call(daemon, work, "call_uac_bye.xml")
    assert ok(caller), caller
    assert ok(winner[0]), winner[0]
    assert ok(loser[0]), loser[0]
    (attempt,) = daemon.events_named("CCEventTry")
    assert attempt["forks"] == 2


# -- call records (switch/cdr.py) ------------------------------------------------------------


def _query(daemon: Daemon, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Rows from the daemon's store, SQLite or PostgreSQL, as dicts."""
    engine = sqlalchemy.create_engine(driver_url(daemon.config["store"]["url"]))
    try:
        with engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(sqlalchemy.text(sql), params)]
    finally:
        engine.dispose()


def records(daemon: Daemon, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The rows of ``calls`` in the daemon's store, oldest first, once ``count`` ended."""

    def ended() -> list[dict[str, Any]]:
        rows = _query(daemon, "SELECT * FROM calls ORDER BY started_at")
        done = [row for row in rows if row["state"] != "active"]
        return done if len(done) >= count else []

    return list(wait_until(ended, timeout, what=f"{count} ended call records"))


def call_legs(daemon: Daemon, call_id: str) -> list[dict[str, Any]]:
    query = "SELECT * FROM call_legs WHERE call_id = :call_id ORDER BY leg"
    return _query(daemon, query, call_id=call_id)


def in_store(url: str) -> Callable[[dict[str, Any]], None]:
    """The daemon keeps its records at ``url`` (the ``store_url`` fixture: SQLite, PostgreSQL)."""

    def edit(config: dict[str, Any]) -> None:
        config["store"]["url"] = url

    return edit


def test_call_record_of_an_answered_call(
    make_daemon: Callable[..., Daemon], store_url: str, work: Path
) -> None:
    daemon = make_daemon(in_store(store_url))
    port = register_callee(daemon, work)
    before = time.time()
    with callee(daemon, work, "call_uas_answer.xml", port) as uas:
        caller = call(daemon, work, "call_uac_bye.xml")
    assert ok(caller) and ok(uas[0]), (caller, uas)
    (row,) = records(daemon)
    assert (row["state"], row["disposition"], row["direction"]) == ("ended", "answered", "internal")
    assert (row["tenant"], row["caller"], row["callee"], row["did"]) == ("acme", "101", "102", None)
    assert (row["hangup_by"], row["hangup_cause"]) == ("caller", "BYE")
    assert before <= row["started_at"] <= row["answered_at"] <= row["ended_at"] <= time.time()
    assert 0 <= row["billsec"] <= row["duration"] <= 5
    a, b = call_legs(daemon, row["call_id"])
    assert (a["role"], a["answered"], b["role"], b["answered"]) == ("caller", 1, "callee", 1)
    assert b["address"] == f"udp:127.0.0.1:{port}"
    # sipp sends no RTP in these scenarios: the relay counted nothing, and says so.
    assert [a["packets_in"], a["packets_out"], b["packets_in"], b["packets_out"]] == [0, 0, 0, 0]
    daemon.wait_metric("softswitch_calls_total", 1, disposition="answered")
    assert daemon.metric("softswitch_calls_total", disposition="busy") == 0
    assert daemon.metric("softswitch_rtp_packets_total", direction="in") == 0


def test_call_records_of_busy_cancelled_and_unanswered_calls(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    def short_ring(config: dict[str, Any]) -> None:
        config["calls"] = {"ring_timeout": 2}

    daemon = make_daemon(short_ring)
    port = register_callee(daemon, work)  # one binding: each call rings this one sipp
    for uas_scenario, uac_scenario in (
        ("call_uas_busy.xml", "call_uac_486.xml"),
        ("call_uas_ring.xml", "call_uac_cancel.xml"),
        ("call_uas_ring.xml", "call_uac_480.xml"),
    ):
        with callee(daemon, work, uas_scenario, port) as uas:
            caller = call(daemon, work, uac_scenario)
        assert ok(caller) and ok(uas[0]), (uac_scenario, caller, uas)
    rows = records(daemon, 3)
    assert [(r["disposition"], r["hangup_by"], r["hangup_cause"]) for r in rows] == [
        ("busy", "callee", "486 Busy Here"),
        ("cancelled", "caller", "487 Request Terminated"),
        ("no-answer", "system", "480 No Answer"),
    ]
    assert all(r["answered_at"] is None and r["billsec"] == 0 for r in rows)
    for disposition in ("busy", "cancelled", "no-answer"):
        daemon.wait_metric("softswitch_calls_total", 1, disposition=disposition)
    assert daemon.metric("softswitch_calls_total", disposition="answered") == 0


def test_pjsua_call_record_counts_the_relayed_media(daemon: Daemon, work: Path) -> None:
    require_module("pjsua2")
    phones = pjsua_call(daemon, work)
    alice_out, bob_out = phones.caller_out, phones.callee_out
    assert phones.exited_0, (alice_out, bob_out)
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("answered", "caller")
    assert row["billsec"] >= 1  # --talk 1
    a, b = call_legs(daemon, row["call_id"])
    for leg in (a, b):
        assert leg["packets_in"] > 0 and leg["bytes_in"] > 0, leg
        assert leg["packets_out"] > 0 and leg["latched"], leg
        # media.kernel: auto, as root: the kernel forwarded all but the first packets of
        # each phone's stream (one latches the phone and tells its SSRC).
        assert leg["packets_in"] / 2 < leg["kernel_packets"] < leg["packets_in"], leg
    daemon.wait_metric("softswitch_calls_total", 1, disposition="answered")
    relayed = a["packets_in"] + b["packets_in"]  # (media workers: /metrics within a second)
    daemon.wait_metric("softswitch_rtp_packets_total", relayed, direction="in")
    kernel = a["kernel_packets"] + b["kernel_packets"]
    daemon.wait_metric("softswitch_rtp_kernel_packets_total", kernel)


def test_a_call_cut_by_a_daemon_crash_is_marked_crashed_at_the_next_start(
    make_daemon: Callable[..., Daemon], store_url: str, work: Path
) -> None:
    daemon = make_daemon(in_store(store_url))
    port = register_callee(daemon, work)
    phones: list[SippResult] = []

    def run(scenario: str, **kw: Any) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: phones.append(run_sipp(scenario, daemon.sip_port, work, **kw)),
            daemon=True,
        )
        thread.start()
        return thread

    threads = [run("call_uas_answer.xml", local_port=port, timeout=6)]
    time.sleep(0.5)  # sipp binds its port before the caller's INVITE can reach it
    threads.append(run("call_uac_wait_bye.xml", users=[CALLER], keys={"callee": "102"}, timeout=6))
    wait_until(lambda: daemon.events_named("CCEventConnect"), 5, what="the call to connect")
    time.sleep(1.5)  # the call talks a little; the heartbeat may move its end on
    daemon.kill()  # SIGKILL: no final write
    daemon.start()
    (row,) = records(daemon)
    assert (row["state"], row["disposition"], row["hangup_by"]) == ("crashed", "answered", "system")
    assert row["answered_at"] is not None and row["ended_at"] >= row["answered_at"]
    (warning,) = daemon.events_named("calls of the last run marked crashed")
    assert warning["calls"] == 1
    for thread in threads:
        thread.join(20)  # the phones give up on their own: nobody sends them a BYE
