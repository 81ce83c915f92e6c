"""RFC 3261 §17 transactions (with RFC 6026), driven as call flows.

Each flow is a table: at time t, an input (the client starts, a message
arrives, the TU sends a response, a timer fires) → the datagrams put on the
wire (by method or status code), the events for the TU, and the state after.
A "timer" row also checks that ``next_timer()`` said t. The last tests run a
client and a server in memory over a link that drops chosen datagrams.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from switch.sip.message import Request, Response, parse_message
from switch.sip.transaction import (
    AckReceived,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    Event,
    RequestReceived,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    State,
    Timer,
    Transaction,
    TransactionTable,
    ack_for_non_2xx,
)

TORTURE = Path(__file__).parent.parent / "torture" / "rfc4475"


def sip(text: str) -> Request | Response:
    return parse_message(text.replace("\n", "\r\n").encode())


def request(text: str) -> Request:
    msg = sip(text)
    assert isinstance(msg, Request)
    return msg


def response(text: str) -> Response:
    msg = sip(text)
    assert isinstance(msg, Response)
    return msg


def answer(req: Request, status: int, tag: str = "8321234356") -> Response:
    """The UAS's response to ``req``, as the peer would parse it off the wire."""
    msg = parse_message(bytes(req.response(status, to_tag=tag)))
    assert isinstance(msg, Response)
    return msg


# RFC 3665 §2.1-style call: Alice's phone, through a proxy, to Bob.
INVITE = """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101
Max-Forwards: 69
Record-Route: <sip:ss1.atlanta.example.com;lr>
Route: <sip:ss2.biloxi.example.com;lr>
Route: <sip:ss3.biloxi.example.com;lr>
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com>
Content-Length: 0

"""

BUSY = """\
SIP/2.0 486 Busy Here
Via: SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Content-Length: 0

"""

# The ACK §17.1.1.3 asks for: the INVITE's Request-URI, top Via, From,
# Call-ID and Route; the To of the 486; CSeq number 1 with method ACK.
BUSY_ACK = """\
ACK sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1
Max-Forwards: 69
Route: <sip:ss2.biloxi.example.com;lr>
Route: <sip:ss3.biloxi.example.com;lr>
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 ACK
Content-Length: 0

"""

BYE = """\
BYE sip:alice@client.atlanta.example.com SIP/2.0
Via: SIP/2.0/UDP client.biloxi.example.com:5060;branch=z9hG4bKnashds7
Max-Forwards: 70
From: Bob <sip:bob@biloxi.example.com>;tag=8321234356
To: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 BYE
Content-Length: 0

"""


def uac_invite(transport: str = "UDP") -> Request:
    """The INVITE as Alice's phone sends it: one Via, its own."""
    return request(
        INVITE.replace("Via: SIP/2.0/UDP ss1.atlanta.example.com:5060;branch=z9hG4bK2d4790.1\n", "")
        .replace("SIP/2.0/UDP client", f"SIP/2.0/{transport} client")
        .replace(";received=192.0.2.101", "")
    )


def ack_for_2xx(invite: Request) -> Request:
    """The UAC core's ACK for a 2xx: its own transaction, a new branch (§13.2.2.4)."""
    text = bytes(ack_for_non_2xx(invite, answer(invite, 200))).decode()
    return request(re.sub(r"branch=[^;\n]+", "branch=z9hG4bK5ack", text.replace("\r\n", "\n")))


def cancel_for(invite: Request) -> Request:
    """The CANCEL of §9.1: the INVITE's Request-URI, top Via, From, To, Call-ID, CSeq number."""
    lines = [f"CANCEL {invite.uri} SIP/2.0", f"Via: {invite.headers.get_all('Via')[0]}"]
    lines += [f"{name}: {invite.headers.get(name)}" for name in ("From", "To", "Call-ID")]
    lines += [f"CSeq: {invite.cseq.number} CANCEL", "Max-Forwards: 70", "Content-Length: 0", "", ""]
    return request("\n".join(lines))


