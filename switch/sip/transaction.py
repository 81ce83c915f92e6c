"""SIP transactions as sans-IO state machines (RFC 3261 §17, RFC 6026).

A transaction owns one request, its responses and — for a non-2xx final
response to an INVITE — the ACK. It retransmits over unreliable transports,
absorbs the peer's retransmissions and runs the RFC timers. It never touches a
socket or a clock: the caller passes ``now`` (seconds, any monotonic origin)
into every input and drains the outputs.

Inputs                                   Outputs (drained by the caller)
  ClientXTransaction(request).start(now)   datagrams_to_send() -> list[bytes]
  client.receive(response, now)            events() -> list[Event]
  ServerXTransaction(request, now)         next_timer() -> float | None (absolute)
  server.receive(request, now)
  server.send_response(response, now)
  handle_timer(now)

The bytes are for the peer the request came from / goes to; the transport
(§18) picks the address. Each message is serialized once and its bytes are
reused for every retransmission. Once an INVITE server transaction has sent
its final response, ``request`` keeps only the Request-Line and the Vias
(``Request.routing_only``): that is all Accepted, Completed and Confirmed
need, and the TU answers from the request RequestReceived gave it.

Events for the TU (frozen dataclasses):
  RequestReceived(request)    the request that created a server transaction;
                              retransmissions of it are absorbed
  ResponseReceived(response)  every response a client transaction passes up
                              (retransmitted finals in Completed are absorbed)
  AckReceived(request)        an ACK for a 2xx reaching an INVITE server
                              transaction in Accepted (RFC 6026 §7.1)
  Timeout()                   Timer B/F: no final response, act as a 408
                              (§8.1.3.1); Timer H: the ACK never came
  Terminated()                the transaction is over; drop it from the table

States carry the RFC names (``State``); timers too (``Timer``), including the
§17.2.1 "200 ms" rule as ``Timer.TRYING``. Over a reliable transport (TCP, TLS,
SCTP, WS) Timers A, E and G are never armed and Timers D, I, J and K are zero:
the transaction moves to Terminated at once.

Matching (§17.1.3, §17.2.3) is by key: ``client_key(response)``,
``server_key(request)`` and ``invite_key_for_cancel(cancel)``; see their
docstrings for the RFC 2543 fallback. ``TransactionTable`` indexes live
transactions by those keys.

Not done here: choosing the transport and address (§18, RFC 3263); the
2xx response's retransmission and the ACK for a 2xx (UAS and UAC cores,
§13.3.1.4, §13.2.2.4); building CANCEL (§9.1); Timer C (proxies); transport
errors (§17.1.4). The client INVITE transaction ends on a 2xx as in RFC 3261
(no RFC 6026 Accepted state on that side): 2xx retransmissions and 2xx from
other forks match no transaction and go to the UAC core.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Final, TypeVar

from switch.sip.errors import ParseError
from switch.sip.headers import BRANCH_MAGIC, Via
from switch.sip.message import Headers, Message, Request, Response

T1 = 0.5  # RTT estimate (§17.1.1.1)
T2 = 4.0  # the longest retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # the longest a message stays in the network
TIMER_D = 32.0  # §17.1.1.2: "at least 32 seconds" for unreliable transports
TRYING_DELAY = 0.2  # §17.2.1: the "200 ms" after which a silent TU gets a 100 Trying sent for it
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"  # RFC 6026 §7.1, server INVITE only
    TERMINATED = "Terminated"


class Timer(enum.Enum):
    A = "A"  # client INVITE: retransmit the request, doubling (§17.1.1.2)
    B = "B"  # client INVITE: no response at all, give up
    D = "D"  # client INVITE: stay in Completed to absorb retransmitted finals
    E = "E"  # client non-INVITE: retransmit, doubling up to T2 (§17.1.2.2)
    F = "F"  # client non-INVITE: no final response, give up
    K = "K"  # client non-INVITE: stay in Completed to absorb retransmitted responses
    TRYING = "200 ms"  # server INVITE: send 100 Trying for a silent TU (§17.2.1)
    G = "G"  # server INVITE: retransmit the non-2xx final, doubling up to T2 (§17.2.1)
    H = "H"  # server INVITE: the ACK never came, give up
    I = "I"  # noqa: E741 - server INVITE: stay in Confirmed to absorb retransmitted ACKs
    J = "J"  # server non-INVITE: stay in Completed to answer retransmissions (§17.2.2)
    L = "L"  # server INVITE: stay in Accepted to absorb retransmitted INVITEs (RFC 6026)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: Response


@dataclass(frozen=True, slots=True)
class AckReceived:
    request: Request


@dataclass(frozen=True, slots=True)
class Timeout:
    pass


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Event = RequestReceived | ResponseReceived | AckReceived | Timeout | Terminated


class Transaction:
    """What every transaction shares: its timers and the outputs the caller drains."""

    key: Hashable

    def __init__(
        self,
        request: Request,
        state: State,
        reliable: bool | None,
        t1: float,
        t2: float,
        t4: float,
    ) -> None:
        self.request = request
        self.state = state
        if reliable is None:
            reliable = request.top_via.transport in RELIABLE_TRANSPORTS
        self.reliable = reliable
        self.t1, self.t2, self.t4 = t1, t2, t4
        self._timers: dict[Timer, float] = {}
        self._datagrams: list[bytes] = []
        self._events: list[Event] = []

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def next_timer(self) -> float | None:
        """When ``handle_timer`` is next due (absolute time), or None."""
        return min(self._timers.values(), default=None)

    def armed_timers(self) -> dict[Timer, float]:
        """The armed timers and their deadlines (for tests and debugging)."""
        return dict(self._timers)

    def handle_timer(self, now: float) -> None:
        """Fire the timers due at ``now``, earliest first, each at most once per call."""
        due = sorted(self._timers.items(), key=lambda item: item[1])
        for timer, deadline in due:
            if deadline > now:
                break
            if self._timers.get(timer) != deadline:
                continue  # stopped or re-armed by a timer that fired before it
            del self._timers[timer]
            self._on_timer(timer, now)

    def datagrams_to_send(self) -> list[bytes]:
        datagrams, self._datagrams = self._datagrams, []
        return datagrams

    def events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _on_timer(self, timer: Timer, now: float) -> None:
        raise NotImplementedError

    def _arm(self, timer: Timer, now: float, delay: float) -> None:
        self._timers[timer] = now + delay

    def _stop(self, *timers: Timer) -> None:
        for timer in timers:
            self._timers.pop(timer, None)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._timers.clear()
        self._events.append(Terminated())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value}>"


# -- client transactions (§17.1) ----------------------------------------------


class ClientTransaction(Transaction):
    """Sends ``request`` on ``start`` and passes the responses it matches to the TU."""

    _initial: State

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
    ) -> None:
        branch = request.top_via.branch
        if branch is None or not _is_rfc3261_branch(branch):
            raise ValueError("a client transaction needs an RFC 3261 Via branch (§8.1.1.7)")
        super().__init__(request, self._initial, reliable, t1, t2, t4)
        self.key = (branch.lower(), request.method)
        self._request_bytes = bytes(request)
        self._interval = t1  # the current retransmit interval of Timer A or E
        self._started = False

    def start(self, now: float) -> None:
        """Pass the request to the transport and start the timers."""
        if self._started:
            raise RuntimeError(f"{self!r} already started")
        self._started = True
        self._datagrams.append(self._request_bytes)
        self._start_timers(now)

    def receive(self, response: Response, now: float) -> None:
        raise NotImplementedError

    def _start_timers(self, now: float) -> None:
        raise NotImplementedError


class ClientInviteTransaction(ClientTransaction):
    """§17.1.1, Figure 5: Calling → Proceeding → Completed → Terminated.

    Calling: Timer A retransmits (T1, 2*T1, 4*T1 … over unreliable transports),
    Timer B (64*T1) gives up with Timeout. A 1xx moves to Proceeding and stops
    both. A 2xx is passed up and ends the transaction; its ACK is the TU's.
    A 300-699 is passed up, acknowledged here (§17.1.1.3) and the transaction
    waits in Completed for Timer D, re-sending the ACK for each retransmission.
    """

    _initial = State.CALLING

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
    ) -> None:
        super().__init__(request, reliable=reliable, t1=t1, t2=t2, t4=t4)
        self._ack_bytes = b""

    def _start_timers(self, now: float) -> None:
        if not self.reliable:
            self._arm(Timer.A, now, self._interval)
        self._arm(Timer.B, now, 64 * self.t1)

    def receive(self, response: Response, now: float) -> None:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self._events.append(ResponseReceived(response))
            self._stop(Timer.A, Timer.B)
            if status < 200:
                self.state = State.PROCEEDING
            elif status < 300:
                self._terminate()
            else:
                self._ack_bytes = bytes(ack_for_non_2xx(self.request, response))
                self._datagrams.append(self._ack_bytes)
                self.state = State.COMPLETED
                if self.reliable:
                    self._terminate()
                else:
                    # Timer D also outlasts the server's Timer H when T1 is raised
                    self._arm(Timer.D, now, max(TIMER_D, 64 * self.t1))
        elif self.state is State.COMPLETED and status >= 300:
            self._datagrams.append(self._ack_bytes)  # a retransmitted final: ACK it again

    def _on_timer(self, timer: Timer, now: float) -> None:
        if timer is Timer.A:
            self._datagrams.append(self._request_bytes)
            self._interval *= 2
            self._arm(Timer.A, now, self._interval)
        elif timer is Timer.B:
            self._events.append(Timeout())
            self._terminate()
        elif timer is Timer.D:
            self._terminate()


class ClientNonInviteTransaction(ClientTransaction):
    """§17.1.2, Figure 6: Trying → Proceeding → Completed → Terminated.

    Timer E retransmits at T1, 2*T1 … capped at T2, and at T2 in Proceeding;
    Timer F (64*T1) gives up with Timeout. The first final response is passed
    up; the transaction then absorbs retransmissions until Timer K (T4).
    """

    _initial = State.TRYING

    def _start_timers(self, now: float) -> None:
        if not self.reliable:
            self._arm(Timer.E, now, self._interval)
        self._arm(Timer.F, now, 64 * self.t1)

    def receive(self, response: Response, now: float) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return  # Completed absorbs retransmitted responses
        self._events.append(ResponseReceived(response))
        if response.status < 200:
            self.state = State.PROCEEDING
            return
        self._stop(Timer.E, Timer.F)
        self.state = State.COMPLETED
        if self.reliable:
            self._terminate()
        else:
            self._arm(Timer.K, now, self.t4)

    def _on_timer(self, timer: Timer, now: float) -> None:
        if timer is Timer.E:
            self._datagrams.append(self._request_bytes)
            if self.state is State.PROCEEDING:
                self._interval = self.t2
            else:
                self._interval = min(2 * self._interval, self.t2)
            self._arm(Timer.E, now, self._interval)
        elif timer is Timer.F:
            self._events.append(Timeout())
            self._terminate()
        elif timer is Timer.K:
            self._terminate()


def ack_for_non_2xx(invite: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a 300-699 response (§17.1.1.3).

    Request-URI, From and Call-ID of the INVITE; only its top Via; To of the
    response (with the tag); the INVITE's CSeq number with method ACK; the
    INVITE's Route header fields. Values are copied as written.
    """
    headers = Headers()
    headers.add("Via", invite.headers.get_all("Via")[0])
    headers.add("Max-Forwards", invite.headers.get("Max-Forwards") or "70")
    for route in invite.headers.values("Route"):
        headers.add("Route", route)
    headers.add("From", _field(invite, "From"))
    headers.add("To", _field(response, "To"))
    headers.add("Call-ID", _field(invite, "Call-ID"))
    headers.add("CSeq", f"{invite.cseq.number} ACK")
    return Request("ACK", invite.uri, headers)


