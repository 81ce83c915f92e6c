"""The legs of a call the switch handles itself: one dialog with one phone each.

A ``Leg`` is the switch's side of one SIP dialog (RFC 3261 §12) and of that
phone's audio: a relay session (``media.relay``) with the phone on one side
and, while the leg is not bridged, the switch's media endpoint
(``media.endpoint``) on the other. ``InboundLeg`` is the caller's INVITE, which
the switch answers as its UAS; ``OutboundLeg`` is a leg the switch dialled
(``HandledCall.dial`` makes it once a phone answered).

States (``LegState``)::

    OFFERED ──ring──▶ RINGING ──answer──▶ ANSWERED ──hangup / BYE──▶ ENDED
       │                 │                                            ▲
       └──── hangup (final response) / CANCEL ────────────────────────┘

An outbound leg starts ANSWERED. ``ring`` on a RINGING leg does nothing;
``answer`` on an ANSWERED one, ``ring`` after the answer, or media on an
unanswered or bridged leg raise ``WrongState``, and change nothing. ``hangup``
on an ENDED leg does nothing (it often races the phone's own BYE). Anything
asked of a leg that has ENDED raises ``HungUp`` (``CallerHungUp`` for the
caller's), saying who ended it and why.

``answer`` sends 200 with our SDP (``endpoint_sdp``), resends it until the ACK
(§13.3.1.4; none within 64*T1 ends the leg) and returns at the ACK. An INVITE
without SDP gets our offer in the 200 and its answer in the ACK (§13.2.1).
``hangup`` sends BYE, or the final response the cause stands for when the leg
was never answered, with ``Reason: Q.850;cause=N`` (RFC 3326).

Media: ``play``, ``collect``, ``record``, ``send_digit`` and music on hold go
to the leg's media endpoint (``media.endpoint``, the media engine's). DTMF by
SIP INFO (``application/dtmf-relay``, ``application/dtmf``) is a digit of the
endpoint like an RFC 4733 one; a digit sent to a phone that offered no
telephone-event goes out as INFO.

A re-INVITE or UPDATE from a phone is answered by the switch (hold, resume, a
new address, session refresh): the leg keeps its codec; a phone that holds in
a bridge through the media engine leaves its partner with music on hold.

Not done here: passing hold on to the partner's phone (a re-INVITE of our
own), PRACK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from media import LegStats, RelaySessionLike, StatsCell
from media import Side as MediaSide
from media.api import EndpointLike
from media.dtmf import info_body, parse_info
from media.stats import Addr
from switch.b2bua import endpoint_sdp
from switch.b2bua.endpoint_sdp import Agreed, Format, Origin, read_answer
from switch.b2bua.forks import ignore
from switch.b2bua.q850 import Cause, parse_reason
from switch.endpoint import OkUntilAck, ServerRequest
from switch.sip.dialog import Dialog
from switch.sip.errors import ParseError
from switch.sip.message import Request, Response
from switch.transport import Peer

if TYPE_CHECKING:
    from switch.b2bua.control import HandledCall

log = structlog.get_logger()


class LegState(enum.Enum):
    OFFERED = "offered"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Hangup:
    """How a leg ended."""

    by_phone: bool  # its phone hung up (BYE, CANCEL); False: the switch ended it
    cause: Cause
    status: int | None = None  # the final response of a leg that was never answered


class CallControlError(Exception):
    """An operation of call control that cannot be done (the base of the errors below)."""


class WrongState(CallControlError):
    """An operation the leg's state does not allow; nothing was changed."""

    def __init__(self, leg: Leg, operation: str, why: str) -> None:
        super().__init__(f"{operation}: {leg.name} {why}")
        self.leg = leg
        self.operation = operation


class HungUp(CallControlError):
    """A leg that an operation needs has ended (it hung up, or was hung up)."""

    def __init__(self, leg: Leg, hangup: Hangup) -> None:
        who = "hung up" if hangup.by_phone else "was hung up by the switch"
        super().__init__(f"{leg.name} {who} ({hangup.cause.text})")
        self.leg = leg
        self.hangup = hangup


class CallerHungUp(HungUp):
    """The caller's leg ended: every operation of the call still awaited is interrupted."""


@dataclass(frozen=True, slots=True)
class _Reoffer:
    cseq: int
    offered: list[Format]  # our offer in the 200 (a re-INVITE without SDP); else []
    wait: OkUntilAck