def parse_message_file(name: str) -> Request:
    msg = parse_message((TORTURE / name).read_bytes())
    assert isinstance(msg, Request)
    return msg


# -- the flow runner -----------------------------------------------------------

# CREATED: the row only checks what constructing a server transaction at t put out
START, TIMER, CREATED = "start", "timer", "created"


@dataclass(frozen=True)
class Send:
    """The TU passes a response to the server transaction."""

    response: Response


Action = str | Request | Response | Send
Row = tuple[float, Action, list[str], list[str], State]


def label(data: bytes) -> str:
    msg = parse_message(data)
    return msg.method if isinstance(msg, Request) else str(msg.status)


def describe(event: Event) -> str:
    if isinstance(event, ResponseReceived):
        return f"ResponseReceived {event.response.status}"
    if isinstance(event, RequestReceived):
        return f"RequestReceived {event.request.method}"
    return type(event).__name__


def run(txn: Transaction, rows: list[Row]) -> None:
    for t, action, sent, events, state in rows:
        if action == TIMER:
            assert txn.next_timer() == t, f"t={t}: timer due at {txn.next_timer()}"
            txn.handle_timer(t)
        elif action == START:
            assert isinstance(txn, ClientTransaction)
            txn.start(t)
        elif isinstance(action, Send):
            assert isinstance(txn, ServerTransaction)
            txn.send_response(action.response, t)
        elif isinstance(action, Response):
            assert isinstance(txn, ClientTransaction)
            txn.receive(action, t)
        elif isinstance(action, Request):
            assert isinstance(txn, ServerTransaction)
            txn.receive(action, t)
        got = (
            [label(d) for d in txn.datagrams_to_send()],
            [describe(e) for e in txn.events()],
            txn.state,
        )
        assert got == (sent, events, state), f"t={t} {action!r}"


# -- client INVITE (§17.1.1) ---------------------------------------------------


def test_client_invite_retransmits_on_timer_a_until_timer_b() -> None:
    txn = ClientInviteTransaction(uac_invite())
    run(
        txn,
        [
            (0.0, START, ["INVITE"], [], State.CALLING),
            (0.5, TIMER, ["INVITE"], [], State.CALLING),  # Timer A = T1
            (1.5, TIMER, ["INVITE"], [], State.CALLING),  # 2*T1
            (3.5, TIMER, ["INVITE"], [], State.CALLING),  # 4*T1
            (7.5, TIMER, ["INVITE"], [], State.CALLING),  # 8*T1
            (15.5, TIMER, ["INVITE"], [], State.CALLING),  # 16*T1, no T2 cap for INVITE
            (31.5, TIMER, ["INVITE"], [], State.CALLING),
            (32.0, TIMER, [], ["Timeout", "Terminated"], State.TERMINATED),  # Timer B = 64*T1
        ],
    )
    assert txn.next_timer() is None


def test_client_invite_retransmission_is_the_same_bytes() -> None:
    txn = ClientInviteTransaction(uac_invite())
    txn.start(0.0)
    txn.handle_timer(0.5)
    first, again = txn.datagrams_to_send()
    assert first is again
    assert parse_message(first).headers.get("Call-ID") == uac_invite().call_id


def test_client_invite_non_2xx_is_acked_and_absorbed_until_timer_d() -> None:
    invite = uac_invite()
    txn = ClientInviteTransaction(invite)
    run(
        txn,
        [
            (0.0, START, ["INVITE"], [], State.CALLING),
            (0.5, TIMER, ["INVITE"], [], State.CALLING),
            (0.7, answer(invite, 180), [], ["ResponseReceived 180"], State.PROCEEDING),
        ],
    )
    assert txn.next_timer() is None  # 1xx stops Timers A and B
    busy = answer(invite, 486)
    run(
        txn,
        [
            (0.9, answer(invite, 180), [], ["ResponseReceived 180"], State.PROCEEDING),
            (2.0, busy, ["ACK"], ["ResponseReceived 486"], State.COMPLETED),
            (2.5, busy, ["ACK"], [], State.COMPLETED),  # retransmitted final: ACK again
            (3.5, answer(invite, 180), [], [], State.COMPLETED),
            (34.0, TIMER, [], ["Terminated"], State.TERMINATED),  # Timer D = 32 s
            (35.0, busy, [], [], State.TERMINATED),
        ],
    )


