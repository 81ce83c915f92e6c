"""Call records: dispositions, the rows a call leaves in the store, and a crash mid-call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import delete, select

from switch.b2bua.call import CallState, CCEventConnect, CCEventDisconnect, CCEventFail, Side
from switch.b2bua.media import PassThrough
from switch.cdr import CallRecorder, Disposition, disposition
from switch.endpoint import NO_RESPONSE
from switch.metrics import Metrics
from switch.sip.dialog import DialogId
from switch.sip.message import Request, parse_message
from switch.store import Store, call_legs, calls, open_store
from switch.transport import Peer

T0 = 1_700_000_000.0

INVITE = (
    b"INVITE sip:102@acme.example SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:101@acme.example>;tag=1928301774\r\n"
    b"To: <sip:102@acme.example>\r\n"
    b"Call-ID: a84b4c76e66710@pc33\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:101@192.0.2.10:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("status", "cancelled", "expected"),
    [
        (200, False, Disposition.ANSWERED),
        (486, False, Disposition.BUSY),
        (600, False, Disposition.BUSY),
        (408, False, Disposition.NO_ANSWER),
        (480, False, Disposition.NO_ANSWER),  # our ring timeout
        (487, True, Disposition.CANCELLED),
        (404, False, Disposition.FAILED),
        (503, False, Disposition.FAILED),
        (603, False, Disposition.FAILED),  # declined is a refusal, not a busy line
    ],
)
def test_disposition(status: int, cancelled: bool, expected: Disposition) -> None:
    assert disposition(status, cancelled=cancelled) is expected


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeCall(SimpleNamespace):
    __hash__ = object.__hash__  # the recorder keys its open calls by the Call object


def fake_call(forks: int = 1) -> Any:
    """What the recorder reads of a Call: the caller's INVITE, the forks, the dialogs."""
    request = parse_message(INVITE)
    assert isinstance(request, Request)
    incoming = SimpleNamespace(
        request=request, peer=Peer("udp", "203.0.113.7", 41234), to_tag="ourtag"
    )
    return FakeCall(
        id=request.call_id,
        incoming=incoming,
        media=PassThrough(),
        state=CallState.TRYING,
        a_dialog=None,
        b_dialog=None,
        answered_by=None,
        forks=[fork(n) for n in range(forks)],
        transfers=[],
    )


def fork(n: int) -> Any:
    invite = parse_message(
        INVITE.replace(b"a84b4c76e66710@pc33", f"leg-b-{n}@softswitch".encode())
        .replace(b"tag=1928301774", f"tag=btag{n}".encode())
        .replace(b"INVITE sip:102@acme.example", f"INVITE sip:102@192.0.2.{20 + n}".encode())
    )
    target = SimpleNamespace(uri=f"sip:102@192.0.2.{20 + n}", peer=Peer("udp", "192.0.2.20", 5062))
    return SimpleNamespace(request=invite, target=target, final=None, reason="", cancelled=False)


def answer(call: Any, n: int = 0) -> None:
    call.state = CallState.CONNECTED
    call.forks[n].final = 200
    call.a_dialog = object()
    call.b_dialog = SimpleNamespace(id=DialogId(f"leg-b-{n}@softswitch", f"btag{n}", "phone-b"))
    call.answered_by = call.b_dialog


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = await open_store(store_url)
    yield store
    await store.close()


async def rows(store: Store) -> list[Any]:
    return await store.transaction(lambda conn: conn.execute(select(calls)).all())


async def legs(store: Store) -> list[Any]:
    statement = select(call_legs).order_by(call_legs.c.leg)
    return await store.transaction(lambda conn: conn.execute(statement).all())


