"""The B2BUA's entry points: INVITE, BYE, ACK and stray 2xx from the endpoint.

An INVITE from a phone is checked like a proxy would (§16.3: Max-Forwards,
loops), authenticated against the caller's tenant with a 407 challenge
(§22.3; the digest logic is the registrar's), and routed by the short
number in the Request-URI to the contacts of that extension in the same
tenant. Each accepted INVITE becomes a ``Call``; in-dialog requests find
their call by dialog id (§12.2.2).

In-dialog re-INVITE, INFO and UPDATE go to their call, which passes them
to the other leg; in-dialog OPTIONS is answered by the endpoint (200).

Calls at once are limited per user (placed or taken, ``calls.max_per_user``:
the caller gets 403) and per tenant (``calls.max_per_tenant``: 486), a first
guard against toll fraud through a stolen password. A transfer keeps the
call one call of its tenant; its target must be under its own user limit.

REFER in a dialog of ours is a transfer (``switch.b2bua.transfer``): the
target is checked here (an extension of the call's tenant, the transferor's
other call for an attended transfer) before the call hands it on. An INVITE
with a Replaces header is authenticated like any INVITE, then takes the
place of the leg it names instead of being routed.

Not done here: calls to other tenants or trunks, dialplans.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from media import MediaTimeout, PortsExhausted, Relay
from switch.b2bua.call import (
    Call,
    CallState,
    CCEvent,
    CCEventDisconnect,
    CCEventFail,
    CCEventTransfer,
    Side,
)
from switch.b2bua.forks import Target
from switch.b2bua.media import MediaFactory, MediaSession, RelayMedia, pass_through
from switch.b2bua.transfer import (
    Kind,
    Transfer,
    TransferError,
    TransferRecord,
    parse_refer_to,
    parse_replaces,
    replace,
)
from switch.cdr import CallRecorder
from switch.config import Config, Tenant
from switch.endpoint import ServerRequest, SipEndpoint
from switch.location import LocationService
from switch.metrics import Metrics
from switch.registrar import Registrar
from switch.sip.dialog import DialogId, uac_id, uas_id
from switch.sip.errors import ParseError
from switch.sip.message import Request, Response
from switch.sip.uri import SipUri
from switch.transport import Peer

log = structlog.get_logger()


class B2bua:
    def __init__(
        self,
        config: Config,
        endpoint: SipEndpoint,
        location: LocationService,
        registrar: Registrar,
        metrics: Metrics,
        media: MediaFactory = pass_through,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.location = location
        self.registrar = registrar
        self.metrics = metrics
        self.media = media
        self.clock = clock
        self.dialogs: dict[DialogId, Call] = {}
        self.active: set[Call] = set()
        self._per_user: Counter[tuple[str, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()
        self.recorder: CallRecorder | None = None  # call records (CDR), when there is a store

    def attach(self) -> None:
        """Take INVITE, BYE, 2xx ACKs and stray 2xx from the endpoint."""
        self.endpoint.cores["INVITE"] = self.on_invite
        self.endpoint.cores["BYE"] = self.on_bye
        self.endpoint.cores["INFO"] = self.on_in_dialog
        self.endpoint.cores["UPDATE"] = self.on_in_dialog
        self.endpoint.cores["REFER"] = self.on_refer
        self.endpoint.ack_handler = self.on_ack
        self.endpoint.stray_2xx = self.on_stray_2xx

    def on_invite(self, incoming: ServerRequest) -> None:
        if incoming.request.to.tag is not None:
            self.on_in_dialog(incoming)  # a re-INVITE (§14.2)
            return
        response = self._admit(incoming)
        if response is not None:
            incoming.respond(response)

    def _caller(self, incoming: ServerRequest) -> Response | _Caller:
        """The authenticated caller of a new INVITE, or the response that refuses it."""
        request, peer, to_tag = incoming.request, incoming.peer, incoming.to_tag
        if request.max_forwards == 0:
            return request.response(483, None, to_tag)  # §16.3 step 3
        ours = self.endpoint.via_for(peer).sent_by
        if any(via.sent_by == ours for via in request.via):
            return request.response(482, None, to_tag)  # §16.3 step 4: it came back to us
        caller_uri, target = request.from_.uri, request.request_uri
        assert isinstance(target, SipUri)  # the endpoint answered 416 to other schemes
        domain = caller_uri.host if isinstance(caller_uri, SipUri) else target.host
        tenant = self.config.tenant_by_domain(domain)
        if tenant is None:
            return request.response(404, "Domain not served here", to_tag)
        now = self.clock()
        outcome = self.registrar.authenticate(request, tenant, peer, now, to_tag, proxy=True)
        if outcome.response is not None:
            return outcome.response
        assert outcome.user is not None and isinstance(caller_uri, SipUri)
        if caller_uri.user_unescaped != outcome.user:
            # §26.3.2.2: an authenticated user may not call as someone else
            return request.response(403, "From does not match the credentials", to_tag)
        return _Caller(tenant, outcome.user, now)

    def _admit(self, incoming: ServerRequest) -> Response | None:
        """Start the call, or the response that refuses it."""
        request, to_tag = incoming.request, incoming.to_tag
        caller = self._caller(incoming)
        if isinstance(caller, Response):
            return caller
        if "Replaces" in request.headers:
            return self._replace(incoming, caller)
        tenant, user, now = caller.tenant, caller.user, caller.now
        target = request.request_uri
        assert isinstance(target, SipUri)
        callee = target.user_unescaped
        if callee is None or tenant.user(callee) is None:
            return request.response(404, None, to_tag)
        refused = self._over_limit(request, tenant.name, user, to_tag)
        if refused is not None:
            return refused
        bindings = self.location.bindings(tenant.name, callee, now)
        if not bindings:
            return request.response(480, "Not registered", to_tag)
        targets = [
            Target(b.contact, Peer(b.transport, b.source_host, b.source_port)) for b in bindings
        ]
        try:
            media = self.media(request.call_id)
        except (PortsExhausted, OSError) as exc:
            log.warning("no media ports", call_id=request.call_id, error=str(exc))
            response = request.response(503, "No media ports", to_tag)
            response.headers.add("Retry-After", "5")
            return response
        call = Call(
            self.endpoint,
            incoming,
            media,
            ring_timeout=self.config.calls.ring_timeout,
            on_event=self._on_event,
            dialogs=self.dialogs,
        )
        self.active.add(call)
        self.metrics.calls_active.set(len(self.active))
        call.tenant, call.users = tenant.name, {Side.A: user, Side.B: callee}
        self._per_tenant[tenant.name] += 1
        self._per_user.update((tenant.name, u) for u in set(call.users.values()))
        if self.recorder is not None:
            self.recorder.begin(call, tenant=tenant.name, caller=user, callee=callee)
        call.start(targets, f"sip:{callee}@{tenant.domain}", user)
        return None

    def _over_limit(self, request: Request, tenant: str, user: str, to_tag: str) -> Response | None:
        """403 when the caller is in too many calls, 486 when its tenant is."""
        limits = self.config.calls
        if limits.max_per_user and self._per_user[(tenant, user)] >= limits.max_per_user:
            scope, limit, status = "user", limits.max_per_user, 403
        elif limits.max_per_tenant and self._per_tenant[tenant] >= limits.max_per_tenant:
            scope, limit, status = "tenant", limits.max_per_tenant, 486
        else:
            return None
        log.warning("call limit reached", call_id=request.call_id, tenant=tenant, user=user,
                    scope=scope, limit=limit)  # fmt: skip
        return request.response(status, f"Call limit reached for {scope}", to_tag)

    @staticmethod
    def relay_media(relay: Relay) -> MediaFactory:
        def allocate(call_id: str) -> MediaSession:
            return RelayMedia(relay.allocate(call_id))

        return allocate

    def on_media_timeout(self, event: MediaTimeout) -> None:
        log.info("media timeout", call_id=event.call_id, side=str(event.side),
                 silent_for=round(event.silent_for, 1))  # fmt: skip
        for call in list(self.active):
            if call.id == event.call_id:
                call.media_timeout()

    # -- transfer (switch.b2bua.transfer) -------------------------------------

    def on_refer(self, incoming: ServerRequest) -> None:
        request = incoming.request
        dialog_id = uas_id(request)
        call = self.dialogs.get(dialog_id) if dialog_id is not None else None
        side = call.side_of(dialog_id) if call is not None and dialog_id is not None else None
        if call is None or side is None or call.state is not CallState.CONNECTED:
            incoming.respond(request.response(481, None, incoming.to_tag))  # §12.2.2
            return
        dialog, _ = call.leg_of(side)
        assert dialog is not None
        status = dialog.receive_request(request)
        if status is not None:
            incoming.respond(request.response(status, None, incoming.to_tag))
            return
        try:
            self._transfer(call, side, incoming)
        except TransferError as exc:
            log.info("transfer refused", call_id=call.id, status=exc.status, reason=exc.reason)
            incoming.respond(request.response(exc.status, exc.reason, incoming.to_tag))

    def _transfer(self, call: Call, side: Side, incoming: ServerRequest) -> None:
        request = incoming.request
        if call.transfer is not None or call.unacked:
            raise TransferError(491, "Request Pending")  # one transfer at a time
        if not isinstance(call.media, RelayMedia):
            raise TransferError(501, "Transfer needs the media relay")
        refer_to = parse_refer_to(request)
        tenant = next((t for t in self.config.tenants if t.name == call.tenant), None)
        if tenant is None:
            raise TransferError(403, "Tenant gone")
        subscribed = (request.headers.get("Refer-Sub") or "true").strip().lower() != "false"
        transferor = call.users.get(side, "")
        expires = self.config.calls.ring_timeout + 32
        replaces = refer_to.replaces
        if replaces is not None:
            other = self.dialogs.get(replaces.dialog_id)
            other_side = other.side_of(replaces.dialog_id) if other is not None else None
            if other is None or other_side is None or other.state is not CallState.CONNECTED:
                raise TransferError(481, "Replaces: no such call")  # RFC 3891 §3
            if other is call or other.transfer is not None or other.unacked:
                raise TransferError(403, "Replaces: not another call of the transferor")
            if other.users.get(other_side) != transferor or other.tenant != call.tenant:
                raise TransferError(403, "Replaces: not a call of the transferor")
            target = other.users.get(Side.B if other_side is Side.A else Side.A, "")
            record = TransferRecord(Kind.ATTENDED, side, transferor, target)
            transfer = Transfer(call, side, incoming, record, subscribed=subscribed,
                                expires=expires)  # fmt: skip
            transfer.attended(other, other_side)
            return
        target = self._transfer_target(call, tenant, refer_to.uri)
        bindings = self.location.bindings(tenant.name, target, self.clock())
        targets = [
            Target(b.contact, Peer(b.transport, b.source_host, b.source_port)) for b in bindings
        ]
        record = TransferRecord(Kind.BLIND, side, transferor, target)
        transfer = Transfer(call, side, incoming, record, subscribed=subscribed, expires=expires)
        referred_by = request.headers.get("Referred-By")
        transfer.blind(targets, f"sip:{target}@{tenant.domain}", referred_by)

    def _transfer_target(self, call: Call, tenant: Tenant, uri: SipUri) -> str:
        """The extension a blind transfer may go to: what the transferor could call itself."""
        target = uri.user_unescaped or ""
        if uri.host != tenant.domain and self.config.tenant_by_domain(uri.host) is not tenant:
            raise TransferError(403, "Refer-To: not a number of this company")
        if tenant.user(target) is None:
            raise TransferError(403, f"Refer-To: no extension {target[:20]}")
        limits = self.config.calls
        if limits.max_per_user and self._per_user[(tenant.name, target)] >= limits.max_per_user:
            raise TransferError(403, "Call limit reached for user")
        return target

    def _replace(self, incoming: ServerRequest, caller: _Caller) -> Response | None:
        """An INVITE with Replaces (RFC 3891): the caller's phone takes over a leg of ours."""
        request, to_tag = incoming.request, incoming.to_tag
        try:
            replaces = parse_replaces(request.headers.get("Replaces") or "")
        except ParseError as exc:
            return request.response(400, str(exc)[:120], to_tag)
        call = self.dialogs.get(replaces.dialog_id)
        side = call.side_of(replaces.dialog_id) if call is not None else None
        if call is None or side is None or call.tenant != caller.tenant.name:
            return request.response(481, "Replaces: no such dialog", to_tag)  # §3 step 4
        if replaces.early_only:
            return request.response(486, None, to_tag)  # §3: the dialog is confirmed
        if call.state is not CallState.CONNECTED or call.transfer is not None or call.unacked:
            return request.response(491, "Request Pending", to_tag)
        try:
            replace(call, side, incoming, caller.user)
        except TransferError as exc:
            return request.response(exc.status, exc.reason, to_tag)
        return None

    def on_in_dialog(self, incoming: ServerRequest) -> None:
        request = incoming.request
        dialog_id = uas_id(request)
        call = self.dialogs.get(dialog_id) if dialog_id is not None else None
        if call is None or dialog_id is None:
            incoming.respond(request.response(481, None, incoming.to_tag))  # §12.2.2
            return
        call.on_request(incoming, dialog_id)

    def on_bye(self, incoming: ServerRequest) -> None:
        request = incoming.request
        dialog_id = uas_id(request)
        call = self.dialogs.get(dialog_id) if dialog_id is not None else None
        if call is None or dialog_id is None:
            incoming.respond(request.response(481, None, incoming.to_tag))
            return
        call.on_bye(incoming, dialog_id)

    def on_ack(self, request: Request, peer: Peer) -> None:
        dialog_id = uas_id(request)
        call = self.dialogs.get(dialog_id) if dialog_id is not None else None
        if call is not None and dialog_id is not None:
            call.on_ack(request, dialog_id)

    def on_stray_2xx(self, response: Response, peer: Peer) -> None:
        dialog_id = uac_id(response)
        call = self.dialogs.get(dialog_id) if dialog_id is not None else None
        if call is not None and dialog_id is not None:
            call.on_2xx_again(response, dialog_id)

    def _on_event(self, call: Call, event: CCEvent) -> None:
        fields = {name: getattr(event, name) for name in event.__slots__}
        fields = {k: v.value if isinstance(v, enum.Enum) else v for k, v in fields.items()}
        log.info(type(event).__name__, call_id=call.id, state=call.state.value, **fields)
        if self.recorder is not None:
            self.recorder.on_event(call, event)
        if isinstance(event, CCEventTransfer):
            done = event.status == 200
            self.metrics.transfers_total.labels(event.kind, "done" if done else "failed").inc()
        if isinstance(event, CCEventTransfer) and event.status == 200:
            # The new party is in the call, the replaced one out: the limits count that.
            self._per_user.subtract([(call.tenant, event.replaced)])
            self._per_user.update([(call.tenant, event.target)])
            self._per_user = +self._per_user
        if isinstance(event, CCEventFail | CCEventDisconnect) and call in self.active:
            self.active.discard(call)
            self.metrics.calls_active.set(len(self.active))
            users = set(call.users.values())
            self._per_tenant.subtract([call.tenant] if users else [])
            self._per_user.subtract((call.tenant, user) for user in users)
            self._per_tenant, self._per_user = +self._per_tenant, +self._per_user  # drop zeros


@dataclass(frozen=True, slots=True)
class _Caller:
    tenant: Tenant
    user: str
    now: float