def test_client_invite_builds_the_ack_of_section_17_1_1_3() -> None:
    invite = request(INVITE)  # a proxy's INVITE: two Vias, two Routes
    txn = ClientInviteTransaction(invite)
    txn.start(0.0)
    txn.datagrams_to_send()
    txn.receive(response(BUSY), 1.0)
    (ack,) = txn.datagrams_to_send()
    assert ack == BUSY_ACK.replace("\n", "\r\n").encode()
    txn.receive(response(BUSY), 1.5)
    assert txn.datagrams_to_send() == [ack]


def test_client_invite_2xx_is_passed_up_and_the_ack_is_the_tus() -> None:
    invite = uac_invite()
    run(
        ClientInviteTransaction(invite),
        [
            (0.0, START, ["INVITE"], [], State.CALLING),
            (
                0.3,
                answer(invite, 200),
                [],
                ["ResponseReceived 200", "Terminated"],
                State.TERMINATED,
            ),
        ],
    )


def test_client_invite_over_tcp_does_not_retransmit_and_timer_d_is_zero() -> None:
    invite = uac_invite("TCP")
    txn = ClientInviteTransaction(invite)
    assert txn.reliable
    run(txn, [(0.0, START, ["INVITE"], [], State.CALLING)])
    assert txn.armed_timers() == {Timer.B: 32.0}  # no Timer A
    run(
        txn,
        [
            (
                1.0,
                answer(invite, 486),
                ["ACK"],
                ["ResponseReceived 486", "Terminated"],
                State.TERMINATED,
            ),
        ],
    )


def test_client_needs_an_rfc3261_branch() -> None:
    with pytest.raises(ValueError, match="branch"):
        ClientInviteTransaction(parse_message_file("inv2543.dat"))


# -- client non-INVITE (§17.1.2) -------------------------------------------------


def test_client_non_invite_timer_e_doubles_to_t2_then_f_times_out() -> None:
    bye = request(BYE)
    run(
        ClientNonInviteTransaction(bye),
        [
            (0.0, START, ["BYE"], [], State.TRYING),
            (0.5, TIMER, ["BYE"], [], State.TRYING),  # Timer E = T1
            (1.5, TIMER, ["BYE"], [], State.TRYING),  # 2*T1
            (3.5, TIMER, ["BYE"], [], State.TRYING),  # 4*T1
            (7.5, TIMER, ["BYE"], [], State.TRYING),  # 8*T1 = T2
            (11.5, TIMER, ["BYE"], [], State.TRYING),  # capped at T2
            (12.0, answer(bye, 100), [], ["ResponseReceived 100"], State.PROCEEDING),
            (15.5, TIMER, ["BYE"], [], State.PROCEEDING),  # in Proceeding: every T2
            (19.5, TIMER, ["BYE"], [], State.PROCEEDING),
            (23.5, TIMER, ["BYE"], [], State.PROCEEDING),
            (27.5, TIMER, ["BYE"], [], State.PROCEEDING),
            (31.5, TIMER, ["BYE"], [], State.PROCEEDING),
            (32.0, TIMER, [], ["Timeout", "Terminated"], State.TERMINATED),  # Timer F = 64*T1
        ],
    )


def test_client_non_invite_proceeding_retransmits_at_t2_from_the_first_e() -> None:
    bye = request(BYE)
    run(
        ClientNonInviteTransaction(bye),
        [
            (0.0, START, ["BYE"], [], State.TRYING),
            (0.1, answer(bye, 100), [], ["ResponseReceived 100"], State.PROCEEDING),
            (0.5, TIMER, ["BYE"], [], State.PROCEEDING),  # the E armed in Trying
            (4.5, TIMER, ["BYE"], [], State.PROCEEDING),  # then T2
        ],
    )