def counted(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_answered_call_is_active_then_ended_with_its_legs(store: Store) -> None:
    clock, metrics = Clock(), Metrics()
    recorder = CallRecorder(store, metrics, clock)
    call = fake_call(forks=2)
    recorder.begin(call, tenant="acme", caller="101", callee="102")
    await recorder.close()
    (row,) = await rows(store)
    assert (row.state, row.tenant, row.caller, row.callee) == ("active", "acme", "101", "102")
    assert (row.direction, row.disposition, row.ended_at) == ("internal", None, T0)

    clock.now = T0 + 3.2
    answer(call, 1)
    call.forks[0].cancelled = True  # CANCEL sent, its 487 not in when the call ends
    recorder.on_event(call, CCEventConnect())
    clock.now = T0 + 65.4
    call.state = CallState.DISCONNECTED
    recorder.on_event(call, CCEventDisconnect(Side.B))
    await recorder.close()

    (row,) = await rows(store)
    assert row.state == "ended"
    assert (row.answered_at, row.ended_at) == (T0 + 3.2, T0 + 65.4)
    assert (row.duration, row.billsec) == (65, 62)
    assert (row.disposition, row.hangup_by, row.hangup_cause) == ("answered", "callee", "BYE")
    a, b0, b1 = await legs(store)
    assert (a.role, a.sip_call_id, a.answered, a.status) == ("caller", call.id, True, 200)
    assert (a.contact, a.address) == ("sip:101@192.0.2.10:5060", "udp:203.0.113.7:41234")
    assert (a.local_tag, a.remote_tag) == ("ourtag", "1928301774")
    assert (b0.role, b0.answered, b0.status, b0.remote_tag) == ("callee", False, 487, None)
    assert (b1.answered, b1.status, b1.remote_tag, b1.local_tag) == (True, 200, "phone-b", "btag1")
    assert (b1.sip_call_id, b1.contact) == ("leg-b-1@softswitch", "sip:102@192.0.2.21")
    assert (a.packets_in, b1.packets_out, b1.latched) == (0, 0, None)  # no relay: no counters
    assert counted(metrics, "softswitch_calls_total", disposition="answered") == 1
    assert counted(metrics, "softswitch_calls_total", disposition="busy") == 0


@pytest.mark.parametrize(
    ("event", "state", "fork_final", "expected"),
    [
        (CCEventFail(486, "Busy Here"), CallState.FAILED, 486,
         ("busy", "callee", "486 Busy Here")),
        (CCEventFail(487, "Request Terminated"), CallState.CANCELLED, None,
         ("cancelled", "caller", "487 Request Terminated")),
        (CCEventFail(480, "No Answer"), CallState.FAILED, None,
         ("no-answer", "system", "480 No Answer")),  # the ring timeout: ours, not the phone's
        (CCEventFail(488, "Not Acceptable Here"), CallState.FAILED, None,
         ("failed", "system", "488 Not Acceptable Here")),
    ],
)  # fmt: skip
async def test_unanswered_calls(
    store: Store, event: CCEventFail, state: CallState, fork_final: int | None, expected: Any
) -> None:
    clock, metrics = Clock(), Metrics()
    recorder = CallRecorder(store, metrics, clock)
    call = fake_call()
    recorder.begin(call, tenant="acme", caller="101", callee="102")
    clock.now = T0 + 4.6
    call.state, call.forks[0].final = state, fork_final
    recorder.on_event(call, event)
    await recorder.close()
    (row,) = await rows(store)
    assert (row.disposition, row.hangup_by, row.hangup_cause) == expected
    assert (row.state, row.answered_at, row.duration, row.billsec) == ("ended", None, 5, 0)
    a, b = await legs(store)
    assert not a.answered and not b.answered
    assert counted(metrics, "softswitch_calls_total", disposition=expected[0]) == 1


@pytest.mark.parametrize(("reason", "by"), [("Request Timeout", "callee"), (NO_RESPONSE, "system")])
async def test_a_408_is_the_callees_only_when_its_phone_sent_it(
    store: Store, reason: str, by: str
) -> None:
    recorder = CallRecorder(store, Metrics(), Clock())
    call = fake_call()
    recorder.begin(call, tenant="acme", caller="101", callee="102")
    call.state, call.forks[0].final, call.forks[0].reason = CallState.FAILED, 408, reason
    recorder.on_event(call, CCEventFail(408, "Request Timeout"))
    await recorder.close()
    (row,) = await rows(store)
    assert (row.disposition, row.hangup_by, row.hangup_cause) == (
        "no-answer",
        by,
        "408 Request Timeout",
    )


async def test_media_timeout_is_the_cause_of_a_hangup_by_the_switch(store: Store) -> None:
    recorder = CallRecorder(store, Metrics(), Clock())
    call = fake_call()
    recorder.begin(call, tenant="acme", caller="101", callee="102")
    answer(call)
    recorder.on_event(call, CCEventConnect())
    recorder.media_timeout(call.id)
    recorder.on_event(call, CCEventDisconnect(None))
    await recorder.close()
    (row,) = await rows(store)
    assert (row.hangup_by, row.hangup_cause) == ("system", "media timeout")


async def test_final_write_inserts_the_row_when_the_first_one_is_missing(store: Store) -> None:
    recorder = CallRecorder(store, Metrics(), Clock())
    call = fake_call()
    recorder.begin(call, tenant="acme", caller="101", callee="102")
    await recorder.close()
    await store.transaction(lambda conn: conn.execute(delete(calls)))
    recorder.on_event(call, CCEventFail(486, "Busy Here"))
    await recorder.close()
    (row,) = await rows(store)
    assert (row.state, row.disposition) == ("ended", "busy")


async def test_a_restart_marks_the_calls_left_active_as_crashed(store_url: str) -> None:
    url = store_url
    store = await open_store(url)
    clock = Clock()
    recorder = CallRecorder(store, Metrics(), clock)
    talking, ringing, done = fake_call(), fake_call(), fake_call()
    for call in (talking, ringing, done):
        recorder.begin(call, tenant="acme", caller="101", callee="102")
    clock.now = T0 + 2.0
    answer(talking)
    recorder.on_event(talking, CCEventConnect())
    recorder.on_event(done, CCEventFail(486, "Busy Here"))
    clock.now = T0 + 30.0
    await recorder.heartbeat()  # the last the store hears of the two open calls
    await recorder.close()
    await store.close()  # the daemon dies: no final write for two of the calls

    store = await open_store(url)
    try:
        assert await CallRecorder(store, Metrics()).recover() == 2
        assert await CallRecorder(store, Metrics()).recover() == 0
        by_state = sorted(
            (r.state, r.disposition, r.duration, r.billsec) for r in await rows(store)
        )
        assert by_state == [
            ("crashed", "answered", 30, 28),
            ("crashed", "failed", 30, 0),
            ("ended", "busy", 2, 0),
        ]
        crashed = [r for r in await rows(store) if r.state == "crashed"]
        assert {(r.hangup_by, r.ended_at) for r in crashed} == {("system", T0 + 30.0)}
    finally:
        await store.close()
