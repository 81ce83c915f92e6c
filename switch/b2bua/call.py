"""One basic call through the B2BUA: the caller's leg A and the forks of leg B.

Leg A is the caller's INVITE, answered by us as its UAS. Leg B is one INVITE
per contact of the callee (forking, "ring all"), each a client transaction
of ours with its own Call-ID and tags. Provisional responses go back to A
(with their SDP, through the media session); the first 2xx wins (§13.2.2.4:
ACK it), the other forks get CANCEL with ``Reason: SIP;cause=200`` (RFC
3326), and A gets our own 200 with the winner's SDP. From then on each leg
is a ``Dialog`` and a BYE from either side ends both.

States (``CallState``): TRYING → RINGING → CONNECTED → DISCONNECTED, or
FAILED (every fork failed, or no answer in time) / CANCELLED (the caller
gave up). Call-control events (``CCEvent*``, the names of sippy's B2BUA)
are reported to the owner as the call moves.

In-dialog requests go to the address each leg's phone sent from (A) or was
registered from (B), not to its Contact: behind NAT that is the only
address that reaches it.

A re-INVITE from either phone (hold and unhold: RFC 3264 §8.4, the direction
attribute passes as sent) becomes a re-INVITE of ours in the other leg, its
SDP rewritten through the media session both ways; the other phone's 2xx is
ACKed when the sender's ACK arrives, with that ACK's body (a re-INVITE
without SDP gets the offer in the 2xx and answers in the ACK, §14.1). One
re-INVITE at a time: another one meanwhile gets 491 and the phones retry
(§14.1, glare). INFO and UPDATE pass through the same way, answered with
the other phone's response.

A first INVITE without SDP (late offer, §13.2.1) goes to B without SDP too;
B's 2xx carries the offer to A, and B's ACK waits for A's with the answer.
A 2xx whose SDP we cannot relay ends the call: ACK and BYE to B, 500 to A.

Targets may also be tried in turn (failover between gateways): when every
fork failed with a status that ``fails_over`` (408, 5xx), the next target of
the ``failover`` list gets the INVITE, within the same ring timeout.

Not done here: REFER, PRACK, early media without a 18x to A, and 3xx redirection.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from switch.b2bua.media import MediaSession
from switch.endpoint import ServerRequest, SipEndpoint, response_peer
from switch.sip.dialog import Dialog, DialogId
from switch.sip.errors import ParseError
from switch.sip.headers import NameAddr
from switch.sip.message import Headers, Request, Response, new_tag
from switch.sip.transaction import T1, T2, ClientTransaction
from switch.sip.uri import parse_uri
from switch.transport import Peer

log = structlog.get_logger()

# RFC 3326 §2, RFC 3261 §9.1: tells the other phones not to log a missed call.
REASON_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'


class CallState(enum.Enum):
    TRYING = "trying"
    RINGING = "ringing"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Side(enum.Enum):
    A = "caller"
    B = "callee"


@dataclass(frozen=True, slots=True)
class CCEventTry:
    caller: str
    callee: str
    forks: int


@dataclass(frozen=True, slots=True)
class CCEventRing:
    status: int


@dataclass(frozen=True, slots=True)
class CCEventConnect:
    pass


@dataclass(frozen=True, slots=True)
class CCEventDisconnect:
    by: Side | None  # None: the switch ended the call (no media, no ACK)


@dataclass(frozen=True, slots=True)
class CCEventFail:
    status: int
    reason: str


CCEvent = CCEventTry | CCEventRing | CCEventConnect | CCEventDisconnect | CCEventFail


@dataclass(frozen=True, slots=True)
class Target:
    """One contact of the callee and where to reach it."""

    uri: str
    peer: Peer
    from_uri: str | None = None  # who leg B says calls, if not the caller (a gateway's caller ID)


@dataclass(slots=True)
class Reinvite:
    """A re-INVITE from ``side`` on its way through the other leg (§14)."""

    incoming: ServerRequest
    side: Side
    ok: Response | None = None  # our 2xx to it, retransmitted until its ACK (§13.3.1.4)
    ack_cseq: int = 0  # the other leg's 2xx waits for that ACK to be ACKed
    timer: asyncio.TimerHandle | None = None


class Fork:
    """One INVITE of leg B to one contact."""

    def __init__(self, target: Target, request: Request) -> None:
        self.target = target
        self.request = request
        self.txn: ClientTransaction | None = None
        self.final: int | None = None


class Call:
    def __init__(
        self,
        endpoint: SipEndpoint,
        incoming: ServerRequest,
        media: MediaSession,
        *,
        ring_timeout: float,
        on_event: Callable[[Call, CCEvent], None],
        dialogs: dict[DialogId, Call],
    ) -> None:
        self.endpoint = endpoint
        self.incoming = incoming
        self.media = media
        self.ring_timeout = ring_timeout
        self.on_event = on_event
        self.dialogs = dialogs  # the owner's index of in-dialog requests, shared by all calls
        self.state = CallState.TRYING
        self.id = incoming.request.call_id  # the caller's Call-ID names the call in logs
        self.forks: list[Fork] = []
        self.a_dialog: Dialog | None = None
        self.b_dialog: Dialog | None = None
        self.b_peer: Peer | None = None
        self._a_ok: Response | None = None  # our 2xx to A, retransmitted until A's ACK
        self._timer: asyncio.TimerHandle | None = None  # ring timeout, then 2xx retransmission
        self._reinvite: Reinvite | None = None
        self._b_ack: int | None = None  # late offer: the CSeq of B's 2xx, ACKed with A's answer
        self._held_back: ServerRequest | None = None  # B's re-INVITE, until A's ACK comes
        self._callee_aor = ""
        self._offer = b""  # A's SDP as leg B sees it
        self._failover: list[Target] = []  # tried one by one after the forks fail
        incoming.on_cancel = self._on_cancel

    # -- setting up (leg B) --------------------------------------------------

    def start(
        self,
        targets: list[Target],
        callee_aor: str,
        caller: str,
        *,
        failover: Sequence[Target] = (),
    ) -> None:
        """Ring ``targets`` at once; when all fail in a way ``fails_over``, ``failover`` in turn."""
        a = self.incoming.request
        self._failover = list(failover)
        try:
            self._offer = self.media.offer(a.body) if a.body else b""
        except ParseError as exc:
            self._fail(488, f"Not Acceptable Here ({exc})"[:120])
            return
        self._callee_aor = callee_aor
        forks = [self._fork(target) for target in targets]
        self._emit(CCEventTry(caller, callee_aor, len(self.forks)))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.ring_timeout, self._on_ring_timeout)
        for fork in forks:
            self._send_fork(fork)

    def _fork(self, target: Target) -> Fork:
        fork = Fork(target, self._invite(target, self._callee_aor, self._offer))
        self.forks.append(fork)
        return fork

    def _send_fork(self, fork: Fork) -> None:
        on_response = functools.partial(self._on_fork_response, fork)
        fork.txn = self.endpoint.send_request(fork.request, fork.target.peer, on_response)

    def _invite(self, target: Target, callee_aor: str, body: bytes) -> Request:
        a = self.incoming.request
        caller = a.from_ if target.from_uri is None else NameAddr(parse_uri(target.from_uri))
        headers = Headers()
        max_forwards = (a.max_forwards if a.max_forwards is not None else 70) - 1
        headers.add("Max-Forwards", str(max_forwards))
        # The caller's identity, our tag: leg B is a dialog of our own (§12.1.2).
        headers.add("From", str(NameAddr(caller.uri, caller.display, (("tag", new_tag()),))))
        headers.add("To", f"<{callee_aor}>")
        headers.add("Call-ID", f"{secrets.token_hex(12)}@softswitch")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.endpoint.contact_for(target.peer))
        headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE")
        content_type = a.headers.get("Content-Type")
        if body and content_type is not None:
            headers.add("Content-Type", content_type)
        return Request("INVITE", target.uri, headers, body)

    def _on_fork_response(self, fork: Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100 and self.state in (CallState.TRYING, CallState.RINGING):
                self.state = CallState.RINGING
                try:
                    early = self.media.answer(response.body) if _is_sdp(response) else b""
                except ParseError as exc:
                    log.info("bad SDP in a provisional response", call_id=self.id, error=str(exc))
                    early = b""
                self._respond_a(status, response.reason, early)
                self._emit(CCEventRing(status))
            return
        fork.final = status
        if status >= 300:
            self._after_fork_failure()
            return
        dialog = Dialog.uac(fork.request, response)
        ack = dialog.ack(fork.request.cseq.number)
        if self.state not in (CallState.TRYING, CallState.RINGING):
            # A second fork answered (or the caller left) before its CANCEL arrived.
            self.endpoint.send_ack(ack, fork.target.peer)
            self.endpoint.send_request(dialog.request("BYE"), fork.target.peer, _ignore)
            return
        late = not fork.request.body and _is_sdp(response)
        try:
            answer = self.media.answer(response.body) if _is_sdp(response) else b""
        except ParseError as exc:
            # A broken answer ends the call, not the switch: BYE the callee (§13.2.2.4:
            # ACK first), and the caller hears a failure.
            log.info("bad SDP from the callee", call_id=self.id, error=str(exc))
            self.endpoint.send_ack(ack, fork.target.peer)
            self.endpoint.send_request(dialog.request("BYE"), fork.target.peer, _ignore)
            self._cancel_forks()
            self._fail(500, "Bad SDP from the callee")
            return
        if late:
            # §13.2.1: an INVITE without SDP gets the offer in the 2xx and the answer in
            # the ACK, so the callee's ACK waits for the caller's.
            self._b_ack = ack.cseq.number
        else:
            self.endpoint.send_ack(ack, fork.target.peer)
        self._connect(fork, dialog, answer)

    def _connect(self, winner: Fork, dialog: Dialog, answer: bytes) -> None:
        self._stop_timer()
        self.state = CallState.CONNECTED
        self.b_dialog, self.b_peer = dialog, winner.target.peer
        self.dialogs[dialog.id] = self
        for fork in self.forks:
            if fork is not winner and fork.final is None and fork.txn is not None:
                self.endpoint.cancel(fork.txn, REASON_ELSEWHERE)
        ok = self._respond_a(200, "OK", answer)
        a = self.incoming
        contact = self.endpoint.contact_for(a.peer)
        self.a_dialog = Dialog.uas(a.request, ok, contact)
        self.dialogs[self.a_dialog.id] = self
        self._emit(CCEventConnect())
        if not a.peer.reliable:
            self._a_ok = ok
            self._retransmit_ok(T1, 0.0)

    def _after_fork_failure(self) -> None:
        if self.state not in (CallState.TRYING, CallState.RINGING):
            return
        finals = [fork.final for fork in self.forks]
        if any(status is None for status in finals):
            return
        status = best_failure([s for s in finals if s is not None])
        if self._failover and fails_over(status):
            target = self._failover.pop(0)
            log.info("failing over", call_id=self.id, status=status, to=target.uri)
            self._send_fork(self._fork(target))
            return
        self._fail(status, "")

    def _fail(self, status: int, reason: str) -> None:
        self._stop_timer()
        self.state = CallState.FAILED
        response = self._respond_a(status, reason or None)
        self._emit(CCEventFail(status, response.reason))
        self._end()

    def _on_ring_timeout(self) -> None:
        self._timer = None
        if self.state in (CallState.TRYING, CallState.RINGING):
            self._cancel_forks()
            self._fail(480, "No Answer")

    def _on_cancel(self, cancel: Request) -> None:
        """The caller's CANCEL (§9.2): cancel every fork, 487 to the INVITE."""
        if self.state not in (CallState.TRYING, CallState.RINGING):
            return
        self._stop_timer()
        self._cancel_forks()
        self.state = CallState.CANCELLED
        response = self._respond_a(487, None)
        self._emit(CCEventFail(487, response.reason))
        self._end()

    def _cancel_forks(self) -> None:
        for fork in self.forks:
            if fork.final is None and fork.txn is not None:
                self.endpoint.cancel(fork.txn)

    def _respond_a(self, status: int, reason: str | None, sdp: bytes = b"") -> Response:
        """Our response to the caller's INVITE, with ``sdp`` already rewritten for it."""
        a = self.incoming
        response = a.request.response(status, reason, a.to_tag)
        if status < 300:
            response.headers.add("Contact", self.endpoint.contact_for(a.peer))
        if sdp:
            response.headers.add("Content-Type", "application/sdp")
            response.body = sdp
        a.respond(response)
        return response

    # -- the 2xx to A until its ACK (§13.3.1.4) -----------------------------

    def _retransmit_ok(self, interval: float, waited: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(interval, self._on_ok_timer, interval, waited + interval)

    def _on_ok_timer(self, interval: float, waited: float) -> None:
        self._timer = None
        if self._a_ok is None or self.state is not CallState.CONNECTED:
            return
        if waited >= 64 * T1:
            # 64*T1 without an ACK: the caller is gone; end the call (§13.3.1.4)
            log.info("no ACK from the caller", call_id=self.id)
            self._hang_up(None)
            return
        a = self.incoming
        self.endpoint.transports.send(bytes(self._a_ok), response_peer(a.request.top_via, a.peer))
        self._retransmit_ok(min(2 * interval, T2), waited)

    def on_ack(self, request: Request, dialog_id: DialogId) -> None:
        side = self._side_of(dialog_id)
        number = request.cseq.number
        first = number == self.incoming.request.cseq.number
        if side is Side.A and first and (self._a_ok is not None or self._b_ack is not None):
            self._a_ok = None
            self._stop_timer()
            if self._b_ack is not None:
                self._pass_ack(request, Side.A, self._b_ack)
                self._b_ack = None
            held_back, self._held_back = self._held_back, None
            if held_back is not None:
                self._relay(held_back, Side.B)
            return
        reinvite = self._reinvite
        if (
            reinvite is None
            or reinvite.ok is None
            or reinvite.side is not side
            or number != reinvite.incoming.request.cseq.number
        ):
            return
        self._reinvite = None
        if reinvite.timer is not None:
            reinvite.timer.cancel()
        self._pass_ack(request, side, reinvite.ack_cseq)

    def _pass_ack(self, ack: Request, side: Side, cseq: int) -> None:
        """The ACK from ``side`` to the other leg's 2xx numbered ``cseq``, with its answer."""
        body, content_type = b"", None
        if _is_sdp(ack):
            try:
                body = self._rewrite(side)(ack.body)
                content_type = "application/sdp"
            except ParseError as exc:
                log.info("bad SDP in ACK", call_id=self.id, error=str(exc))
        dialog, peer = self._leg(_other(side))
        self.endpoint.send_ack(dialog.ack(cseq, body=body, content_type=content_type), peer)

    def on_2xx_again(self, response: Response, dialog_id: DialogId) -> None:
        """A retransmitted 2xx: our ACK was lost; send it again (§13.2.2.4)."""
        reinvite = self._reinvite
        if self.state is not CallState.CONNECTED:
            return
        side = self._side_of(dialog_id)
        if reinvite is not None and reinvite.ack_cseq == response.cseq.number:
            return  # ACKed once the sender's ACK comes (with its answer, if any)
        if side is Side.B and self._b_ack == response.cseq.number:
            return  # likewise, a late offer (§13.2.1)
        dialog, peer = self._leg(side)
        self.endpoint.send_ack(dialog.ack(response.cseq.number), peer)

    # -- in-dialog requests: re-INVITE, INFO, UPDATE (§14, RFC 6086, RFC 3311) ----

    def on_request(self, incoming: ServerRequest, dialog_id: DialogId) -> None:
        """The same request in the other leg; its response comes back to the sender."""
        request = incoming.request
        if self.state is not CallState.CONNECTED:
            incoming.respond(request.response(481, None, incoming.to_tag))
            return
        side = self._side_of(dialog_id)
        dialog, _ = self._leg(side)
        status = dialog.receive_request(request)
        if status is not None:
            incoming.respond(request.response(status, None, incoming.to_tag))
            return
        invite = request.method == "INVITE"
        if invite and side is Side.B and self._a_ok is not None and self._reinvite is None:
            # B had our ACK, A has not sent its own yet: our re-INVITE to A must wait (§14.1)
            self._held_back = self._held_back or incoming
            if self._held_back is incoming:
                return
        busy = self._reinvite is not None or self._a_ok is not None or self._b_ack is not None
        if invite and busy:
            # §14.2: an INVITE while one is in progress; both phones retry later (§14.1)
            response = request.response(491, None, incoming.to_tag)
            incoming.respond(response)
            return
        self._relay(incoming, side)

    def _relay(self, incoming: ServerRequest, side: Side) -> None:
        request, invite = incoming.request, incoming.request.method == "INVITE"
        body = request.body
        if _is_sdp(request):
            try:
                body = self._rewrite(side)(body)
            except ParseError as exc:
                incoming.respond(request.response(488, f"Not Acceptable Here ({exc})"[:120]))
                return
        other, peer = self._leg(_other(side))
        content_type = request.headers.get("Content-Type")
        relayed = other.request(request.method, body=body, content_type=content_type)
        if invite:
            self._reinvite = Reinvite(incoming, side)
        on_response = functools.partial(self._on_relayed_response, incoming, side)
        self.endpoint.send_request(relayed, peer, on_response)

    def _on_relayed_response(self, incoming: ServerRequest, side: Side, response: Response) -> None:
        request, status = incoming.request, response.status
        other, other_peer = self._leg(_other(side))
        other.receive_response(response)
        reinvite = self._reinvite if request.method == "INVITE" else None
        if status == 100:
            return
        if self.state is not CallState.CONNECTED:
            if 200 <= status < 300 and request.method == "INVITE":
                self.endpoint.send_ack(other.ack(response.cseq.number), other_peer)
            return
        ours = request.response(status, response.reason)
        if _is_sdp(response):
            try:
                ours.body = self._rewrite(_other(side))(response.body)
                ours.headers.add("Content-Type", "application/sdp")
            except ParseError as exc:
                log.info("bad SDP in answer", call_id=self.id, error=str(exc))
                ours = request.response(500, "Bad SDP from the other phone")
                if reinvite is not None and 200 <= status < 300:
                    self.endpoint.send_ack(other.ack(response.cseq.number), other_peer)
                    status = 500
        if 200 <= status < 300:
            ours.headers.add("Contact", self.endpoint.contact_for(incoming.peer))
        incoming.respond(ours)
        if status in (408, 481):
            self._hang_up(None)  # §12.2.1.2: the other leg's dialog is gone
            return
        if reinvite is None or status < 200:
            return
        if status >= 300:
            self._reinvite = None  # the transactions ACK non-2xx finals (§17.1.1.3, §17.2.1)
            return
        reinvite.ok, reinvite.ack_cseq = ours, response.cseq.number
        if not incoming.peer.reliable:
            self._resend_reinvite_ok(reinvite, T1, 0.0)

    def _resend_reinvite_ok(self, reinvite: Reinvite, interval: float, waited: float) -> None:
        """Our 2xx to a re-INVITE until its ACK (§13.3.1.4), as for the first INVITE."""
        loop = asyncio.get_running_loop()
        reinvite.timer = loop.call_later(
            interval, self._on_reinvite_timer, reinvite, interval, waited + interval
        )

    def _on_reinvite_timer(self, reinvite: Reinvite, interval: float, waited: float) -> None:
        reinvite.timer = None
        if self._reinvite is not reinvite or reinvite.ok is None:
            return
        if waited >= 64 * T1:
            log.info("no ACK for a re-INVITE", call_id=self.id)
            self._hang_up(None)  # §14.2: no ACK for a re-INVITE's 2xx ends the dialog
            return
        request, peer = reinvite.incoming.request, reinvite.incoming.peer
        self.endpoint.transports.send(bytes(reinvite.ok), response_peer(request.top_via, peer))
        self._resend_reinvite_ok(reinvite, min(2 * interval, T2), waited)

    def _side_of(self, dialog_id: DialogId) -> Side:
        return Side.A if self.a_dialog is not None and dialog_id == self.a_dialog.id else Side.B

    def _leg(self, side: Side) -> tuple[Dialog, Peer]:
        dialog, peer = (
            (self.a_dialog, self.incoming.peer) if side is Side.A else (self.b_dialog, self.b_peer)
        )
        assert dialog is not None and peer is not None  # both exist once CONNECTED
        return dialog, peer

    def _rewrite(self, side: Side) -> Callable[[bytes], bytes]:
        """SDP from the phone of ``side`` as the other phone must see it."""
        return self.media.offer if side is Side.A else self.media.answer

    # -- tearing down --------------------------------------------------------

    def on_bye(self, incoming: ServerRequest, dialog_id: DialogId) -> None:
        by = Side.A if self.a_dialog is not None and dialog_id == self.a_dialog.id else Side.B
        dialog = self.a_dialog if by is Side.A else self.b_dialog
        assert dialog is not None
        status = dialog.receive_request(incoming.request)
        incoming.respond(incoming.request.response(status or 200, None, incoming.to_tag))
        if status is None:
            self._hang_up(by)

    def media_timeout(self) -> None:
        """The relay saw no RTP for too long: the phones are gone or cut off."""
        self._hang_up(None)

    def _hang_up(self, by: Side | None) -> None:
        """End both legs: BYE to each side that did not hang up itself."""
        if self.state is not CallState.CONNECTED:
            return
        self._stop_timer()
        self.state = CallState.DISCONNECTED
        if self._b_ack is not None and self.b_dialog is not None and self.b_peer is not None:
            # no answer came from the caller; §13.2.2.4 still wants the 2xx ACKed before BYE
            self.endpoint.send_ack(self.b_dialog.ack(self._b_ack), self.b_peer)
            self._b_ack = None
        legs = {Side.A: (self.a_dialog, self.incoming.peer), Side.B: (self.b_dialog, self.b_peer)}
        for side, (dialog, peer) in legs.items():
            if dialog is None or peer is None:
                continue
            if side is not by:
                self.endpoint.send_request(dialog.request("BYE"), peer, _ignore)
            dialog.terminate()
        self._emit(CCEventDisconnect(by))
        self._end()

    def _end(self) -> None:
        reinvite, self._reinvite = self._reinvite, None
        if reinvite is not None and reinvite.timer is not None:
            reinvite.timer.cancel()
        waiting = [reinvite.incoming if reinvite else None, self._held_back]
        self._held_back = None
        for incoming in waiting:
            if incoming is not None and not incoming.answered:
                incoming.respond(incoming.request.response(487, None))
        for dialog in (self.a_dialog, self.b_dialog):
            if dialog is not None:
                self.dialogs.pop(dialog.id, None)
        self.media.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _emit(self, event: CCEvent) -> None:
        self.on_event(self, event)

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.state.value}>"


def best_failure(statuses: list[int]) -> int:
    """The final response for the caller when every fork failed (after §16.7 step 6).

    A 6xx is definitive; a busy phone says more than an unreachable one; else
    the lowest class wins, a 408 (no response at all) only when nothing else came.
    """
    if not statuses:
        return 480
    six = [s for s in statuses if s >= 600]
    if six:
        return min(six)
    if 486 in statuses:
        return 486
    answered = [s for s in statuses if s != 408]
    return min(answered) if answered else 408


def fails_over(status: int) -> bool:
    """A failure the next target may not have: a server error or no answer at all.

    Not a busy or unknown number (486, 404, ...): another route reaches the same callee.
    """
    return status == 408 or 500 <= status < 600


def _other(side: Side) -> Side:
    return Side.B if side is Side.A else Side.A


def _is_sdp(message: Request | Response) -> bool:
    content_type = message.headers.get("Content-Type") or ""
    return bool(message.body) and content_type.split(";")[0].strip().lower() == "application/sdp"


def _ignore(response: Response) -> None:
    """Responses to a BYE of ours: the call is over whatever they say (§15.1.1)."""