def test_client_non_invite_final_then_timer_k() -> None:
    bye = request(BYE)
    ok = answer(bye, 200)
    run(
        ClientNonInviteTransaction(bye),
        [
            (0.0, START, ["BYE"], [], State.TRYING),
            (0.5, TIMER, ["BYE"], [], State.TRYING),
            (0.6, ok, [], ["ResponseReceived 200"], State.COMPLETED),
            (1.0, ok, [], [], State.COMPLETED),  # absorbed
            (5.6, TIMER, [], ["Terminated"], State.TERMINATED),  # Timer K = T4
        ],
    )


def test_client_non_invite_over_tcp_timer_k_is_zero() -> None:
    bye = request(BYE.replace("SIP/2.0/UDP", "SIP/2.0/TCP"))
    txn = ClientNonInviteTransaction(bye)
    run(txn, [(0.0, START, ["BYE"], [], State.TRYING)])
    assert txn.armed_timers() == {Timer.F: 32.0}  # no Timer E
    run(
        txn,
        [
            (0.2, answer(bye, 200), [], ["ResponseReceived 200", "Terminated"], State.TERMINATED),
        ],
    )


def test_timers_follow_t1_t2_t4_given_to_the_constructor() -> None:
    txn = ClientNonInviteTransaction(request(BYE), t1=1.0, t2=2.0, t4=3.0)
    txn.start(0.0)
    fired = []
    while (t := txn.next_timer()) is not None and t < 64.0:
        fired.append(t)
        txn.handle_timer(t)
    assert fired[:4] == [1.0, 3.0, 5.0, 7.0]  # E: T1, then capped at T2
    assert txn.next_timer() == 64.0  # F = 64*T1


# -- server non-INVITE (§17.2.2) -------------------------------------------------


def test_server_non_invite_resends_the_last_response_until_timer_j() -> None:
    bye = request(BYE)
    run(
        ServerNonInviteTransaction(bye, 0.0),
        [
            (0.0, CREATED, [], ["RequestReceived BYE"], State.TRYING),
            (0.5, bye, [], [], State.TRYING),  # no response yet: discarded
            (0.6, Send(answer(bye, 100)), ["100"], [], State.PROCEEDING),
            (1.5, bye, ["100"], [], State.PROCEEDING),
            (1.6, Send(answer(bye, 200)), ["200"], [], State.COMPLETED),
            (3.5, bye, ["200"], [], State.COMPLETED),
            (3.6, Send(answer(bye, 500)), [], [], State.COMPLETED),  # a second final: discarded
            (33.6, TIMER, [], ["Terminated"], State.TERMINATED),  # Timer J = 64*T1
        ],
    )


def test_server_non_invite_over_tcp_timer_j_is_zero() -> None:
    bye = request(BYE.replace("SIP/2.0/UDP", "SIP/2.0/TCP"))
    run(
        ServerNonInviteTransaction(bye, 0.0),
        [
            (0.0, CREATED, [], ["RequestReceived BYE"], State.TRYING),
            (0.1, Send(answer(bye, 200)), ["200"], ["Terminated"], State.TERMINATED),
        ],
    )


# -- server INVITE (§17.2.1, RFC 6026) ------------------------------------------


