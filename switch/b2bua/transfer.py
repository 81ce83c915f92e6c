"""Call transfer: REFER (RFC 3515, RFC 5589) blind and attended, INVITE with Replaces (RFC 3891).

A phone in a connected call (the transferor) sends REFER in its dialog with
us; the other phone of that call (the transferee) stays, and a new party
takes the transferor's place (its ``Side`` of the ``Call``). We act as the
transferee towards the transferor: 202 Accepted, then NOTIFYs in the same
dialog (the implicit subscription, RFC 3515 §2.4.4 and RFC 6665) with
``Event: refer;id=<REFER CSeq>`` and ``message/sipfrag`` bodies: ``SIP/2.0
100 Trying`` (``Subscription-State: active``), ``SIP/2.0 180 Ringing`` once the
target rings (a blind transfer), then the final status of the
new leg (``terminated;reason=noresource``). Each NOTIFY waits for the
response to the one before, so they arrive in order. ``Refer-Sub: false``
(RFC 4488) gets 202 with ``Refer-Sub: false`` and no NOTIFY at all.

Blind (``Refer-To: <sip:103@domain>``): the target must be an extension of
the call's tenant that is not over its call limit (else 403). We fork to the
target's contacts (``switch.b2bua.forks``, ring timeout as for any call),
From the transferee, with the REFER's ``Referred-By``. The offer is the
transferee's SDP on the relay ports that faced the transferor
(``TransferMedia.offer_for``); when the target answers, that relay leg is
re-pointed at it and the transferee needs no re-INVITE. If the target fails,
nothing changes for the transferee: the NOTIFY says why and the transferor
stays in the call (RFC 5589 §6.1: it may retrieve the call).

Attended (``Refer-To: <sip:C?Replaces=...>``): the Replaces names the
transferor's dialog with us in its other call, so the consultation call is
found in our own dialog index, no INVITE with Replaces goes anywhere. The
relay joins the transferee's leg of this call and the target's leg of the
other (``RelaySession.join``); both of the transferor's legs get BYE.

The transferor's leg ends with BYE: at once when it is not subscribed,
else ``BYE_GRACE`` seconds after the final NOTIFY was answered, unless it
sent BYE itself by then (pjsip and most phones do, RFC 5589 §6.1). A
transferor that hangs up while the target rings leaves the transferee
waiting for it; if the target then fails, the transferee gets BYE.

An INVITE with Replaces from a phone of the tenant (``replace``) takes the
place of the leg whose dialog it names (RFC 3891 §3): 200 with the other
phone's SDP narrowed to the new phone's offer, BYE to the replaced phone.
481 when no confirmed dialog of ours matches, 486 for ``early-only`` on a
confirmed dialog (§3 step 6), 488 without an offer we can answer.

Not done here: transfer to other tenants or trunks, REFER outside a dialog
(481), REFER methods other than INVITE (``method=`` in Refer-To: 403),
re-INVITE of a transferee that the transferor had put on hold (it stays on
hold until it resumes itself), replacing early dialogs, and calls without
the media relay (501: the phones would need re-INVITEs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import unquote

import structlog

from media import LegStats, StatsCell
from media import Side as MediaSide
from switch.b2bua.call import Call, Side
from switch.b2bua.forks import Fork, Forks, Target, ignore, invite
from switch.b2bua.media import RelayMedia, TransferMedia
from switch.endpoint import OkUntilAck, ServerRequest
from switch.sip.dialog import Dialog, DialogId, DialogState
from switch.sip.errors import ParseError
from switch.sip.headers import parse_name_addr
from switch.sip.message import Request, Response
from switch.sip.uri import SipUri
from switch.transport import Peer

log = structlog.get_logger()

BYE_GRACE = 2.0  # seconds the transferor has to BYE by itself after the final NOTIFY
SIPFRAG = "message/sipfrag;version=2.0"


class TransferError(Exception):
    """A REFER or INVITE with Replaces refused: the status and reason to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class Kind(enum.StrEnum):
    BLIND = "blind"
    ATTENDED = "attended"
    REPLACES = "replaces"