def _field(message: Message, name: str) -> str:
    value = message.headers.get(name)
    if value is None:
        raise ParseError(f"missing {name} header")
    return value


# -- server transactions (§17.2) ----------------------------------------------


class ServerTransaction(Transaction):
    """Created for a request that matched no transaction; passes it to the TU."""

    def __init__(
        self,
        request: Request,
        state: State,
        reliable: bool | None,
        t1: float,
        t2: float,
        t4: float,
    ) -> None:
        super().__init__(request, state, reliable, t1, t2, t4)
        self.key = server_key(request)
        self._provisional: bytes | None = None  # the last 1xx sent, for retransmitted requests
        self._final: bytes | None = None
        self._events.append(RequestReceived(request))

    def matches(self, request: Request) -> bool:
        """The part of §17.2.3 a key cannot hold (see ``server_key``)."""
        return True

    def receive(self, request: Request, now: float) -> None:
        raise NotImplementedError

    def send_response(self, response: Response, now: float) -> None:
        raise NotImplementedError

    @property
    def final_response(self) -> bytes | None:
        """The final response sent, as it went on the wire."""
        return self._final

    def _send(self, response: Response) -> bytes:
        data = bytes(response)
        self._datagrams.append(data)
        return data


class ServerInviteTransaction(ServerTransaction):
    """§17.2.1 with RFC 6026 §7.1, Figure 7 of RFC 6026.

    Proceeding: a 100 Trying goes out after 200 ms if the TU has sent nothing
    (``Timer.TRYING``); a retransmitted INVITE gets the last 1xx again.
    A 2xx moves to Accepted for Timer L (64*T1): retransmitted INVITEs are
    absorbed, 2xx retransmissions from the TU are sent, ACKs go to the TU.
    A 300-699 moves to Completed: Timer G retransmits it (T1 doubling to T2)
    and a retransmitted INVITE gets it again, until the ACK moves to Confirmed
    (absorbing ACKs for Timer I = T4) or Timer H (64*T1) gives up with Timeout.
    """

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool | None = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
    ) -> None:
        super().__init__(request, State.PROCEEDING, reliable, t1, t2, t4)
        self._rfc2543 = not _is_rfc3261_branch(request.top_via.branch)
        self._final_to_tag: str | None = None
        self._interval = t1  # the current Timer G interval
        self._arm(Timer.TRYING, now, TRYING_DELAY)

    def matches(self, request: Request) -> bool:
        """An RFC 2543 ACK must carry the To tag of the final response sent (§17.2.3)."""
        if self._rfc2543 and request.method == "ACK":
            return self.state is not State.PROCEEDING and request.to.tag == self._final_to_tag
        return True

    def receive(self, request: Request, now: float) -> None:
        if not self.matches(request):
            return
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self._stop(Timer.G, Timer.H)
                self.state = State.CONFIRMED
                if self.reliable:
                    self._terminate()
                else:
                    self._arm(Timer.I, now, self.t4)
            elif self.state is State.ACCEPTED:
                self._events.append(AckReceived(request))
        elif request.method == "INVITE":
            # Confirmed and Accepted absorb the retransmission (RFC 6026 §7.1)
            resend = {State.PROCEEDING: self._provisional, State.COMPLETED: self._final}
            data = resend.get(self.state)
            if data is not None:
                self._datagrams.append(data)

    def send_response(self, response: Response, now: float) -> None:
        """Send a TU's response; out of turn (e.g. a second final) it is discarded."""
        status = response.status
        if self.state is State.ACCEPTED and 200 <= status < 300:
            self._send(response)  # the UAS core retransmits its 2xx itself (§13.3.1.4)
            return
        if self.state is not State.PROCEEDING:
            return
        self._stop(Timer.TRYING)
        data = self._send(response)
        if status < 200:
            self._provisional = data
            return
        self._final_to_tag = response.to.tag
        # From here on only the Via matters (where a 2xx the TU resends goes); the TU keeps
        # the whole request for itself.
        self.request = self.request.routing_only()
        if status < 300:
            self.state = State.ACCEPTED
            self._arm(Timer.L, now, 64 * self.t1)
            return
        self._final = data
        self.state = State.COMPLETED
        if not self.reliable:
            self._arm(Timer.G, now, self._interval)
        self._arm(Timer.H, now, 64 * self.t1)

    def _on_timer(self, timer: Timer, now: float) -> None:
        if timer is Timer.TRYING:
            if self.state is State.PROCEEDING and self._provisional is None:
                trying = self.request.response(100)
                timestamp = self.request.headers.get("Timestamp")
                if timestamp is not None:
                    trying.headers.add("Timestamp", timestamp)  # §8.2.6.1
                self._provisional = self._send(trying)
        elif timer is Timer.G and self._final is not None:
            self._datagrams.append(self._final)
            self._interval = min(2 * self._interval, self.t2)
            self._arm(Timer.G, now, self._interval)
        elif timer is Timer.H:
            self._events.append(Timeout())
            self._terminate()
        elif timer in (Timer.I, Timer.L):
            self._terminate()


