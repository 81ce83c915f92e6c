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

Transfer (``switch.b2bua.transfer``) changes who is on a side: a REFER's
target, the far phone of an attended transfer's other call, or a phone
sending INVITE with Replaces takes that side's leg (``replace_leg``); the
transferor's old leg is kept in ``departed`` until its BYE, and in-dialog
requests on it get 481. While a transfer's target rings, a BYE from the
transferor leaves the call up for the target (RFC 5589 §6.1); a hang-up of
the other phone cancels the target's forks.

Targets may also be tried in turn (failover between gateways): when every
fork failed with a status that ``fails_over`` (408, 5xx), the next target of
the ``failover`` list gets the INVITE, within the same ring timeout.

Not done here: PRACK, early media without a 18x to A, and 3xx redirection.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from media import Side as MediaSide
from switch.b2bua.forks import Fork, Forks, Target, ignore, invite
from switch.b2bua.media import MediaSession, RelayMedia
from switch.endpoint import OkUntilAck, ServerRequest, SipEndpoint
from switch.sip.dialog import Dialog, DialogId
from switch.sip.errors import ParseError
from switch.sip.headers import NameAddr
from switch.sip.message import Request, Response
from switch.sip.uri import parse_uri
from switch.transport import Peer

if TYPE_CHECKING:
    from switch.b2bua.transfer import Departed, Transfer, TransferRecord

log = structlog.get_logger()


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


# Both sides in order: iterating the Enum class itself costs a generator (several per call).
SIDES: Final = (Side.A, Side.B)


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
    transferred: bool = False  # the side ``by`` left by transferring the other (attended)


@dataclass(frozen=True, slots=True)
class CCEventTransfer:
    """A new party took the place of ``side`` (status 200), or the attempt failed."""

    kind: str  # blind, attended, replaces
    side: Side
    by: str | None  # the transferor's extension; None when the new phone replaced itself
    replaced: str  # the extension that left the call (or would have)
    target: str
    status: int


@dataclass(frozen=True, slots=True)
class CCEventFail:
    status: int
    reason: str


CCEvent = (
    CCEventTry | CCEventRing | CCEventConnect | CCEventDisconnect | CCEventFail | CCEventTransfer
)