@dataclass(frozen=True, slots=True)
class Replaces:
    """RFC 3891 §6.1: the dialog to replace, as its recipient sees it (to-tag is ours)."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    @property
    def dialog_id(self) -> DialogId:
        return DialogId(self.call_id, self.to_tag, self.from_tag)


def parse_replaces(value: str) -> Replaces:
    call_id, *params = (part.strip() for part in value.split(";"))
    tags = {}
    early_only = False
    for item in params:
        name, eq, text = item.partition("=")
        if name.lower() == "early-only":
            early_only = True
        elif eq:
            tags[name.lower()] = text
    if not call_id or "to-tag" not in tags or "from-tag" not in tags:
        raise ParseError(f"Replaces: needs call-id, to-tag and from-tag: {value[:120]!r}")
    return Replaces(call_id, tags["to-tag"], tags["from-tag"], early_only)


@dataclass(frozen=True, slots=True)
class ReferTo:
    uri: SipUri
    replaces: Replaces | None


def parse_refer_to(request: Request) -> ReferTo:
    """The one Refer-To of a REFER (RFC 3515 §2.4.1: 400 unless exactly one)."""
    values = request.headers.values("Refer-To")
    if len(values) != 1:
        raise TransferError(400, "Exactly one Refer-To expected")
    try:
        address = parse_name_addr(values[0], "Refer-To")
    except ParseError as exc:
        raise TransferError(400, f"Bad Refer-To ({exc})"[:120]) from None
    uri = address.uri
    if not isinstance(uri, SipUri) or uri.user is None:
        raise TransferError(403, "Refer-To must be a sip: URI of an extension")
    replaces = None
    for item in (uri.headers or "").split("&"):
        name, _, value = item.partition("=")
        if name.lower() == "replaces":
            try:
                replaces = parse_replaces(unquote(value))
            except ParseError as exc:
                raise TransferError(400, str(exc)[:120]) from None
        elif name.lower() == "method" and value.upper() != "INVITE":
            raise TransferError(403, "Only INVITE can be referred")
    return ReferTo(uri, replaces)


@dataclass(frozen=True, slots=True)
class LegCounters:
    """One side's relay counters at a moment of a transfer."""

    cell: StatsCell
    side: Side
    out_afresh: bool = False  # a moved leg's "out" restarts at the join (RelaySession.join)

    def get(self) -> LegStats:
        stats = self.cell.stats.a if self.side is Side.A else self.cell.stats.b
        if self.out_afresh:
            return dataclasses.replace(stats, packets_out=0, bytes_out=0)
        return stats


@dataclass(slots=True)
class TransferRecord:
    """One change of party in a call, for the call record."""

    kind: Kind
    side: Side  # whose place the new party took
    by: str | None  # the transferor's extension; None: the new phone itself (Replaces)
    target: str  # the new party's extension
    forks: list[Fork] = field(default_factory=list)  # blind: one INVITE per contact
    sip_call_id: str | None = None  # attended, Replaces: the new party's dialog
    peer: Peer | None = None
    status: int | None = None  # the new leg's final status
    joined_at: float | None = None
    # Relay counters of the departing phone's leg, and those the new party's leg had already:
    # read when the call record is written (media workers report them a moment later).
    replaced_counters: LegCounters | None = None
    before_counters: LegCounters | None = None

    @property
    def replaced(self) -> LegStats | None:
        return None if self.replaced_counters is None else self.replaced_counters.get()

    @property
    def before(self) -> LegStats | None:
        return None if self.before_counters is None else self.before_counters.get()

    def targets(self) -> list[TargetLeg]:
        if self.forks:
            return [TargetLeg(f.request.call_id, f.target.uri, f.target.peer, f.final)
                    for f in self.forks]  # fmt: skip
        if self.sip_call_id is None:
            return []
        return [TargetLeg(self.sip_call_id, None, self.peer, self.status)]


@dataclass(frozen=True, slots=True)
class TargetLeg:
    """One leg towards a transfer's target, as the call record lists it."""

    sip_call_id: str
    contact: str | None
    peer: Peer | None
    status: int | None


class Subscription:
    """The implicit subscription of one REFER: NOTIFYs in order, each after the last's response."""

    def __init__(self, call: Call, side: Side, refer: Request, expires: float) -> None:
        self.call = call
        self.dialog, self.peer = call.leg_of(side)  # the transferor's, even once it is replaced
        self.event = f"refer;id={refer.cseq.number}"
        self.expires = int(expires)
        self.queue: deque[tuple[int, str, bool]] = deque()
        self.busy = False
        self.ended = False  # the final NOTIFY was answered (or could not be sent)
        self.on_ended: list[asyncio.TimerHandle] = []
        self.after: object = None

    def notify(self, status: int, reason: str, final: bool) -> None:
        self.queue.append((status, reason, final))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.queue:
            self.busy = False
            return
        status, reason, final = self.queue.popleft()
        dialog, peer = self.dialog, self.peer
        if dialog is None or peer is None or dialog.state is DialogState.TERMINATED:
            self.queue.clear()
            self._done()
            return
        body = f"SIP/2.0 {status} {reason}\r\n".encode()
        request = dialog.request("NOTIFY", body=body, content_type=SIPFRAG)
        request.headers.add("Event", self.event)
        state = "terminated;reason=noresource" if final else f"active;expires={self.expires}"
        request.headers.add("Subscription-State", state)
        self.busy = True

        def on_response(response: Response) -> None:
            if response.status < 200:
                return
            if final:
                self._done()
            self._next()

        self.call.endpoint.send_request(request, peer, on_response)

    def _done(self) -> None:
        self.busy = False
        if not self.ended:
            self.ended = True
            callback, self.after = self.after, None
            if callable(callback):
                callback()