def test_server_invite_non_2xx_is_retransmitted_on_timer_g_until_the_ack() -> None:
    invite = request(INVITE)
    txn = ServerInviteTransaction(invite, 0.0)
    run(
        txn,
        [
            (0.0, CREATED, [], ["RequestReceived INVITE"], State.PROCEEDING),
            (0.2, TIMER, ["100"], [], State.PROCEEDING),  # §17.2.1: the TU was silent 200 ms
            (0.5, invite, ["100"], [], State.PROCEEDING),  # retransmission: last 1xx again
            (1.0, Send(answer(invite, 180)), ["180"], [], State.PROCEEDING),
            (1.5, invite, ["180"], [], State.PROCEEDING),
            (2.0, Send(answer(invite, 486)), ["486"], [], State.COMPLETED),
            (2.5, TIMER, ["486"], [], State.COMPLETED),  # Timer G = T1
            (3.5, TIMER, ["486"], [], State.COMPLETED),  # 2*T1
            (3.6, invite, ["486"], [], State.COMPLETED),
            (5.5, TIMER, ["486"], [], State.COMPLETED),  # 4*T1
            (9.5, TIMER, ["486"], [], State.COMPLETED),  # 8*T1 = T2
            (13.5, TIMER, ["486"], [], State.COMPLETED),  # capped at T2
            (13.6, request(BUSY_ACK), [], [], State.CONFIRMED),  # not passed up
            (13.7, request(BUSY_ACK), [], [], State.CONFIRMED),  # absorbed
            (13.8, invite, [], [], State.CONFIRMED),  # absorbed
            (18.6, TIMER, [], ["Terminated"], State.TERMINATED),  # Timer I = T4
        ],
    )


def test_server_invite_sends_no_100_when_the_tu_answers_within_200_ms() -> None:
    invite = request(INVITE)
    txn = ServerInviteTransaction(invite, 0.0)
    assert txn.armed_timers() == {Timer.TRYING: 0.2}
    txn.send_response(answer(invite, 180), 0.1)
    assert [label(d) for d in txn.datagrams_to_send()] == ["180"]
    assert txn.next_timer() is None


def test_server_invite_100_trying_copies_timestamp_and_has_no_tag() -> None:
    invite = request(INVITE.replace("CSeq: 1 INVITE\n", "CSeq: 1 INVITE\nTimestamp: 54\n"))
    txn = ServerInviteTransaction(invite, 10.0)
    txn.handle_timer(10.2)
    (trying,) = txn.datagrams_to_send()
    msg = parse_message(trying)
    assert isinstance(msg, Response)
    assert (msg.status, msg.headers.get("Timestamp"), msg.to.tag) == (100, "54", None)


def test_server_invite_timer_h_gives_up_waiting_for_the_ack() -> None:
    invite = request(INVITE)
    txn = ServerInviteTransaction(invite, 0.0)
    txn.send_response(answer(invite, 603), 0.1)
    txn.datagrams_to_send()
    fired = []
    while (t := txn.next_timer()) is not None:
        fired.append(t)
        txn.handle_timer(t)
        if not txn.terminated:
            assert [label(d) for d in txn.datagrams_to_send()] == ["603"]
    assert fired == [0.6, 1.6, 3.6, 7.6, 11.6, 15.6, 19.6, 23.6, 27.6, 31.6, 32.1]
    assert [describe(e) for e in txn.events()] == [
        "RequestReceived INVITE",
        "Timeout",
        "Terminated",
    ]


def test_server_invite_accepted_absorbs_invites_and_passes_acks_rfc6026() -> None:
    invite = request(INVITE)
    ok = answer(invite, 200)
    run(
        ServerInviteTransaction(invite, 0.0),
        [
            (0.0, CREATED, [], ["RequestReceived INVITE"], State.PROCEEDING),
            (0.1, Send(ok), ["200"], [], State.ACCEPTED),
            (0.5, invite, [], [], State.ACCEPTED),  # absorbed: not a new request
            (0.6, Send(ok), ["200"], [], State.ACCEPTED),  # the UAS core's retransmission
            (0.7, Send(answer(invite, 486)), [], [], State.ACCEPTED),  # discarded
            (0.8, ack_for_2xx(invite), [], ["AckReceived"], State.ACCEPTED),
            (1.0, invite, [], [], State.ACCEPTED),
            (32.1, TIMER, [], ["Terminated"], State.TERMINATED),  # Timer L = 64*T1
        ],
    )