@dataclass(slots=True)
class LegMedia:
    """A leg's audio: its relay session, the side facing its phone, the switch's endpoint."""

    session: RelaySessionLike
    side: MediaSide
    endpoint: EndpointLike | None  # None while relay-bridged: the other phone is there
    agreed: Agreed | None  # None until the phone's SDP came (an INVITE without SDP)
    # "out" counters of the sessions this leg left by being bridged (a join restarts them)
    sent_before: tuple[int, int] = (0, 0)
    final: StatsCell | None = None  # the session's counters when the leg ended
    origin: Origin = dataclasses.field(default_factory=Origin)  # our SDP's o= towards it

    def stats(self) -> LegStats:
        now = self.final.stats if self.final is not None else self.session.stats()
        leg = now.a if self.side is MediaSide.A else now.b
        packets, octets = self.sent_before
        return dataclasses.replace(
            leg, packets_out=leg.packets_out + packets, bytes_out=leg.bytes_out + octets
        )

    @property
    def codec(self) -> str | None:
        return None if self.agreed is None else self.agreed.voice.name

    def endpoint_address(self) -> Addr:
        assert self.endpoint is not None
        return self.endpoint.address

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        self.session.close()

    def point_at(self, agreed: Agreed) -> None:
        """The phone receives where ``agreed`` says: tell the relay."""
        self.agreed = agreed
        self.session.set_remote(self.side, agreed.host, agreed.port, agreed.rtcp_port)
        self.session.set_hold(self.side, agreed.held)
        if self.endpoint is not None:
            self.tell(self.endpoint)

    def tell(self, endpoint: EndpointLike) -> None:
        """Give ``endpoint`` the codec and payload types agreed with the phone."""
        if self.agreed is not None:
            events = self.agreed.events
            endpoint.set_format(self.agreed.voice.name, int(self.agreed.voice.pt),
                                None if events is None else int(events.pt))  # fmt: skip