class Transfer:
    """One REFER on its way: the subscription, the new leg, and the transferor's leg."""

    def __init__(
        self,
        call: Call,
        side: Side,
        refer: ServerRequest,
        record: TransferRecord,
        *,
        subscribed: bool,
        expires: float,
    ) -> None:
        self.call = call
        self.side = side
        self.record = record
        self.subscription = Subscription(call, side, refer.request, expires) if subscribed else None
        self.forks: Forks | None = None
        self.transferor_left = False
        self.rang = False  # the transferor was told the target rings
        response = refer.request.response(202, "Accepted", refer.to_tag)
        if not subscribed:
            response.headers.add("Refer-Sub", "false")  # RFC 4488 §4
        response.headers.add("Contact", call.endpoint.contact_for(refer.peer))
        refer.respond(response)
        call.transfer = self
        call.transfers.append(record)
        self._notify(100, "Trying", final=False)

    def _notify(self, status: int, reason: str, *, final: bool) -> None:
        if self.subscription is not None and not self.transferor_left:
            self.subscription.notify(status, reason, final)

    # -- blind: a new leg to the target ---------------------------------------

    def blind(self, targets: list[Target], target_aor: str, referred_by: str | None) -> None:
        call = self.call
        if not targets:
            self._failed(480, "Not registered")
            return
        stays, _ = call.leg_of(_other(self.side))
        assert isinstance(call.media, RelayMedia) and stays is not None
        try:
            offer = call.media.offer_for(_relay(self.side))
        except ParseError as exc:
            self._failed(488, f"Not Acceptable Here ({exc})"[:120])
            return
        extra = (("Referred-By", referred_by),) if referred_by else ()
        self.record.forks = [
            Fork(target, invite(call.endpoint, target, stays.remote, target_aor,
                                body=offer, extra=extra))
            for target in targets
        ]  # fmt: skip
        self.forks = Forks(
            call.endpoint,
            ring_timeout=call.ring_timeout,
            on_ring=self._on_ring,
            on_answer=self._on_answer,
            on_fail=self._failed,
        )
        self.forks.start(self.record.forks)

    def _on_ring(self, response: Response) -> None:
        """The target rings: the transferor hears of it once (RFC 3515 §2.4.5, a 1xx)."""
        if not self.rang:
            self.rang = True
            self._notify(response.status, response.reason, final=False)

    def _on_answer(self, fork: Fork, dialog: Dialog, response: Response) -> None:
        call, peer = self.call, fork.target.peer
        call.endpoint.send_ack(dialog.ack(fork.request.cseq.number), peer)
        assert isinstance(call.media, RelayMedia)
        try:
            if not response.body:
                raise ParseError("no SDP in the answer")
            replaced = call.media.session.snapshot()
            call.media.retarget(_relay(self.side), response.body)
        except ParseError as exc:
            log.info("bad SDP from the transfer target", call_id=call.id, error=str(exc))
            call.endpoint.send_request(dialog.request("BYE"), peer, ignore)
            self._failed(488, "Not Acceptable Here")
            return
        counters = LegCounters(replaced, self.side)
        self.record.replaced_counters = self.record.before_counters = counters
        self._joined(dialog, peer, 200, "OK")

    def _joined(self, dialog: Dialog, peer: Peer, status: int, reason: str) -> None:
        """The new party is in the call: the transferor's leg goes."""
        call, record = self.call, self.record
        record.status, record.joined_at, record.peer = status, time.time(), peer
        record.sip_call_id = dialog.call_id
        old, old_peer = call.replace_leg(self.side, dialog, peer)
        call.transfer = None
        call.transferred(record)
        if self.transferor_left or old is None or old_peer is None:
            return
        departed = Departed(call, old, old_peer)
        if self.subscription is None:
            departed.bye()
            return
        self.subscription.after = departed.wait
        self._notify(status, reason, final=True)

    def _failed(self, status: int, reason: str) -> None:
        call = self.call
        self.record.status = status
        call.transfer = None
        call.transferred(self.record)
        self._notify(status, reason or _REASONS.get(status, "Failed"), final=True)
        if self.transferor_left:
            call.hang_up(self.side)  # nobody to go back to: the transferee's call ends

    def on_transferor_bye(self) -> None:
        """The transferor left before the target answered; the transferee waits for it."""
        self.transferor_left = True

    def abort(self) -> None:
        """The call ends while the target rings."""
        if self.forks is not None:
            self.forks.stop()
        self.call.transfer = None

    # -- attended: join with the consultation call ----------------------------

    def attended(self, other: Call, other_side: Side) -> None:
        """Join the transferee with the far phone of ``other``, the transferor's other call."""
        call, side = self.call, self.side
        assert isinstance(call.media, RelayMedia) and isinstance(other.media, RelayMedia)
        before_other = other.media.session.snapshot()
        before_this = call.media.session.snapshot()
        kept = _other(other_side)
        joined = call.media.join(_relay(_other(side)), other.media, _relay(kept))
        dialog, peer = other.hand_over(kept)
        call.media = joined
        self.record.replaced_counters = LegCounters(before_this, side)
        # The moved leg's "out" restarts at the join (RelaySession.join); its "in" carries on.
        self.record.before_counters = LegCounters(before_other, kept, out_afresh=True)
        self._joined(dialog, peer, 200, "OK")