def test_server_invite_over_tcp_no_timer_g_and_timer_i_is_zero() -> None:
    invite = request(INVITE.replace("SIP/2.0/UDP ss1", "SIP/2.0/TCP ss1"))
    txn = ServerInviteTransaction(invite, 0.0)
    assert txn.reliable
    run(
        txn,
        [
            (0.0, CREATED, [], ["RequestReceived INVITE"], State.PROCEEDING),
            (1.0, Send(answer(invite, 486)), ["486"], [], State.COMPLETED),
        ],
    )
    assert txn.armed_timers() == {Timer.H: 33.0}  # Timer G not armed
    run(
        txn,
        [
            (1.2, request(BUSY_ACK), [], ["Terminated"], State.TERMINATED),  # Timer I = 0
        ],
    )


def test_reliable_is_the_callers_to_override() -> None:
    invite = request(INVITE)  # Via says UDP, the request came over a TCP connection
    txn = ServerInviteTransaction(invite, 0.0, reliable=True)
    txn.send_response(answer(invite, 486), 0.1)
    assert Timer.G not in txn.armed_timers()


# -- a client and a server in memory, over a lossy link ------------------------

LATENCY = 0.01


@dataclass
class Pair:
    """Alice's client transaction and Bob's server side, one datagram link between.

    ``drop`` names the datagrams lost on the way, as (label, n): the n-th
    datagram with that method or status code. ``tu`` is what Bob's TU sends,
    as (time, status).
    """

    client: ClientTransaction
    tu: list[tuple[float, int]]
    drop: set[tuple[str, int]] = field(default_factory=set)
    table: TransactionTable = field(default_factory=TransactionTable)
    client_events: list[str] = field(default_factory=list)
    server_events: list[str] = field(default_factory=list)
    wire: list[tuple[float, str, str]] = field(default_factory=list)  # (t, label, fate)
    _seen: Counter[str] = field(default_factory=Counter)
    _queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    request: Request | None = None  # what Bob's TU got (RequestReceived), to answer from

    def run(self, until: float = 100.0) -> None:
        self.client.start(0.0)
        self._flush(0.0)
        while True:
            times = [t for t, _ in self.tu] + [t for t, *_ in self._queue[:1]]
            times += [t for txn in self._all() if (t := txn.next_timer()) is not None]
            if not times or min(times) > until:
                return
            now = min(times)
            while self._queue and self._queue[0][0] <= now:
                _, _, to, data = heapq.heappop(self._queue)
                self._deliver(to, data, now)
            for txn in self._all():
                if (t := txn.next_timer()) is not None and t <= now:
                    txn.handle_timer(now)
            for t, status in [item for item in self.tu if item[0] <= now]:
                self.tu.remove((t, status))
                (server,) = (txn for txn in self.table if isinstance(txn, ServerTransaction))
                # The UAS core answers from the request it was given (RequestReceived): once
                # a final response is sent the transaction keeps only the request's Vias.
                assert self.request is not None
                server.send_response(answer(self.request, status), now)
            self._flush(now)

    def _all(self) -> list[Transaction]:
        return [self.client, *self.table]

    def _deliver(self, to: str, data: bytes, now: float) -> None:
        msg = parse_message(data)
        if to == "client":
            assert isinstance(msg, Response)
            self.client.receive(msg, now)
            return
        assert isinstance(msg, Request)
        txn = self.table.match_request(msg)
        if txn is not None:
            txn.receive(msg, now)
        elif msg.method == "INVITE":
            self.table.add(ServerInviteTransaction(msg, now))
            self.request = msg
        elif msg.method == "ACK":
            self.server_events.append("ACK to the UAS core")
        else:
            self.table.add(ServerNonInviteTransaction(msg, now))
            self.request = msg

    def _flush(self, now: float) -> None:
        outputs = [("server", self.client)] + [("client", txn) for txn in self.table]
        for to, txn in outputs:
            for data in txn.datagrams_to_send():
                name = label(data)
                self._seen[name] += 1
                lost = (name, self._seen[name]) in self.drop
                self.wire.append((round(now, 6), name, "lost" if lost else "sent"))
                if not lost:
                    heapq.heappush(self._queue, (now + LATENCY, len(self.wire), to, data))
        self.client_events += [describe(e) for e in self.client.events()]
        for txn in list(self.table):
            self.server_events += [describe(e) for e in txn.events()]
            if txn.terminated:
                self.table.remove(txn)