class ServerNonInviteTransaction(ServerTransaction):
    """§17.2.2, Figure 8: Trying → Proceeding → Completed → Terminated.

    Retransmitted requests are discarded in Trying and get the last response
    again in Proceeding and Completed. A final response starts Timer J (64*T1)
    in Completed; further responses from the TU are discarded.
    """

    def __init__(
        self,
        request: Request,
        now: float,
        *,
        reliable: bool | None = None,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
    ) -> None:
        super().__init__(request, State.TRYING, reliable, t1, t2, t4)

    def receive(self, request: Request, now: float) -> None:
        data = {State.PROCEEDING: self._provisional, State.COMPLETED: self._final}.get(self.state)
        if data is not None:
            self._datagrams.append(data)

    def send_response(self, response: Response, now: float) -> None:
        """Send a TU's response; after the final one it is discarded (§17.2.2)."""
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        data = self._send(response)
        if response.status < 200:
            self._provisional = data
            self.state = State.PROCEEDING
            return
        self._final = data
        self.state = State.COMPLETED
        if self.reliable:
            self._terminate()
        else:
            self._arm(Timer.J, now, 64 * self.t1)

    def _on_timer(self, timer: Timer, now: float) -> None:
        if timer is Timer.J:
            self._terminate()


# -- matching (§17.1.3, §17.2.3) ----------------------------------------------