class Departed:
    """The transferor's leg after the new party joined: BYE unless it leaves by itself."""

    def __init__(self, call: Call, dialog: Dialog, peer: Peer) -> None:
        self.call, self.dialog, self.peer = call, dialog, peer
        self.timer: asyncio.TimerHandle | None = None
        call.departed[dialog.id] = self
        call.dialogs[dialog.id] = call

    def wait(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(BYE_GRACE, self.bye)

    def bye(self) -> None:
        self.timer = None
        if self.call.departed.pop(self.dialog.id, None) is None:
            return
        self.call.dialogs.pop(self.dialog.id, None)
        self.call.endpoint.send_request(self.dialog.request("BYE"), self.peer, ignore)
        self.dialog.terminate()

    def on_bye(self, incoming: ServerRequest) -> None:
        """The transferor hung up itself."""
        if self.timer is not None:
            self.timer.cancel()
        self.call.departed.pop(self.dialog.id, None)
        self.call.dialogs.pop(self.dialog.id, None)
        status = self.dialog.receive_request(incoming.request)
        incoming.respond(incoming.request.response(status or 200, None, incoming.to_tag))


# -- INVITE with Replaces (RFC 3891) -------------------------------------------


def replace(call: Call, side: Side, incoming: ServerRequest, user: str) -> None:
    """The phone of ``incoming`` takes the place of ``call``'s ``side`` (see the docstring)."""
    request = incoming.request
    media = call.media
    if not isinstance(media, RelayMedia):
        raise TransferError(501, "Replaces needs the media relay")
    if not request.body:
        raise TransferError(488, "Replaces needs an SDP offer")
    replaced = media.session.snapshot()
    try:
        answer = media.answer_for(_relay(side), request.body)
    except ParseError as exc:
        raise TransferError(488, f"Not Acceptable Here ({exc})"[:120]) from None
    ok = request.response(200, "OK", incoming.to_tag)
    ok.headers.add("Contact", call.endpoint.contact_for(incoming.peer))
    ok.headers.add("Content-Type", "application/sdp")
    ok.body = answer
    incoming.respond(ok)
    dialog = Dialog.uas(request, ok, call.endpoint.contact_for(incoming.peer))
    call.unacked[dialog.id] = OkUntilAck(incoming, ok, functools.partial(call.hang_up, None))
    record = TransferRecord(Kind.REPLACES, side, None, user, status=200)
    record.replaced_counters = record.before_counters = LegCounters(replaced, side)
    record.joined_at, record.peer, record.sip_call_id = time.time(), incoming.peer, request.call_id
    call.transfers.append(record)
    old, old_peer = call.replace_leg(side, dialog, incoming.peer)
    call.transferred(record)
    if old is not None and old_peer is not None:
        Departed(call, old, old_peer).bye()


def _other(side: Side) -> Side:
    return Side.B if side is Side.A else Side.A


def _relay(side: Side) -> MediaSide:
    return MediaSide.A if side is Side.A else MediaSide.B


_REASONS = {480: "Temporarily Unavailable", 486: "Busy Here", 487: "Request Terminated"}

__all__ = [
    "Kind",
    "ReferTo",
    "Replaces",
    "TransferError",
    "TransferMedia",
    "TransferRecord",
    "parse_refer_to",
    "parse_replaces",
    "replace",
]
