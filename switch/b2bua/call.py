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
address that reaches it. Not done here: re-INVITE (hold), REFER, PRACK,
early media without a 18x to A, and 3xx redirection.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from switch.b2bua.media import MediaSession
from switch.endpoint import ServerRequest, SipEndpoint, response_peer
from switch.sip.dialog import Dialog, DialogId
from switch.sip.errors import ParseError
from switch.sip.headers import NameAddr
from switch.sip.message import Headers, Request, Response, new_tag
from switch.sip.transaction import T1, T2, ClientTransaction
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
        incoming.on_cancel = self._on_cancel

    # -- setting up (leg B) --------------------------------------------------

    def start(self, targets: list[Target], callee_aor: str, caller: str) -> None:
        a = self.incoming.request
        max_forwards = (a.max_forwards if a.max_forwards is not None else 70) - 1
        try:
            offer = self.media.offer(a.body) if a.body else b""
        except ParseError as exc:
            self._fail(488, f"Not Acceptable Here ({exc})"[:120])
            return
        for target in targets:
            self.forks.append(Fork(target, self._invite(target, callee_aor, max_forwards, offer)))
        self._emit(CCEventTry(caller, callee_aor, len(self.forks)))
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.ring_timeout, self._on_ring_timeout)
        for fork in self.forks:
            on_response = functools.partial(self._on_fork_response, fork)
            fork.txn = self.endpoint.send_request(fork.request, fork.target.peer, on_response)

    def _invite(self, target: Target, callee_aor: str, max_forwards: int, body: bytes) -> Request:
        a = self.incoming.request
        caller = a.from_
        headers = Headers()
        headers.add("Max-Forwards", str(max_forwards))
        # The caller's identity, our tag: leg B is a dialog of our own (§12.1.2).
        headers.add("From", str(NameAddr(caller.uri, caller.display, (("tag", new_tag()),))))
        headers.add("To", f"<{callee_aor}>")
        headers.add("Call-ID", f"{secrets.token_hex(12)}@softswitch")
        headers.add("CSeq", "1 INVITE")
        headers.add("Contact", self.endpoint.contact_for(target.peer))
        headers.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")
        content_type = a.headers.get("Content-Type")
        if body and content_type is not None:
            headers.add("Content-Type", content_type)
        return Request("INVITE", target.uri, headers, body)

    def _on_fork_response(self, fork: Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status > 100 and self.state in (CallState.TRYING, CallState.RINGING):
                self.state = CallState.RINGING
                self._respond_a(status, response.reason, response.body, self.media.answer)
                self._emit(CCEventRing(status))
            return
        fork.final = status
        if status >= 300:
            self._after_fork_failure()
            return
        dialog = Dialog.uac(fork.request, response)
        self.endpoint.send_ack(dialog.ack(fork.request.cseq.number), fork.target.peer)
        if self.state not in (CallState.TRYING, CallState.RINGING):
            # A second fork answered (or the caller left) before its CANCEL arrived.
            self.endpoint.send_request(dialog.request("BYE"), fork.target.peer, _ignore)
            return
        self._connect(fork, dialog, response)

    def _connect(self, winner: Fork, dialog: Dialog, response: Response) -> None:
        self._stop_timer()
        self.state = CallState.CONNECTED
        self.b_dialog, self.b_peer = dialog, winner.target.peer
        self.dialogs[dialog.id] = self
        for fork in self.forks:
            if fork is not winner and fork.final is None and fork.txn is not None:
                self.endpoint.cancel(fork.txn, REASON_ELSEWHERE)
        ok = self._respond_a(200, "OK", response.body, self.media.answer)
        a = self.incoming
        contact = self.endpoint.contact_for(a.peer)
        self.a_dialog = Dialog.uas(a.request, ok, contact)
        self.dialogs[self.a_dialog.id] = self
        self._emit(CCEventConnect())
        if not a.peer.reliable:
            self._a_ok = ok
            self._retransmit_ok(T1)

    def _after_fork_failure(self) -> None:
        if self.state not in (CallState.TRYING, CallState.RINGING):
            return
        finals = [fork.final for fork in self.forks]
        if any(status is None for status in finals):
            return
        status = best_failure([s for s in finals if s is not None])
        self._fail(status, "")

    def _fail(self, status: int, reason: str) -> None:
        self._stop_timer()
        self.state = CallState.FAILED
        response = self._respond_a(status, reason or None, b"", None)
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
        response = self._respond_a(487, None, b"", None)
        self._emit(CCEventFail(487, response.reason))
        self._end()

    def _cancel_forks(self) -> None:
        for fork in self.forks:
            if fork.final is None and fork.txn is not None:
                self.endpoint.cancel(fork.txn)

    def _respond_a(
        self,
        status: int,
        reason: str | None,
        body: bytes,
        rewrite: Callable[[bytes], bytes] | None,
    ) -> Response:
        a = self.incoming
        response = a.request.response(status, reason, a.to_tag)
        if status < 300:
            response.headers.add("Contact", self.endpoint.contact_for(a.peer))
        if body and rewrite is not None:
            response.headers.add("Content-Type", "application/sdp")
            response.body = rewrite(body)
        a.respond(response)
        return response

    # -- the 2xx to A until its ACK (§13.3.1.4) -----------------------------

    def _retransmit_ok(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(interval, self._on_ok_timer, interval)

    def _on_ok_timer(self, interval: float) -> None:
        self._timer = None
        if self._a_ok is None or self.state is not CallState.CONNECTED:
            return
        if interval >= 32 * T1:
            # 64*T1 without an ACK: the caller is gone; end the call (§13.3.1.4)
            log.info("no ACK from the caller", call_id=self.id)
            self._hang_up(None)
            return
        a = self.incoming
        self.endpoint.transports.send(bytes(self._a_ok), response_peer(a.request.top_via, a.peer))
        self._retransmit_ok(min(2 * interval, T2))

    def on_ack(self, request: Request) -> None:
        if self.a_dialog is not None and self.a_dialog.id.remote_tag == request.from_.tag:
            self._a_ok = None
            self._stop_timer()

    def on_2xx_again(self, response: Response) -> None:
        """A retransmitted 2xx from B: our ACK was lost; send it again (§13.2.2.4)."""
        if self.b_dialog is not None and self.b_peer is not None:
            ack = self.b_dialog.ack(response.cseq.number)
            self.endpoint.send_ack(ack, self.b_peer)

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


def _ignore(response: Response) -> None:
    """Responses to a BYE of ours: the call is over whatever they say (§15.1.1)."""