def test_pair_invite_rejected_over_a_lossy_link() -> None:
    # lost: the first INVITE, the first 486 and the first ACK
    pair = Pair(
        ClientInviteTransaction(uac_invite()),
        tu=[(1.0, 486)],
        drop={("INVITE", 1), ("486", 1), ("ACK", 1)},
    )
    pair.run()
    assert pair.wire == [
        (0.0, "INVITE", "lost"),
        (0.5, "INVITE", "sent"),  # Timer A
        (0.71, "100", "sent"),  # the server's 200 ms rule
        (1.0, "486", "lost"),
        (1.5, "486", "sent"),  # Timer G
        (1.51, "ACK", "lost"),
        (2.5, "486", "sent"),  # Timer G, doubled
        (2.51, "ACK", "sent"),  # the client's Completed state ACKs again
    ]
    assert pair.client_events == ["ResponseReceived 100", "ResponseReceived 486", "Terminated"]
    assert pair.server_events == ["RequestReceived INVITE", "Terminated"]
    assert pair.client.terminated and len(pair.table) == 0


def test_pair_invite_accepted_with_the_first_200_lost() -> None:
    # RFC 6026: the retransmitted INVITE meets the Accepted state, not the TU
    pair = Pair(
        ClientInviteTransaction(uac_invite()),
        tu=[(0.05, 200), (0.55, 200)],  # the UAS core retransmits its 2xx after T1
        drop={("200", 1)},
    )
    pair.run()
    assert pair.wire == [
        (0.0, "INVITE", "sent"),
        (0.05, "200", "lost"),
        (0.5, "INVITE", "sent"),  # Timer A: absorbed in Accepted
        (0.55, "200", "sent"),
    ]
    assert pair.client_events == ["ResponseReceived 200", "Terminated"]
    assert pair.server_events == ["RequestReceived INVITE", "Terminated"]


def test_pair_bye_with_request_and_response_lost() -> None:
    pair = Pair(
        ClientNonInviteTransaction(request(BYE)),
        tu=[(1.0, 200)],
        drop={("BYE", 1), ("200", 1)},
    )
    pair.run()
    assert pair.wire == [
        (0.0, "BYE", "lost"),
        (0.5, "BYE", "sent"),  # Timer E
        (1.0, "200", "lost"),
        (1.5, "BYE", "sent"),  # Timer E: Completed answers it ...
        (1.51, "200", "sent"),  # ... with the same 200
    ]
    assert pair.client_events == ["ResponseReceived 200", "Terminated"]
    assert pair.server_events == ["RequestReceived BYE", "Terminated"]
    assert len(pair.table) == 0


def test_pair_invite_times_out_when_every_request_is_lost() -> None:
    pair = Pair(
        ClientInviteTransaction(uac_invite()),
        tu=[],
        drop={("INVITE", n) for n in range(1, 10)},
    )
    pair.run()
    assert [t for t, _, _ in pair.wire] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert pair.client_events == ["Timeout", "Terminated"]
    assert pair.server_events == []


def test_ack_received_event_carries_the_ack() -> None:
    invite = request(INVITE)
    txn = ServerInviteTransaction(invite, 0.0)
    txn.send_response(answer(invite, 200), 0.1)
    ack = ack_for_2xx(invite)
    txn.receive(ack, 0.2)
    assert txn.events()[-1] == AckReceived(ack)