def _is_rfc3261_branch(branch: str | None) -> bool:
    # RFC 4475 §3.1.2.4 (badbranch): the bare magic cookie identifies nothing,
    # so such a request falls back to RFC 2543 matching like one with no branch
    return branch is not None and branch.startswith(BRANCH_MAGIC) and branch != BRANCH_MAGIC


def client_key(response: Response) -> Hashable:
    """The key of the client transaction a response belongs to (§17.1.3).

    The top Via branch and the CSeq method: a CANCEL shares its INVITE's
    branch but not its method, so each gets its own responses.
    """
    branch = response.top_via.branch
    return (branch.lower() if branch is not None else None, response.cseq.method)


def server_key(request: Request) -> Hashable:
    """The key of the server transaction a request belongs to (§17.2.3).

    RFC 3261 branch: (branch, sent-by, method), with ACK keyed as INVITE, so
    the ACK for a non-2xx finds its INVITE transaction; a CANCEL keeps its own
    method and opens its own transaction (see ``invite_key_for_cancel``).
    Branches and hosts compare case-insensitively (§7.3.1).

    RFC 2543 fallback (no branch, or just "z9hG4bK"): Request-URI, To tag,
    From tag, Call-ID, CSeq number, the whole top Via and the method (INVITE
    for ACK). For INVITE and ACK the To tag is left out: the ACK carries the
    tag of the response, which the INVITE did not have, so the INVITE
    transaction checks it against the final it sent (``matches``). An INVITE
    that differs from a live one only in its To tag is taken as a
    retransmission of it; the client cannot send two INVITEs with one CSeq.
    """
    return _server_key(request, "INVITE" if request.method == "ACK" else request.method)