class Leg:
    """One phone's dialog with the switch; see the module docstring."""

    def __init__(self, call: HandledCall, peer: Peer, name: str) -> None:
        self.call = call
        self.peer = peer
        self.name = name  # for errors and logs: "the caller", "the leg to 102"
        self.state = LegState.OFFERED
        self.dialog: Dialog | None = None
        self.media: LegMedia | None = None
        self.partner: Leg | None = None  # the leg bridged with this one
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self._reoffer: _Reoffer | None = None  # our 2xx to a re-INVITE, until its ACK
        self._holding = False  # the phone holds: its engine-bridged partner hears music
        self._ended: asyncio.Future[Hangup] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.state.value}>"

    @property
    def ended(self) -> bool:
        return self.state is LegState.ENDED

    @property
    def hangup_info(self) -> Hangup | None:
        return self._ended.result() if self._ended.done() else None

    @property
    def codec(self) -> str | None:
        return None if self.media is None else self.media.codec

    async def wait_hangup(self) -> Hangup:
        """Wait until this leg ends; how it ended."""
        return await asyncio.shield(self._ended)

    async def hangup(self, cause: Cause = Cause.NORMAL_CLEARING) -> None:
        """End the leg with ``cause``: BYE (see the subclasses for unanswered legs)."""
        if self.state is LegState.ANSWERED:
            self._bye(cause)
            self._end(Hangup(False, cause))

    # -- media (the leg's endpoint in the media engine) ------------------------------------

    async def play(
        self, prompts: str | list[str], *, language: str | None = None, interrupt: bool = False
    ) -> bool:
        """Play prompts (names or WAV paths) to the phone; False if a digit cut it short."""
        work = self.endpoint("play").play(prompts, language=language, interrupt=interrupt)
        return await self.call.guard(work, self)

    async def collect(
        self,
        max_digits: int,
        timeout: float,
        terminators: str = "#",
        inter_digit_timeout: float | None = None,
    ) -> str:
        work = self.endpoint("collect").collect(
            max_digits, timeout, terminators, inter_digit_timeout
        )
        return await self.call.guard(work, self)

    async def record(self, path: str, max_seconds: float, *, silence: float = 5.0) -> float:
        work = self.endpoint("record").record(path, max_seconds, silence=silence)
        return await self.call.guard(work, self)

    def start_music(self) -> None:
        self.endpoint("start_music").start_music()

    def stop_music(self) -> None:
        self.endpoint("stop_music").stop_music()

    def endpoint(self, operation: str) -> EndpointLike:
        """The leg's media endpoint, for ``operation``: answered and not bridged."""
        self.check_alive()
        if self.partner is not None:
            raise WrongState(self, operation, f"is bridged with {self.partner.name}")
        if self.state is not LegState.ANSWERED or self.media is None:
            raise WrongState(self, operation, f"is {self.state.value}, not answered")
        assert self.media.endpoint is not None  # an unbridged answered leg has one
        return self.media.endpoint

    def send_info(self, digit: str) -> None:
        """``digit`` to the phone as SIP INFO (a phone that offered no telephone-event)."""
        if self.dialog is None or self.ended:
            return
        info = self.dialog.request("INFO")
        info.headers.add("Content-Type", "application/dtmf-relay")
        info.body = info_body(digit)
        self.call.endpoint.send_request(info, self.peer, ignore)

    def check_alive(self) -> None:
        hangup = self.hangup_info
        if hangup is not None:
            raise self.call.hung_up(self, hangup)

    # -- signalling --------------------------------------------------------------------

    def _bye(self, cause: Cause) -> None:
        if self.dialog is None:
            return
        bye = self.dialog.request("BYE")
        bye.headers.add("Reason", cause.reason())
        self.call.endpoint.send_request(bye, self.peer, ignore)

    def _end(self, hangup: Hangup) -> None:
        """The leg is over: say so to whoever waits, free its dialog and media."""
        if self.state is LegState.ENDED:
            return
        self.state = LegState.ENDED
        self.ended_at = time.time()
        if self._reoffer is not None:
            self._reoffer.wait.acked()
            self._reoffer = None
        self._hold_music(False)
        if self.dialog is not None:
            self.dialog.terminate()
            self.call.dialogs.pop(self.dialog.id, None)
        if self.media is not None:
            self.media.final = self.media.session.snapshot()
            if self.media.endpoint is not None:
                self.media.endpoint.close()
                self.media.endpoint = None
        self._ended.set_result(hangup)
        log.info("leg ended", call_id=self.call.id, leg=self.name, by_phone=hangup.by_phone,
                 cause=hangup.cause.value, status=hangup.status)  # fmt: skip
        self.call.leg_ended(self, hangup)

    def on_bye(self, incoming: ServerRequest) -> None:
        request = incoming.request
        status = self.dialog.receive_request(request) if self.dialog is not None else 481
        incoming.respond(request.response(status or 200, None, incoming.to_tag))
        if status is None:
            cause = parse_reason(request.headers.get("Reason")) or Cause.NORMAL_CLEARING
            self._end(Hangup(True, cause))

    def on_request(self, incoming: ServerRequest) -> None:
        """Other requests in the dialog: INFO (DTMF in it is a digit), re-INVITE and UPDATE
        (answered by the switch, see `_offer_again`); anything else gets 405... from the
        endpoint before it comes here."""
        request = incoming.request
        status = self.dialog.receive_request(request) if self.dialog is not None else 481
        if status is None and request.method in ("INVITE", "UPDATE"):
            self._offer_again(incoming)
            return
        if status is None:
            status = 200 if request.method == "INFO" else 488
            if request.method == "INFO":
                self._info_digit(request)
        incoming.respond(request.response(status, None, incoming.to_tag))

    def _offer_again(self, incoming: ServerRequest) -> None:
        """A re-INVITE or UPDATE (§14, RFC 3311): hold, resume, a new address, a refresh.

        The switch answers it: the codec stays the one the leg has (its bridge or endpoint
        depends on it: an offer without it gets 488), the direction and address follow the
        phone, and the relay stops counting a held phone as silent. A phone that holds in a
        bridge through the engine leaves its partner with music on hold. A re-INVITE with no
        SDP gets our offer in the 200 and its answer in the ACK; an UPDATE with none is a
        session refresh (RFC 4028) and changes nothing.
        """
        request, media = incoming.request, self.media
        if media is None or media.agreed is None or self.state is not LegState.ANSWERED:
            incoming.respond(request.response(488, None, incoming.to_tag))
            return
        if self._reoffer is not None:  # §14.2: one offer at a time
            incoming.respond(request.response(491, None, incoming.to_tag))
            return
        local = media.session.local(media.side)
        offered: list[Format] = []
        if request.body:
            try:
                body, agreed = endpoint_sdp.answer(request.body, local, media.codec, media.origin)
                if agreed.voice.name != media.codec:
                    raise ParseError(f"the call's codec is {media.codec}")
            except ParseError as exc:
                reason = f"Not Acceptable Here ({exc})"[:120]
                incoming.respond(request.response(488, reason, incoming.to_tag))
                return
            media.point_at(agreed)
            self._hold_music(agreed.held)
        elif request.method == "UPDATE":
            body = b""
        else:
            offered = media.agreed.formats
            body = endpoint_sdp.offer(local, offered, media.origin)
        ok = request.response(200, "OK", incoming.to_tag)
        ok.headers.add("Contact", self.call.endpoint.contact_for(self.peer))
        if body:
            ok.headers.add("Content-Type", "application/sdp")
            ok.body = body
        incoming.respond(ok)
        if request.method == "INVITE":
            wait = OkUntilAck(incoming, ok, self._no_reoffer_ack)
            self._reoffer = _Reoffer(request.cseq.number, offered, wait)

    def _no_reoffer_ack(self) -> None:
        self._reoffer = None
        if self.state is LegState.ANSWERED:
            log.info("no ACK for a re-INVITE", call_id=self.call.id, leg=self.name)
            self._bye(Cause.RECOVERY_ON_TIMER_EXPIRY)  # §14.2
            self._end(Hangup(False, Cause.RECOVERY_ON_TIMER_EXPIRY))

    def _hold_music(self, held: bool) -> None:
        partner = self.partner
        endpoint = partner.media.endpoint if partner and partner.media else None
        if endpoint is None or held == self._holding:
            return
        self._holding = held
        if held:
            endpoint.start_music()
        else:
            endpoint.stop_music()

    def _info_digit(self, request: Request) -> None:
        got = parse_info(request.headers.get("Content-Type") or "", request.body)
        media = self.media
        if got is None or media is None:
            return
        if media.endpoint is not None:
            media.endpoint.digit(got.digit)
        elif self.partner is not None:  # bridged through the relay: pass it on as it came
            self.partner.send_info(got.digit)

    def on_ack(self, request: Request) -> None:
        """An ACK for a 2xx of ours: to a re-INVITE here (the first INVITE's: InboundLeg)."""
        pending = self._reoffer
        if pending is None or request.cseq.number != pending.cseq:
            return
        self._reoffer = None
        pending.wait.acked()
        if pending.offered and self.media is not None:
            try:  # §13.2.1 again: our 200 offered, the ACK answers
                self.media.point_at(read_answer(request.body, pending.offered))
                self._hold_music(self.media.agreed is not None and self.media.agreed.held)
            except ParseError as exc:
                log.info("bad SDP in an ACK", call_id=self.call.id, leg=self.name, error=str(exc))

    def on_2xx_again(self, response: Response) -> None:
        """A retransmitted 2xx (an outbound leg's): our ACK was lost."""