@dataclass(slots=True)
class Reinvite:
    """A re-INVITE from ``side`` on its way through the other leg (§14)."""

    incoming: ServerRequest
    side: Side
    ok: Response | None = None  # our 2xx to it
    ack_cseq: int = 0  # the other leg's 2xx waits for that ACK to be ACKed
    wait: OkUntilAck | None = None  # ``ok`` resent until its ACK (§13.3.1.4)

    def stop(self) -> None:
        if self.wait is not None:
            self.wait.acked()
            self.wait = None


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
        self.leg_b = Forks(
            endpoint,
            ring_timeout=ring_timeout,
            on_ring=self._on_ring,
            on_answer=self._on_answer,
            on_fail=self._fail,
        )
        self.a_dialog: Dialog | None = None
        self.b_dialog: Dialog | None = None
        self.b_peer: Peer | None = None
        self.a_peer = incoming.peer
        self.tenant = ""
        self.users: dict[Side, str] = {}  # the extension on each side (the service's)
        self.transfer: Transfer | None = None  # a REFER whose target is ringing
        self.transfers: list[TransferRecord] = []  # every change of party, for the record
        self.departed: dict[DialogId, Departed] = {}  # transferors' legs waiting for BYE
        self.unacked: dict[DialogId, OkUntilAck] = {}  # our 2xx to an INVITE with Replaces
        self._a_ok: OkUntilAck | None = None  # our 2xx to A, until A's ACK
        self._reinvite: Reinvite | None = None
        self._b_ack: int | None = None  # late offer: the CSeq of B's 2xx, ACKed with A's answer
        self._held_back: ServerRequest | None = None  # B's re-INVITE, until A's ACK comes
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
        """Ring ``targets`` at once; when all fail in a way that ``fails_over``, ``failover``
        in turn (gateways), within the same ring timeout."""
        a = self.incoming.request
        max_forwards = (a.max_forwards if a.max_forwards is not None else 70) - 1
        try:
            offer = self.media.offer(a.body) if a.body else b""
        except ParseError as exc:
            self._fail(488, f"Not Acceptable Here ({exc})"[:120])
            return
        content_type = a.headers.get("Content-Type")

        def fork(target: Target) -> Fork:
            # A gateway says who calls with the tenant's caller ID, not the extension.
            caller = a.from_ if target.from_uri is None else NameAddr(parse_uri(target.from_uri))
            request = invite(
                self.endpoint,
                target,
                caller,
                callee_aor,
                max_forwards=max_forwards,
                body=offer,
                content_type=content_type,
            )
            return Fork(target, request)  # fmt: skip

        forks = [fork(target) for target in targets]
        self._emit(CCEventTry(caller, callee_aor, len(forks)))
        self.leg_b.start(forks, failover=[fork(target) for target in failover])

    @property
    def forks(self) -> list[Fork]:
        return self.leg_b.forks

    @property
    def answered_by(self) -> Dialog | None:
        """The dialog of the callee's phone that answered (leg B may change hands later)."""
        return self.leg_b.dialog

    def _on_ring(self, response: Response) -> None:
        if self.state not in (CallState.TRYING, CallState.RINGING):
            return
        self.state = CallState.RINGING
        try:
            early = self.media.answer(response.body) if _is_sdp(response) else b""
        except ParseError as exc:
            log.info("bad SDP in a provisional response", call_id=self.id, error=str(exc))
            early = b""
        self._respond_a(response.status, response.reason, early)
        self._emit(CCEventRing(response.status))

    def _on_answer(self, fork: Fork, dialog: Dialog, response: Response) -> None:
        ack = dialog.ack(fork.request.cseq.number)
        late = not fork.request.body and _is_sdp(response)
        try:
            answer = self.media.answer(response.body) if _is_sdp(response) else b""
        except ParseError as exc:
            # A broken answer ends the call, not the switch: BYE the callee (§13.2.2.4:
            # ACK first), and the caller hears a failure.
            log.info("bad SDP from the callee", call_id=self.id, error=str(exc))
            self.endpoint.send_ack(ack, fork.target.peer)
            self.endpoint.send_request(dialog.request("BYE"), fork.target.peer, ignore)
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
        self.state = CallState.CONNECTED
        self.b_dialog, self.b_peer = dialog, winner.target.peer
        self.dialogs[dialog.id] = self
        ok = self._respond_a(200, "OK", answer)
        a = self.incoming
        contact = self.endpoint.contact_for(a.peer)
        self.a_dialog = Dialog.uas(a.request, ok, contact)
        self.dialogs[self.a_dialog.id] = self
        self._emit(CCEventConnect())
        self._a_ok = OkUntilAck(a, ok, self._no_ack)

    def _fail(self, status: int, reason: str) -> None:
        if self.state not in (CallState.TRYING, CallState.RINGING):
            return
        self.leg_b.stop()
        self.state = CallState.FAILED
        response = self._respond_a(status, reason or None)
        self._emit(CCEventFail(status, response.reason))
        self._end()

    def _on_cancel(self, cancel: Request) -> None:
        """The caller's CANCEL (§9.2): cancel every fork, 487 to the INVITE."""
        if self.state not in (CallState.TRYING, CallState.RINGING):
            return
        self.leg_b.stop()
        self.state = CallState.CANCELLED
        response = self._respond_a(487, None)
        self._emit(CCEventFail(487, response.reason))
        self._end()

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

    def _no_ack(self) -> None:
        """64*T1 without an ACK for our 2xx: the caller is gone; end the call (§13.3.1.4)."""
        log.info("no ACK from the caller", call_id=self.id)
        self._hang_up(None)

    def on_ack(self, request: Request, dialog_id: DialogId) -> None:
        unacked = self.unacked.pop(dialog_id, None)
        if unacked is not None:
            unacked.acked()
            return
        if dialog_id in self.departed:
            return
        side = self._side_of(dialog_id)
        number = request.cseq.number
        first = number == self.incoming.request.cseq.number
        if side is Side.A and first and (self._a_ok is not None or self._b_ack is not None):
            self._stop_a_ok()
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
        reinvite.stop()
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
        if self.state is not CallState.CONNECTED or dialog_id in self.departed:
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
        if self.state is not CallState.CONNECTED or dialog_id in self.departed:
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
        reinvite.wait = OkUntilAck(incoming, ours, self._no_reinvite_ack)

    def _no_reinvite_ack(self) -> None:
        log.info("no ACK for a re-INVITE", call_id=self.id)
        self._hang_up(None)  # §14.2: no ACK for a re-INVITE's 2xx ends the dialog

    def _side_of(self, dialog_id: DialogId) -> Side:
        return self.side_of(dialog_id) or Side.B

    def _leg(self, side: Side) -> tuple[Dialog, Peer]:
        dialog, peer = self.leg_of(side)
        assert dialog is not None and peer is not None  # both exist once CONNECTED
        return dialog, peer

    def leg_of(self, side: Side) -> tuple[Dialog | None, Peer | None]:
        """The dialog of ``side``'s phone and where its requests go."""
        return (self.a_dialog, self.a_peer) if side is Side.A else (self.b_dialog, self.b_peer)

    def side_of(self, dialog_id: DialogId) -> Side | None:
        """The side whose phone is in ``dialog_id`` now; None for a departed transferor."""
        for side in SIDES:
            dialog, _ = self.leg_of(side)
            if dialog is not None and dialog.id == dialog_id:
                return side
        return None

    # -- transfer (switch.b2bua.transfer) -------------------------------------

    def replace_leg(
        self, side: Side, dialog: Dialog, peer: Peer
    ) -> tuple[Dialog | None, Peer | None]:
        """``dialog`` takes the place of ``side``'s leg; the old leg is returned, unindexed."""
        old = self.leg_of(side)
        if old[0] is not None:
            self.dialogs.pop(old[0].id, None)
        if side is Side.A:
            self.a_dialog, self.a_peer = dialog, peer
        else:
            self.b_dialog, self.b_peer = dialog, peer
        self.dialogs[dialog.id] = self
        return old

    def transferred(self, record: TransferRecord) -> None:
        """A transfer of ``record.side`` succeeded (the new party is in) or failed."""
        replaced = self.users.get(record.side, "")
        if record.status == 200:
            self.users[record.side] = record.target
            for side in SIDES:
                self._unhold(side)
        self._emit(CCEventTransfer(record.kind.value, record.side, record.by, replaced,
                                   record.target, record.status or 0))  # fmt: skip

    def _unhold(self, side: Side) -> None:
        """After a transfer, offer ``side``'s phone sendrecv if its last SDP was not.

        A transferor usually holds the other phone before it transfers (every desk phone does
        for an attended transfer); the new party is connected in the relay, but the held
        phone would stay silent: one-way audio. Our own re-INVITE (RFC 3264 §8.4) with the
        new party's SDP on that phone's ports, sendrecv, resumes it; a phone that holds by
        its own choice answers sendonly again, and stays on hold.
        """
        media = self.media
        if not isinstance(media, RelayMedia) or self._reinvite is not None:
            return
        try:
            offer = media.resume_offer(MediaSide.A if side is Side.A else MediaSide.B)
        except ParseError:
            return
        if offer is None:
            return
        dialog, peer = self._leg(side)
        request = dialog.request("INVITE", body=offer, content_type="application/sdp")
        log.info("re-INVITE to resume a held phone", call_id=self.id, side=side.value)
        on_response = functools.partial(self._on_unhold_response, side)
        self.endpoint.send_request(request, peer, on_response)

    def _on_unhold_response(self, side: Side, response: Response) -> None:
        if self.state is not CallState.CONNECTED or response.status < 200:
            return
        dialog, peer = self._leg(side)
        dialog.receive_response(response)
        if response.status >= 300:
            log.info("resume refused", call_id=self.id, side=side.value, status=response.status)
            return
        self.endpoint.send_ack(dialog.ack(response.cseq.number), peer)
        if _is_sdp(response):
            try:
                self._rewrite(side)(response.body)  # where that phone receives now
            except ParseError as exc:
                log.info("bad SDP in a resume answer", call_id=self.id, error=str(exc))

    def hand_over(self, keep: Side) -> tuple[Dialog, Peer]:
        """Give ``keep``'s leg to another call (attended transfer) and end this one:
        BYE to the other side, the transferor, whose transfer this is."""
        leg = self._leg(keep)
        self.dialogs.pop(leg[0].id, None)
        if keep is Side.A:
            self.a_dialog = None
        else:
            self.b_dialog = None
        self._hang_up(_other(keep), transferred=True, bye=True)
        return leg

    def hang_up(self, by: Side | None) -> None:
        self._hang_up(by)

    def _rewrite(self, side: Side) -> Callable[[bytes], bytes]:
        """SDP from the phone of ``side`` as the other phone must see it."""
        return self.media.offer if side is Side.A else self.media.answer

    # -- tearing down --------------------------------------------------------

    def on_bye(self, incoming: ServerRequest, dialog_id: DialogId) -> None:
        departed = self.departed.get(dialog_id)
        if departed is not None:
            departed.on_bye(incoming)
            return
        by = self.side_of(dialog_id)
        dialog, _ = self.leg_of(by) if by is not None else (None, None)
        if by is None or dialog is None:
            incoming.respond(incoming.request.response(481, None, incoming.to_tag))
            return
        status = dialog.receive_request(incoming.request)
        incoming.respond(incoming.request.response(status or 200, None, incoming.to_tag))
        if status is not None:
            return
        transfer = self.transfer
        if transfer is not None and transfer.side is by and not transfer.transferor_left:
            # The transferor hangs up while its target rings: the transferee waits for it.
            transfer.on_transferor_bye()
            self.dialogs.pop(dialog_id, None)
            return
        self._hang_up(by)

    def media_timeout(self) -> None:
        """The relay saw no RTP for too long: the phones are gone or cut off."""
        self._hang_up(None)

    def _hang_up(self, by: Side | None, *, transferred: bool = False, bye: bool = False) -> None:
        """End both legs: BYE to each side that did not hang up itself (``bye``: to all)."""
        if self.state is not CallState.CONNECTED:
            return
        self._stop_a_ok()
        self.state = CallState.DISCONNECTED
        transfer = self.transfer
        if transfer is not None:
            transfer.abort()
            if transfer.transferor_left:
                by = by if by is not None else transfer.side  # nobody to BYE there
        if self._b_ack is not None and self.b_dialog is not None and self.b_peer is not None:
            # no answer came from the caller; §13.2.2.4 still wants the 2xx ACKed before BYE
            self.endpoint.send_ack(self.b_dialog.ack(self._b_ack), self.b_peer)
            self._b_ack = None
        for side in SIDES:
            dialog, peer = self.leg_of(side)
            if dialog is None or peer is None:
                continue
            if side is not by or bye:
                self.endpoint.send_request(dialog.request("BYE"), peer, ignore)
            dialog.terminate()
        self._emit(CCEventDisconnect(by, transferred))
        self._end()

    def _end(self) -> None:
        reinvite, self._reinvite = self._reinvite, None
        if reinvite is not None:
            reinvite.stop()
        waiting = [reinvite.incoming if reinvite else None, self._held_back]
        self._held_back = None
        for incoming in waiting:
            if incoming is not None and not incoming.answered:
                incoming.respond(incoming.request.response(487, None))
        for dialog in (self.a_dialog, self.b_dialog):
            if dialog is not None:
                self.dialogs.pop(dialog.id, None)
        for departed in list(self.departed.values()):
            departed.bye()
        for unacked in self.unacked.values():
            unacked.acked()
        self.unacked.clear()
        self.media.close()
        self.leg_b.release()  # its callbacks are bound to this call: a cycle otherwise

    def _stop_a_ok(self) -> None:
        if self._a_ok is not None:
            self._a_ok.acked()
            self._a_ok = None

    def _emit(self, event: CCEvent) -> None:
        self.on_event(self, event)

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.state.value}>"


def _other(side: Side) -> Side:
    return Side.B if side is Side.A else Side.A


def _is_sdp(message: Request | Response) -> bool:
    content_type = message.headers.get("Content-Type") or ""
    return bool(message.body) and content_type.split(";")[0].strip().lower() == "application/sdp"
