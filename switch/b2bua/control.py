"""Call control: a call the switch answers and handles itself, as small awaitable operations.

This is the API dialplans run on. For a number routed to a handler, the B2BUA
does not fork the INVITE to a callee: it makes a ``HandledCall`` and runs
``async def handler(call: HandledCall) -> None`` as one asyncio task. The call
owns its legs (``switch.b2bua.legs``): ``caller``, the INVITE that came in,
and each leg it dialled. Operations::

    await call.ring()                      # 180
    await call.answer()                    # 200 with our SDP; returns at the ACK
    leg = await call.dial("102", timeout=20)   # OutboundLeg, or DialFailure
    gone = await call.bridge(call.caller, leg) # talk; returns the leg that hung up
    await call.sleep(5)
    await call.hangup(Cause.USER_BUSY)     # BYE or final response, Reason: Q.850
    await call.caller.play("greeting")     # a prompt; collect, record, music: the same
    await call.bridge(call.caller, leg, record="support/1.wav")  # a recorded bridge

``dial`` resolves its target as a phone of the tenant dialling it would
(``routing.dialled``: an extension's contacts, all at once, or an outside
number through the tenant's gateways with failover) and forks with
``switch.b2bua.forks``; ``timeout`` is the ring timeout. It returns the
answered ``OutboundLeg`` or a ``DialFailure`` (the SIP status and its Q.850
cause: busy, no answer, ...), and while the caller is not answered yet a
ringing callee rings the caller (180). Cancelling the awaiting task (asyncio
cancellation) CANCELs the forks.

Media: the caller's leg is answered with SDP on a relay session whose other
side is the switch's media endpoint (``media.endpoint``); a dialled leg is
offered the caller's agreed codec (or its offered ones, before the answer),
with the caller's payload types, then the other G.711 law; when it takes the
caller's codec the two can be ``bridge``d in the relay: the relay
joins their sessions (``RelaySession.join``) and the endpoints step out. When
one of them hangs up, the other is given a new endpoint and stays. Legs that
need the media engine between them stay on their endpoints and are linked in
the engine's mixer instead: different codecs (transcoding PCMU ↔ PCMA),
different DTMF forms (RFC 4733 on one side, INFO or tones on the other: each
digit is sent on in the form the other phone negotiated), or a recorded
bridge (``record=``: a stereo WAV, the first leg left, the second right; its
path and length go to the call record).

Hangups: the caller's hangup (BYE, CANCEL) ends the call: every leg the call
dialled is hung up, and the operation the handler awaits raises
``CallerHungUp``; so does any later one. An operation on a leg that ended
raises ``HungUp``. ``bridge`` is the one operation that returns on a hangup,
of either of its legs (the caller's too). ``call.sleep`` is the interruptible
pause; other awaits of the handler (``asyncio.sleep``) are not interrupted.
When the handler returns, raises or is cancelled, whatever is still up is
hung up (an unexpected exception: cause 41, "temporary failure").

Events go to the owner as for a basic call (``CCEventConnect`` at our answer,
``CCEventDisconnect`` / ``CCEventFail`` when the caller's leg ends), so call
records and metrics work the same (switch/cdr.py).

Not done here: calls originated by the switch with no caller (callback from a
queue needs it: today a handled call always starts from an INVITE), early
media, moving a relay-joined bridge onto the engine mid-call (a recording or a
supervisor must be asked for when the bridge starts).

Supervisors (``switch.b2bua.supervise``): every engine bridge is listed in the
owner's ``bridges`` by the extensions on its legs, where a supervisor's call
finds it; a tenant's calls are ``supervised`` (always bridged in the engine)
once it has a supervise route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from media import PortsExhausted, RelayLike, RelaySessionLike
from media import Side as MediaSide
from media.api import EndpointLike, EngineLike, RecordingLike
from switch.b2bua import endpoint_sdp
from switch.b2bua.call import CCEvent, CCEventConnect, CCEventDisconnect, CCEventFail, Side
from switch.b2bua.endpoint_sdp import Format
from switch.b2bua.forks import Fork, Forks, Target, ignore, invite
from switch.b2bua.legs import (
    CallerHungUp,
    Hangup,
    HungUp,
    InboundLeg,
    Leg,
    LegMedia,
    LegState,
    OutboundLeg,
    WrongState,
)
from switch.b2bua.q850 import Cause, cause_of
from switch.b2bua.supervise import Bridges, LiveBridge
from switch.endpoint import ServerRequest, SipEndpoint
from switch.sip.dialog import Dialog, DialogId
from switch.sip.errors import ParseError
from switch.sip.headers import NameAddr
from switch.sip.message import Request, Response
from switch.sip.uri import parse_uri
from switch.transport import Peer

log = structlog.get_logger()

T = TypeVar("T")
Handler = Callable[["HandledCall"], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class DialFailure:
    """A dial that no phone answered: the best final status of its forks and its cause."""

    target: str
    status: int
    reason: str
    cause: Cause


@dataclass(frozen=True, slots=True)
class Dialling:
    """Where a dial goes, as the owner resolved its target."""

    targets: list[Target]  # rung at once
    aor: str  # the To of the INVITEs
    failover: tuple[Target, ...] = ()  # tried in turn when all fail with 408/5xx (gateways)
    user: str | None = None  # the extension dialled, if one is
    gateways: dict[str, Peer] = field(default_factory=dict)


class Switchboard(Protocol):
    """What a handled call needs of its owner (the B2BUA service)."""

    def route(self, call: HandledCall, target: str) -> Dialling | DialFailure:
        """Where ``target`` dialled from this call goes, or why it cannot."""

    def connected(self, call: HandledCall, dialling: Dialling, peer: Peer) -> None:
        """A dialled leg answered from ``peer``: it now counts in the call limits."""

    def event(self, call: HandledCall, event: CCEvent) -> None: ...

    @property
    def bridges(self) -> Bridges:
        """The live engine bridges, where supervisors find them (``switch.b2bua.supervise``)."""


@dataclass(slots=True)
class Attempt:
    """One dial, for the call record: its target and its forks."""

    target: str
    user: str | None = None  # the tenant's extension it rings, if it rings one
    forks: list[Fork] = field(default_factory=list)
    leg: OutboundLeg | None = None


class HandledCall:
    """A call handled by the switch itself; see the module docstring."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        incoming: ServerRequest,
        *,
        relay: RelayLike,
        switchboard: Switchboard,
        dialogs: dict[DialogId, HandledCall],
        ring_timeout: float,
        engine: EngineLike,
    ) -> None:
        self.endpoint = endpoint
        self.relay = relay
        self.switchboard = switchboard
        self.dialogs = dialogs  # the owner's index of in-dialog requests to handled calls
        self.ring_timeout = ring_timeout
        self.engine = engine
        self.recording: RecordingLike | None = None  # the last recorded bridge (for the record)
        self.id = incoming.request.call_id
        self.tenant = ""
        self.caller_user: str | None = None  # the tenant's extension calling, if one is
        self.caller = InboundLeg(self, incoming)
        self.attempts: list[Attempt] = []
        self.cancelled = False  # the caller's CANCEL ended it
        self.callee_left = False  # a dialled party hung up first (for the record)
        self.supervised = False  # bridge in the engine, where a supervisor can join
        self.task: asyncio.Task[None] | None = None
        self.over = False

    def __repr__(self) -> str:
        return f"<HandledCall {self.id} {self.state.value}>"

    @property
    def state(self) -> LegState:
        return self.caller.state

    @property
    def legs(self) -> list[OutboundLeg]:
        return [a.leg for a in self.attempts if a.leg is not None]

    # -- the caller's operations, for short handlers ---------------------------------

    async def ring(self) -> None:
        await self.caller.ring()

    async def answer(self) -> None:
        await self.caller.answer()

    async def hangup(self, cause: Cause = Cause.NORMAL_CLEARING) -> None:
        """End the call: every dialled leg, then the caller, with ``cause``."""
        for leg in self.legs:
            await leg.hangup(cause)
        await self.caller.hangup(cause)

    async def sleep(self, seconds: float) -> None:
        """Pause, unless the caller hangs up meanwhile (``CallerHungUp``)."""
        await self.guard(asyncio.sleep(seconds))

    # -- answering -------------------------------------------------------------------

    def answer_caller(self, caller: InboundLeg) -> None:
        """Allocate the caller's media and send the 200 (the body of ``InboundLeg.answer``)."""
        try:
            session = self.relay.allocate(self.id)
        except (PortsExhausted, OSError) as exc:
            log.warning("no media ports", call_id=self.id, error=str(exc))
            caller.refuse(503, "No media ports", Cause.SWITCH_CONGESTION)
            raise WrongState(caller, "answer", "could not be given media ports") from None
        media = LegMedia(session, MediaSide.A, self._endpoint_on(session, MediaSide.B), None)
        offer = caller.request.body
        try:
            if offer:
                prefer = next((leg.codec for leg in self.legs if not leg.ended), None)
                body, agreed = endpoint_sdp.answer(
                    offer, session.local(MediaSide.A), prefer, media.origin
                )
                media.point_at(agreed)
                offered: list[Format] = []
            else:
                offered = list(endpoint_sdp.DEFAULT_FORMATS)
                body = endpoint_sdp.offer(session.local(MediaSide.A), offered, media.origin)
        except ParseError as exc:
            media.close()
            caller.refuse(488, f"Not Acceptable Here ({exc})"[:120], Cause.INCOMPATIBLE_DESTINATION)
            raise WrongState(caller, "answer", f"offered no usable media ({exc})") from None
        caller.send_ok(media, body, offered)
        self.switchboard.event(self, CCEventConnect())

    def _endpoint_on(
        self, session: RelaySessionLike, side: MediaSide, near: object = None
    ) -> EndpointLike:
        """A media endpoint facing ``side`` of ``session`` (the side not facing a phone), in
        the worker of ``near`` (a mix) or else of the session, where media runs in workers."""
        endpoint = self.engine.endpoint(near=session if near is None else near)
        session.set_remote(side, *endpoint.address)
        endpoint.attach((self.relay.local_host, session.local(side).rtp_port))
        return endpoint

    # -- dialling --------------------------------------------------------------------

    async def dial(self, target: str, timeout: float | None = None) -> OutboundLeg | DialFailure:
        """Ring ``target`` (an extension or a number) for ``timeout`` s; see the docstring."""
        self.caller.check_alive()
        routed = self.switchboard.route(self, target)
        if isinstance(routed, Dialling) and not routed.targets:
            routed = DialFailure(target, 480, "Not registered", cause_of(480))
        if isinstance(routed, Dialling):
            attempt = Attempt(target, routed.user)
            self.attempts.append(attempt)
            ring = self.ring_timeout if timeout is None else timeout
            result = await self.guard(self._dial(attempt, routed, ring))
        else:
            result = routed
        if isinstance(result, DialFailure):
            log.info("dial failed", call_id=self.id, target=target, status=result.status,
                     reason=result.reason, cause=result.cause.value)  # fmt: skip
        return result

    async def _dial(
        self, attempt: Attempt, routed: Dialling, timeout: float
    ) -> OutboundLeg | DialFailure:
        try:
            session = self.relay.allocate(self.id)
        except (PortsExhausted, OSError) as exc:
            log.warning("no media ports", call_id=self.id, error=str(exc))
            return DialFailure(attempt.target, 503, "No media ports", Cause.SWITCH_CONGESTION)
        media = LegMedia(session, MediaSide.B, self._endpoint_on(session, MediaSide.A), None)
        formats = self._formats_to_offer()
        body = endpoint_sdp.offer(session.local(MediaSide.B), formats, media.origin)
        done: asyncio.Future[OutboundLeg | DialFailure] = asyncio.get_running_loop().create_future()

        def fork(target: Target) -> Fork:
            # A gateway says who calls with the tenant's caller ID, not the extension.
            caller = self.caller.request.from_
            if target.from_uri is not None:
                caller = NameAddr(parse_uri(target.from_uri))
            return Fork(target, invite(self.endpoint, target, caller, routed.aor, body=body))

        def on_ring(response: Response) -> None:
            if not done.done() and not self.caller.ended:
                self.caller.ring_if_offered()

        def on_answer(won: Fork, dialog: Dialog, response: Response) -> None:
            ack = dialog.ack(won.request.cseq.number)
            self.endpoint.send_ack(ack, won.target.peer)
            if done.done():  # given up in the same instant: §13.2.2.4 wants ACK, then BYE
                self.endpoint.send_request(dialog.request("BYE"), won.target.peer, ignore)
                return
            try:
                media.point_at(endpoint_sdp.read_answer(response.body, formats))
            except ParseError as exc:
                log.info("bad SDP from a dialled phone", call_id=self.id, error=str(exc))
                bye = dialog.request("BYE")
                bye.headers.add("Reason", Cause.INCOMPATIBLE_DESTINATION.reason())
                self.endpoint.send_request(bye, won.target.peer, ignore)
                done.set_result(DialFailure(attempt.target, 488, "Not Acceptable Here",
                                            Cause.INCOMPATIBLE_DESTINATION))  # fmt: skip
                return
            leg = OutboundLeg(self, won.target.peer, f"the leg to {attempt.target}", dialog, media)
            leg.acked(ack)
            self.dialogs[dialog.id] = self
            done.set_result(leg)

        def on_fail(status: int, reason: str) -> None:
            if not done.done():
                # Our ring timeout is 480 "No Answer": the phone rang, nobody took it.
                cause = Cause.NO_ANSWER if reason == "No Answer" else cause_of(status)
                done.set_result(DialFailure(attempt.target, status, reason or "", cause))

        forks = Forks(self.endpoint, ring_timeout=timeout, on_ring=on_ring,
                      on_answer=on_answer, on_fail=on_fail)  # fmt: skip
        attempt.forks = [fork(target) for target in routed.targets]
        forks.start(attempt.forks, failover=[fork(target) for target in routed.failover])
        # Failover forks join the list as they are sent; the record reads it at the end.
        attempt.forks = forks.forks
        try:
            result = await done
        except asyncio.CancelledError:
            forks.stop()  # CANCEL to every phone still ringing
            media.close()
            raise
        if isinstance(result, DialFailure):
            media.close()
            return result
        attempt.leg = result
        log.info("dialled leg answered", call_id=self.id, target=attempt.target,
                 codec=result.codec)  # fmt: skip
        self.switchboard.connected(self, routed, result.peer)
        return result

    def _formats_to_offer(self) -> list[Format]:
        """What a dialled phone is offered: what the caller uses (or offered) first, so the
        two can be bridged in the relay, then the G.711 law the caller did not take, so that
        a phone with only that one is still reached (the engine transcodes); the switch's
        defaults when the caller said nothing."""
        media = self.caller.media
        if media is not None and media.agreed is not None:
            callers = media.agreed.formats
        else:
            callers = endpoint_sdp.offered_formats(self.caller.request.body)
        return endpoint_sdp.with_every_voice(callers)

    # -- bridging --------------------------------------------------------------------

    async def bridge(self, a: Leg, b: Leg, *, record: str | None = None) -> Leg:
        """Let ``a`` and ``b`` talk; return the one that hung up first (see the docstring).

        ``record``: a WAV path (relative ones under the engine's recordings folder) for a
        stereo recording of the bridge, ``a`` left and ``b`` right.
        """
        if a is b:
            raise WrongState(a, "bridge", "cannot be bridged with itself")
        for leg in (a, b):
            leg.check_alive()
            if leg.state is not LegState.ANSWERED or leg.media is None:
                raise WrongState(leg, "bridge", f"is {leg.state.value}, not answered")
            if leg.partner is not None:
                raise WrongState(leg, "bridge", f"is bridged with {leg.partner.name} already")
        ma, mb = a.media, b.media
        assert ma is not None and mb is not None
        through_engine = (
            record is not None
            or self.supervised
            or ma.codec != mb.codec
            or (ma.agreed is not None and mb.agreed is not None
                and (ma.agreed.events is None) != (mb.agreed.events is None))
        )  # fmt: skip
        a.partner, b.partner = b, a
        if through_engine:
            unlink = self._bridge_in_engine(a, b, record)
        else:
            self._join(a, b)
            unlink = None
        log.info("bridged", call_id=self.id, a=a.name, b=b.name, engine=through_engine,
                 recording=record)  # fmt: skip
        waits = [asyncio.ensure_future(leg.wait_hangup()) for leg in (a, b)]
        try:
            watch_caller = self.caller not in (a, b)
            await self.guard(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED),
                             watch_caller=watch_caller)  # fmt: skip
        finally:
            for wait in waits:
                wait.cancel()
            if unlink is not None:
                unlink()
        gone = a if a.ended else b
        log.info("bridge ended", call_id=self.id, by=gone.name)
        return gone

    def pause_recording(self, paused: bool = True) -> None:
        """Write silence instead of the call into its recording until resumed (a caller
        reading out a card number); the file keeps the call's timeline."""
        if self.recording is None or self.recording.done.done():
            raise WrongState(self.caller, "pause_recording", "is not in a recorded bridge")
        self.recording.paused = paused
        log.info("recording paused" if paused else "recording resumed", call_id=self.id)

    def resume_recording(self) -> None:
        self.pause_recording(False)

    def _join(self, a: Leg, b: Leg) -> None:
        """Bridge in the relay: one session of the two phones, the endpoints step out."""
        ma, mb = a.media, b.media
        assert ma is not None and mb is not None
        joined = ma.session.join(ma.side, mb.session, mb.side)
        for leg, media, side in ((a, ma, ma.side), (b, mb, ma.side.other)):
            stats = media.stats()
            if media.endpoint is not None:
                media.endpoint.close()
            sent = (stats.packets_out, stats.bytes_out)
            leg.media = LegMedia(joined, side, None, media.agreed, sent, origin=media.origin)

    def move_endpoint(self, leg: Leg, near: object) -> EndpointLike:
        """Give ``leg`` a new media endpoint in the worker of ``near`` (a mix), where media
        runs in workers: the relay leg that faced the old endpoint faces the new one."""
        media = leg.media
        assert media is not None and media.endpoint is not None
        old = media.endpoint
        media.endpoint = self._endpoint_on(media.session, media.side.other, near)
        media.tell(media.endpoint)
        media.endpoint.on_digit, media.endpoint.on_info = old.on_digit, old.on_info
        old.close()
        log.info("media endpoint moved", call_id=self.id, leg=leg.name)
        return media.endpoint

    def _bridge_in_engine(self, a: Leg, b: Leg, record: str | None) -> Callable[[], None]:
        """Bridge in the media engine's mixer; the function that undoes it."""
        ea, eb = (leg.media.endpoint for leg in (a, b) if leg.media is not None)
        assert ea is not None and eb is not None
        mix = self.engine.conference()
        mix.add(ea.row)
        if not self.engine.near(eb.row, mix):  # media workers: the two must share one
            eb = self.move_endpoint(b, mix)
        mix.add(eb.row)
        for end, other, leg in ((ea, eb, b), (eb, ea, a)):
            end.flush_digits()
            end.on_digit = other.send_digit
            other.on_info = leg.send_info
        recording = None
        if record is not None:
            recording = self.engine.record(record, [ea.row, eb.row])
            self.recording = recording
        rows = {ext: end.row for leg, end in ((a, ea), (b, eb)) if (ext := self.extension_of(leg))}
        live = LiveBridge(self.id, self.tenant, mix, rows)
        self.switchboard.bridges.add(live)

        def unlink() -> None:
            self.switchboard.bridges.remove(live)
            mix.close()
            for end in (ea, eb):
                end.on_digit = end.on_info = None
            if recording is not None:
                recording.stop()

        return unlink

    def extension_of(self, leg: Leg) -> str | None:
        """The tenant's extension on ``leg``: the one calling, or the one dialled."""
        if leg is self.caller:
            return self.caller_user
        return next((a.user for a in self.attempts if a.leg is leg), None)

    # -- legs coming and going -------------------------------------------------------

    def leg_ended(self, leg: Leg, hangup: Hangup) -> None:
        """A leg of this call ended (``Leg._end``): unbridge, free media, end the call."""
        partner, leg.partner = leg.partner, None
        media = leg.media
        if partner is not None:
            partner.partner = None
        engine_bridged = partner is not None and partner.media is not None and (
            partner.media.endpoint is not None)  # fmt: skip
        if partner is None or partner.ended or leg is self.caller or engine_bridged:
            if media is not None:
                media.session.close()  # nobody is left on it (a caller's partner goes next)
        elif media is not None and partner.media is not None:
            # The partner stays: the departed phone's relay leg now faces an endpoint.
            endpoint = self._endpoint_on(media.session, media.side)
            partner.media.endpoint = endpoint
            partner.media.tell(endpoint)
        if leg is not self.caller:
            if hangup.by_phone and self.caller.state is LegState.ANSWERED:
                self.callee_left = True
            return
        for other in self.legs:
            if not other.ended:
                other._bye(Cause.NORMAL_CLEARING)
                other._end(Hangup(False, Cause.NORMAL_CLEARING))
        self.over = True
        self.switchboard.event(self, self._final_event(hangup))

    def _final_event(self, hangup: Hangup) -> CCEvent:
        if self.caller.answered_at is not None:
            if hangup.by_phone:
                by: Side | None = Side.A
            else:
                by = Side.B if self.callee_left else None
            return CCEventDisconnect(by)
        final = self.caller.final
        status = hangup.status or (final.status if final is not None else 500)
        return CCEventFail(status, final.reason if final is not None else "")

    def media_timeout(self) -> None:
        """The relay saw no RTP for too long on a leg of this call: end the call."""
        for leg in [*self.legs, self.caller]:
            if not leg.ended and leg.state is LegState.ANSWERED:
                leg._bye(Cause.RECOVERY_ON_TIMER_EXPIRY)
                leg._end(Hangup(False, Cause.RECOVERY_ON_TIMER_EXPIRY))

    # -- running the handler ---------------------------------------------------------

    def start(self, handler: Handler, name: str) -> None:
        self.task = asyncio.create_task(self._run(handler, name), name=f"call {self.id}")

    async def _run(self, handler: Handler, name: str) -> None:
        cause = Cause.NORMAL_CLEARING
        try:
            await handler(self)
        except CallerHungUp:
            pass  # the usual way for a handler to end early
        except asyncio.CancelledError:
            log.info("handler cancelled", call_id=self.id, handler=name)
        except Exception:
            log.exception("call handler failed", call_id=self.id, handler=name)
            cause = Cause.TEMPORARY_FAILURE
        if not self.caller.ended:
            await self.hangup(cause)
        else:
            for leg in self.legs:  # the call is over already; nothing should be left
                await leg.hangup(cause)

    async def stop(self) -> None:
        """Cancel the handler (the daemon stops); its legs are hung up."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    # -- interrupting ----------------------------------------------------------------

    async def guard(self, work: Awaitable[T], *legs: Leg, watch_caller: bool = True) -> T:
        """Await ``work`` unless the caller (or one of ``legs``) ends first: then cancel it
        and raise ``CallerHungUp`` (``HungUp``)."""
        watched: Sequence[Leg] = [*([self.caller] if watch_caller else []), *legs]
        for leg in watched:
            leg.check_alive()
        task = asyncio.ensure_future(work)
        ends = [asyncio.ensure_future(leg.wait_hangup()) for leg in watched]
        try:
            await asyncio.wait([task, *ends], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            for end in ends:
                end.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # let it clean up (CANCEL)
        for leg in watched:
            leg.check_alive()
        raise AssertionError("unreachable: a watched leg ended")

    def hung_up(self, leg: Leg, hangup: Hangup) -> HungUp:
        return CallerHungUp(leg, hangup) if leg is self.caller else HungUp(leg, hangup)

    # -- in-dialog requests (the owner finds the call by dialog id) -----------------------

    def leg_of(self, dialog_id: DialogId) -> Leg | None:
        for leg in (self.caller, *self.legs):
            if leg.dialog is not None and leg.dialog.id == dialog_id:
                return leg
        return None

    def on_bye(self, incoming: ServerRequest, dialog_id: DialogId) -> None:
        self.on_request(incoming, dialog_id)

    def on_request(self, incoming: ServerRequest, dialog_id: DialogId) -> None:
        leg = self.leg_of(dialog_id)
        if leg is None:
            incoming.respond(incoming.request.response(481, None, incoming.to_tag))  # §12.2.2
        elif incoming.request.method == "BYE":
            leg.on_bye(incoming)
        else:
            leg.on_request(incoming)

    def on_ack(self, request: Request, dialog_id: DialogId) -> None:
        leg = self.leg_of(dialog_id)
        if leg is not None:
            leg.on_ack(request)

    def on_2xx_again(self, response: Response, dialog_id: DialogId) -> None:
        leg = self.leg_of(dialog_id)
        if leg is not None:
            leg.on_2xx_again(response)


__all__ = [
    "CallerHungUp",
    "DialFailure",
    "Dialling",
    "HandledCall",
    "Handler",
    "Hangup",
    "HungUp",
    "InboundLeg",
    "Leg",
    "LegState",
    "OutboundLeg",
    "Switchboard",
    "WrongState",
]