class InboundLeg(Leg):
    """The caller's INVITE, answered by the switch (the UAS of §13.3)."""

    def __init__(self, call: HandledCall, incoming: ServerRequest) -> None:
        super().__init__(call, incoming.peer, "the caller")
        self.incoming = incoming
        self.request = incoming.request
        self.final: Response | None = None  # our final response to the INVITE
        self._offered: list[Format] = []  # late offer: what our 200 offered
        self._ok: OkUntilAck | None = None  # our 200, until the ACK
        self._acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        incoming.on_cancel = self._on_cancel

    async def ring(self) -> None:
        """180 Ringing, once; nothing more on a ringing leg."""
        self.check_alive()
        if self.state is LegState.RINGING:
            return
        if self.state is not LegState.OFFERED:
            raise WrongState(self, "ring", f"is {self.state.value}")
        self.state = LegState.RINGING
        self._respond(180, None)

    def ring_if_offered(self) -> None:
        """A leg dialled for this caller rings: so does the caller's phone (no early media)."""
        if self.state is LegState.OFFERED:
            self.state = LegState.RINGING
            self._respond(180, None)

    async def answer(self) -> None:
        """200 with our SDP; returns once the caller's ACK came."""
        self.check_alive()
        if self.state not in (LegState.OFFERED, LegState.RINGING):
            raise WrongState(self, "answer", f"is {self.state.value} already")
        self.call.answer_caller(self)  # raises WrongState (and answers 488) for bad SDP
        await self.call.guard(asyncio.shield(self._acked))

    def send_ok(self, media: LegMedia, body: bytes, offered: list[Format]) -> None:
        """Answer the INVITE with ``body`` (our SDP): the call's part of ``answer``."""
        self.media, self._offered = media, offered
        self.state = LegState.ANSWERED
        self.answered_at = time.time()
        ok = self._respond(200, "OK", body)
        endpoint = self.call.endpoint
        self.dialog = Dialog.uas(self.request, ok, endpoint.contact_for(self.peer))
        self.call.dialogs[self.dialog.id] = self.call
        self._ok = OkUntilAck(self.incoming, ok, self._no_ack)

    async def hangup(self, cause: Cause = Cause.NORMAL_CLEARING) -> None:
        """BYE once answered, else the final response ``cause`` stands for."""
        if self.state in (LegState.OFFERED, LegState.RINGING):
            self.refuse(cause.status(), None, cause)
        else:
            await super().hangup(cause)

    def refuse(self, status: int, reason: str | None, cause: Cause) -> None:
        """A final failure response to the INVITE, ending the leg."""
        self._respond(status, reason, reason_header=cause.reason())
        self._end(Hangup(False, cause, status))

    def _respond(
        self, status: int, reason: str | None, sdp: bytes = b"", reason_header: str | None = None
    ) -> Response:
        response = self.request.response(status, reason, self.incoming.to_tag)
        if status < 300:
            response.headers.add("Contact", self.call.endpoint.contact_for(self.peer))
        if reason_header is not None:
            response.headers.add("Reason", reason_header)
        if sdp:
            response.headers.add("Content-Type", "application/sdp")
            response.body = sdp
        if status >= 200:
            self.final = response
        self.incoming.respond(response)
        return response

    def _on_cancel(self, cancel: Request) -> None:
        """The caller gave up before the answer (§9.2): 487, and the leg is over."""
        if self.state not in (LegState.OFFERED, LegState.RINGING):
            return
        cause = parse_reason(cancel.headers.get("Reason")) or Cause.NORMAL_CLEARING
        self._respond(487, None)
        self.call.cancelled = True
        self._end(Hangup(True, cause, 487))

    def _end(self, hangup: Hangup) -> None:
        if self._ok is not None:
            self._ok.acked()  # a BYE (or our hangup) before the ACK: nothing to wait for
        super()._end(hangup)

    def _no_ack(self) -> None:
        """No ACK for our 200 in 64*T1 (§13.3.1.4): the caller is gone."""
        if self._acked.done() or self.state is not LegState.ANSWERED:
            return
        log.info("no ACK from the caller", call_id=self.call.id)
        self._bye(Cause.RECOVERY_ON_TIMER_EXPIRY)
        self._end(Hangup(False, Cause.RECOVERY_ON_TIMER_EXPIRY))

    def on_ack(self, request: Request) -> None:
        if self._acked.done() or request.cseq.number != self.request.cseq.number:
            super().on_ack(request)
            return
        if self._offered and self.media is not None:
            # §13.2.1: our 200 carried the offer, the ACK carries the answer.
            try:
                self.media.point_at(read_answer(request.body, self._offered))
            except ParseError as exc:
                log.info("bad SDP in the caller's ACK", call_id=self.call.id, error=str(exc))
                self._bye(Cause.INCOMPATIBLE_DESTINATION)
                self._end(Hangup(False, Cause.INCOMPATIBLE_DESTINATION))
                return
        if self._ok is not None:
            self._ok.acked()
        self._acked.set_result(None)


class OutboundLeg(Leg):
    """A leg the switch dialled, once a phone answered it (the UAC of §13.2)."""

    def __init__(
        self, call: HandledCall, peer: Peer, name: str, dialog: Dialog, media: LegMedia
    ) -> None:
        super().__init__(call, peer, name)
        self.dialog, self.media = dialog, media
        self.state = LegState.ANSWERED
        self.answered_at = time.time()
        self.target = name
        self._ack: Request | None = None

    def acked(self, ack: Request) -> None:
        self._ack = ack

    def on_2xx_again(self, response: Response) -> None:
        if self._ack is not None and self.state is LegState.ANSWERED:
            self.call.endpoint.transports.send(bytes(self._ack), self.peer)