def invite_key_for_cancel(cancel: Request) -> Hashable:
    """The key of the INVITE server transaction a CANCEL cancels (§9.2)."""
    return _server_key(cancel, "INVITE")


def _server_key(request: Request, method: str) -> Hashable:
    via = request.top_via
    branch = via.branch
    if branch is not None and _is_rfc3261_branch(branch):
        return ("3261", branch.lower(), via.sent_by.lower(), method)
    to_tag = None if method == "INVITE" else request.to.tag
    via_text = str(Via(via.transport, via.host.lower(), via.port, via.params))
    call = (request.call_id, request.from_.tag, to_tag, request.cseq.number)
    return ("2543", request.uri, *call, via_text, method)


_T = TypeVar("_T", bound=Transaction)

# What a retired Accepted INVITE answers a retransmitted INVITE with: nothing.
ABSORB: Final = b""


class TransactionTable:
    """Live transactions by key, client and server apart; no I/O, no clock.

    The caller adds each transaction it creates and removes it when it
    reports ``Terminated``.

    Two server transactions do one thing until their last timer, and ``retire``
    keeps just that — the key, what to answer and the deadline — and frees the
    transaction and its parsed request:
    - a non-INVITE in Completed over UDP answers a retransmitted request with
      its final response until Timer J (§17.2.2);
    - an INVITE in Accepted absorbs retransmitted INVITEs until Timer L (RFC
      6026 §7.1; the UAS core resends its 2xx itself, and an ACK that reused the
      INVITE's branch goes to the core as any other ACK for a 2xx does).
    Under a REGISTER storm or a high call rate that is 32 s worth of
    transactions; as plain bytes and tuples they are not tracked by the
    garbage collector, whose full collections otherwise grew to pauses longer
    than T1 (bench/register_rate.py, bench/call_rate.py).
    """

    def __init__(self) -> None:
        self._clients: dict[Hashable, ClientTransaction] = {}
        self._servers: dict[Hashable, ServerTransaction] = {}
        self._retired: dict[Hashable, bytes] = {}
        self._retired_until: deque[tuple[float, Hashable]] = deque()

    def retire(self, txn: ServerTransaction) -> bool:
        """Replace ``txn`` by what it answers retransmissions with, when it has nothing else
        left to do: a Completed non-INVITE over UDP (its final response, until Timer J) or an
        Accepted INVITE (nothing: retransmissions are absorbed, until Timer L)."""
        until = txn.next_timer()
        answer: bytes | None = None
        if isinstance(txn, ServerNonInviteTransaction):
            if txn.state is State.COMPLETED and not txn.reliable:
                answer = txn.final_response
        elif isinstance(txn, ServerInviteTransaction) and txn.state is State.ACCEPTED:
            answer = ABSORB
        if answer is None or until is None:
            return False
        self.remove(txn)
        # Nothing of it acts any more: a late response from its TU is not sent (respond
        # checks ``terminated``), as it would have been discarded or resent by the core.
        txn._terminate()
        self._retired[txn.key] = answer
        self._retired_until.append((until, txn.key))
        return True

    def retired_response(self, request: Request) -> bytes | None:
        """What to resend for a retransmission of a retired transaction: its final response,
        or ``ABSORB`` (empty: send nothing). None: no retired transaction has the request."""
        return self._retired.get(server_key(request)) if self._retired else None

    def retired_invite(self, cancel: Request) -> bool:
        """Whether the INVITE a CANCEL names was answered 2xx and retired."""
        return invite_key_for_cancel(cancel) in self._retired

    def expire_retired(self, now: float) -> int:
        """Forget retired transactions whose Timer J or L has fired; returns how many."""
        expired = 0
        queue = self._retired_until
        # Timers J and L are both 64*T1, so deadlines arrive in the order they were set.
        while queue and queue[0][0] <= now:
            _, key = queue.popleft()
            self._retired.pop(key, None)
            expired += 1
        return expired

    def add(self, txn: _T) -> _T:
        if isinstance(txn, ServerTransaction):
            self._servers[txn.key] = txn
        elif isinstance(txn, ClientTransaction):
            self._clients[txn.key] = txn
        return txn

    def remove(self, txn: Transaction) -> None:
        table: dict[Hashable, ClientTransaction] | dict[Hashable, ServerTransaction]
        table = self._servers if isinstance(txn, ServerTransaction) else self._clients
        if table.get(txn.key) is txn:
            del table[txn.key]

    def match_response(self, response: Response) -> ClientTransaction | None:
        return self._clients.get(client_key(response))

    def match_request(self, request: Request) -> ServerTransaction | None:
        """The server transaction of a request; None means a new request, or an
        ACK for a 2xx that the TU handles itself."""
        txn = self._servers.get(server_key(request))
        return txn if txn is not None and txn.matches(request) else None

    def invite_for_cancel(self, cancel: Request) -> ServerInviteTransaction | None:
        txn = self._servers.get(invite_key_for_cancel(cancel))
        return txn if isinstance(txn, ServerInviteTransaction) else None

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers) + len(self._retired)

    def __iter__(self) -> Iterator[Transaction]:
        yield from self._clients.values()
        yield from self._servers.values()


__all__ = [
    "ABSORB",
    "T1",
    "T2",
    "T4",
    "AckReceived",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Event",
    "RequestReceived",
    "ResponseReceived",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "State",
    "Terminated",
    "Timeout",
    "Timer",
    "Transaction",
    "TransactionTable",
    "ack_for_non_2xx",
    "client_key",
    "invite_key_for_cancel",
    "server_key",
]
