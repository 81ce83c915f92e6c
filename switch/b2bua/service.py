"""The B2BUA's entry points: INVITE, BYE, ACK and stray 2xx from the endpoint.

An INVITE is checked like a proxy would (§16.3: Max-Forwards, loops), then
admitted by where it comes from:

- from a gateway (its source address is a configured gateway's; headers
  prove nothing): not challenged; the number called must be a DID, which
  rings its extension (404 otherwise);
- from anyone else: authenticated with a 407 challenge (§22.3; the digest
  logic is the registrar's) in the tenant of the caller's domain, or of the
  DID called when that domain is not ours, so an outsider calling a company
  number is challenged like any phone and cannot reach a gateway. What the
  phone dialled is resolved by ``routing.dialled``: an extension of its
  tenant, or an outside number sent to the tenant's gateways in order
  (failover on 408/5xx) with the tenant's caller ID in From, never the
  extension.

Each accepted INVITE becomes a ``Call``; in-dialog requests find their call
by dialog id (§12.2.2). In-dialog re-INVITE, INFO and UPDATE go to their
call, which passes them to the other leg; in-dialog OPTIONS is answered by
the endpoint (200).

Calls at once are limited per user (placed or taken, ``calls.max_per_user``:
a caller gets 403, a called extension 486), per tenant
(``calls.max_per_tenant``: 486) and per gateway (``max_calls``: 503 and the
next gateway), a first guard against toll fraud through a stolen password.
Emergency calls (112, 911, ...) are never refused for a limit: the limits
are there to cap the damage of fraud, and a fraudster gains nothing by
calling emergency services, while a refused emergency call may cost a life.
A gateway call counts against every gateway it may still fail over to until
one answers, then against that one only. A transfer keeps the call one call
of its tenant; its target must be under its own user limit.

A number in a tenant's ``routes`` (dialled by a phone, or a DID pointing at
it) is not forked: the switch handles the call itself (``HandledCall``,
``switch.b2bua.control``), running the route's built-in handler
(``switch.b2bua.handlers``) as a task. It counts against the caller's and
the tenant's limits (not a user limit of its own: many callers may reach one
number at once), and each leg it dials against the limits of whom it
reaches. Its in-dialog requests find it in an index of its own
(``handled``). A handled call needs the media relay.

REFER in a dialog of ours is a transfer (``switch.b2bua.transfer``): the
target is checked here (an extension of the call's tenant, the transferor's
other call for an attended transfer) before the call hands it on. An INVITE
with a Replaces header is authenticated like any INVITE, then takes the
place of the leg it names instead of being routed.

Not done here: calls to other tenants, registering to trunks, dialplans, and
transfer of handled calls (REFER gets 501).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from media import MediaTimeout, PortsExhausted, RelayLike
from media.api import EngineLike
from switch.b2bua import routing
from switch.b2bua.call import (
    Call,
    CallState,
    CCEvent,
    CCEventConnect,
    CCEventDisconnect,
    CCEventFail,
    CCEventTransfer,
    Side,
)
from switch.b2bua.control import DialFailure, Dialling, HandledCall
from switch.b2bua.forks import Target
from switch.b2bua.handlers import handler_for
from switch.b2bua.media import MediaFactory, MediaSession, RelayMedia, pass_through
from switch.b2bua.q850 import Cause, cause_of
from switch.b2bua.routing import ToHandler, ToOutside, Unroutable
from switch.b2bua.supervise import Bridges
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
from switch.config import Config, Gateway, Tenant
from switch.endpoint import ServerRequest, SipEndpoint
from switch.location import LocationService
from switch.metrics import Metrics
from switch.registrar import Registrar
from switch.sip.dialog import DialogId, uac_id, uas_id
from switch.sip.errors import ParseError
from switch.sip.headers import parse_name_addr
from switch.sip.message import Request, Response
from switch.sip.uri import SipUri
from switch.transport import Peer

log = structlog.get_logger()

_K = TypeVar("_K", bound=Hashable)


@dataclass(slots=True)
class Usage:
    """What one call counts against in the limits."""

    tenant: str
    users: tuple[str, ...]  # the tenant's extensions in the call
    # the gateways it may go through, each with its address (one, once answered)
    gateways: dict[str, Peer] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    """A call about to start: who it is between and what it is written down as."""

    tenant: Tenant
    targets: list[Target]
    callee_aor: str
    usage: Usage
    caller: str  # for the call record: an extension, or the calling number
    callee: str  # an extension, or the number called outside
    direction: str  # internal / inbound / outbound
    did: str | None = None
    failover: tuple[Target, ...] = ()


@dataclass(frozen=True, slots=True)
class Handling:
    """A call for a number the switch handles itself (a route of the tenant)."""

    route: ToHandler
    usage: Usage
    caller: str  # for the call record: an extension, or the calling number
    caller_user: str | None  # the tenant's extension calling, if one is
    direction: str


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
        self.handled: dict[DialogId, HandledCall] = {}  # dialogs of calls the switch handles
        self.relay: RelayLike | None = None  # handled calls terminate their media through it
        self.engine: EngineLike | None = None  # ... in the media engine's endpoints
        self.bridges = Bridges()  # handled calls' bridges in the engine, for supervisors
        self.active: set[Call | HandledCall] = set()
        self._usage: dict[Call | HandledCall, Usage] = {}
        self._per_user: Counter[tuple[str, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()
        self._per_gateway: Counter[str] = Counter()
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

    def _admit(self, incoming: ServerRequest) -> Response | None:
        """Start the call, or the response that refuses it."""
        request, peer, to_tag = incoming.request, incoming.peer, incoming.to_tag
        if request.max_forwards == 0:
            return request.response(483, None, to_tag)  # §16.3 step 3
        ours = self.endpoint.sent_by_for(peer)
        if any(via.sent_by == ours for via in request.via):
            return request.response(482, None, to_tag)  # §16.3 step 4: it came back to us
        gateway = self.config.gateway_at(peer.transport, peer.host, peer.port)
        placed: Placement | Handling | Response | None
        if gateway is not None:
            placed = self._from_gateway(request, peer, gateway, to_tag)
        else:
            placed = self._from_phone(incoming)
        if placed is None or isinstance(placed, Response):
            return placed
        # §8.1.1.8, §12.1.1: the caller's dialog needs its Contact (the remote target). Checked
        # before the call starts, not when it is answered; after routing, so a request for a
        # domain or number not served here gets that answer first.
        try:
            contacts = request.contacts
        except ParseError as exc:
            return request.response(400, str(exc)[:120], to_tag)
        if len(contacts) != 1 or contacts[0].address is None:
            return request.response(400, "INVITE needs one Contact", to_tag)
        if isinstance(placed, Handling):
            return self._start_handled(incoming, placed)
        return self._start(incoming, placed)

    def _from_gateway(
        self, request: Request, peer: Peer, gateway: Gateway, to_tag: str
    ) -> Placement | Handling | Response:
        """A call from a trunk to a company number (DID)."""
        target = request.request_uri
        assert isinstance(target, SipUri)  # the endpoint answered 416 to other schemes
        called = target.user_unescaped or _uri_user(request.to.uri) or ""
        route = routing.inbound(self.config, gateway, called)
        if route is None:
            log.info("call to an unknown number", call_id=request.call_id, gateway=gateway.name,
                     number=called)  # fmt: skip
            return request.response(404, "No such number", to_tag)
        if gateway.max_calls and self._per_gateway[gateway.name] >= gateway.max_calls:
            return _gateway_full(request, gateway, to_tag)
        if isinstance(route, ToHandler):
            caller = _calling_number(request)
            refused = self._over_limit(request, route.tenant.name, None, to_tag)
            usage = Usage(route.tenant.name, (), {gateway.name: peer})
            return refused or Handling(route, usage, caller, None, "inbound")
        tenant, extension = route.tenant, route.extension
        refused = self._over_limit(request, tenant.name, extension, to_tag, user_status=486)
        if refused is not None:
            return refused
        targets = self._contacts(tenant, extension)
        if not targets:
            return request.response(480, "Not registered", to_tag)
        usage = Usage(tenant.name, (extension,), {gateway.name: peer})
        return Placement(
            tenant, targets, f"sip:{extension}@{tenant.domain}", usage,
            caller=_calling_number(request), callee=extension, direction="inbound", did=route.did,
        )  # fmt: skip

    def _from_phone(self, incoming: ServerRequest) -> Placement | Handling | Response | None:
        """A call from a phone, once it proves who it is (None: it replaced a leg, or the
        switch handles it)."""
        request, peer, to_tag = incoming.request, incoming.peer, incoming.to_tag
        caller_uri, target = request.from_.uri, request.request_uri
        assert isinstance(target, SipUri)  # the endpoint answered 416 to other schemes
        dialled = target.user_unescaped or ""
        domain = caller_uri.host if isinstance(caller_uri, SipUri) else target.host
        tenant = self.config.tenant_by_domain(domain)
        if tenant is None:
            # A stranger calling a company number: challenged in that company's realm.
            number = routing.inbound_number(dialled)
            tenant = self.config.tenant_by_did(number) if number is not None else None
        if tenant is None:
            return request.response(404, "Domain not served here", to_tag)
        outcome = self.registrar.authenticate(
            request, tenant, peer, self.clock(), to_tag, proxy=True
        )
        if outcome.response is not None:
            return outcome.response
        user = outcome.user
        assert user is not None
        if not isinstance(caller_uri, SipUri) or caller_uri.user_unescaped != user:
            # §26.3.2.2: an authenticated user may not call as someone else
            return request.response(403, "From does not match the credentials", to_tag)
        if "Replaces" in request.headers:
            return self._replace(incoming, tenant, user)
        route = routing.dialled(tenant, dialled)
        if isinstance(route, Unroutable):
            return request.response(route.status, route.reason, to_tag)
        if isinstance(route, ToOutside):
            return self._outbound(request, tenant, user, route, to_tag)
        if isinstance(route, ToHandler):
            refused = self._over_limit(request, tenant.name, user, to_tag)
            return refused or Handling(route, Usage(tenant.name, (user,)), user, user, "internal")
        callee = route.extension
        refused = self._over_limit(request, tenant.name, user, to_tag)
        if refused is not None:
            return refused
        targets = self._contacts(tenant, callee)
        if not targets:
            return request.response(480, "Not registered", to_tag)
        users = (user,) if callee == user else (user, callee)
        return Placement(
            tenant, targets, f"sip:{callee}@{tenant.domain}", Usage(tenant.name, users),
            caller=user, callee=callee, direction="internal", did=route.did,
        )  # fmt: skip

    def _outbound(
        self, request: Request, tenant: Tenant, user: str, route: ToOutside, to_tag: str
    ) -> Placement | Response:
        """A phone's call to an outside number, through the tenant's gateways in order."""
        if not tenant.gateways:
            return request.response(403, "No route to outside numbers", to_tag)
        if not route.emergency:
            refused = self._over_limit(request, tenant.name, user, to_tag)
            if refused is not None:
                return refused
        free = self._free_gateways(tenant, route.emergency)
        if not free:
            return _gateway_full(request, self.config.gateway(tenant.gateways[-1]), to_tag)
        caller_id = tenant.caller_id_of(user)
        targets = [routing.gateway_target(gw, route, caller_id, tenant.domain) for gw in free]
        peers = {gw.name: target.peer for gw, target in zip(free, targets, strict=True)}
        usage = Usage(tenant.name, (user,), peers)
        return Placement(
            tenant, targets[:1], targets[0].uri, usage, caller=user, callee=route.number,
            direction="outbound", did=caller_id, failover=tuple(targets[1:]),
        )  # fmt: skip

    def _free_gateways(self, tenant: Tenant, emergency: bool) -> list[Gateway]:
        """The tenant's gateways in order, less those at their call limit (unless 112...)."""
        gateways = [self.config.gateway(name) for name in tenant.gateways]
        return [
            gw for gw in gateways
            if emergency or not gw.max_calls or self._per_gateway[gw.name] < gw.max_calls
        ]  # fmt: skip

    def _contacts(self, tenant: Tenant, extension: str) -> list[Target]:
        bindings = self.location.bindings(tenant.name, extension, self.clock())
        return [
            Target(b.contact, Peer(b.transport, b.source_host, b.source_port)) for b in bindings
        ]

    def _start(self, incoming: ServerRequest, placed: Placement) -> Response | None:
        request = incoming.request
        try:
            media = self.media(request.call_id)
        except (PortsExhausted, OSError) as exc:
            log.warning("no media ports", call_id=request.call_id, error=str(exc))
            response = request.response(503, "No media ports", incoming.to_tag)
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
        self._count_in(call, placed.usage)
        # Who of the tenant is on each side (transfers ask; an outside party is nobody here).
        call.tenant = placed.tenant.name
        if placed.direction != "inbound":  # from a gateway the caller is a calling number
            call.users[Side.A] = placed.caller
        if placed.direction != "outbound":  # to a gateway the callee is an outside number
            call.users[Side.B] = placed.callee
        if self.recorder is not None:
            self.recorder.begin(
                call, tenant=placed.tenant.name, caller=placed.caller, callee=placed.callee,
                did=placed.did, direction=placed.direction,
            )  # fmt: skip
        call.start(placed.targets, placed.callee_aor, placed.caller, failover=placed.failover)
        return None

    def _count_in(self, call: Call | HandledCall, usage: Usage) -> None:
        self.active.add(call)
        self.metrics.calls_active.set(len(self.active))
        self._usage[call] = usage
        self._per_tenant[usage.tenant] += 1
        self._per_user.update((usage.tenant, user) for user in usage.users)
        self._per_gateway.update(usage.gateways.keys())

    # -- calls the switch handles itself (switch.b2bua.control) -------------------------

    def _start_handled(self, incoming: ServerRequest, handling: Handling) -> Response | None:
        request, route = incoming.request, handling.route
        if self.relay is None or self.engine is None:
            # config refuses routes without media.relay; this is a B2bua built without one
            return request.response(503, "Handled numbers need the media relay", incoming.to_tag)
        call = HandledCall(
            self.endpoint,
            incoming,
            relay=self.relay,
            engine=self.engine,
            switchboard=self,
            dialogs=self.handled,
            ring_timeout=self.config.calls.ring_timeout,
        )
        call.tenant, call.caller_user = route.tenant.name, handling.caller_user
        call.supervised = route.tenant.supervised
        self._count_in(call, handling.usage)
        if self.recorder is not None:
            self.recorder.begin(
                call, tenant=route.tenant.name, caller=handling.caller, callee=route.number,
                did=route.did, direction=handling.direction,
            )  # fmt: skip
        log.info("call handled by the switch", call_id=call.id, number=route.number,
                 handler=route.route.handler)  # fmt: skip
        call.start(handler_for(route.route), route.route.handler)
        return None

    def route(self, call: HandledCall, target: str) -> Dialling | DialFailure:
        """Where a handled call's ``dial(target)`` goes: as if its tenant's phone dialled it."""
        tenant = next((t for t in self.config.tenants if t.name == call.tenant), None)
        if tenant is None:
            return DialFailure(target, 404, "Tenant gone", Cause.UNALLOCATED_NUMBER)
        dest = routing.dialled(tenant, target)
        if isinstance(dest, Unroutable):
            return DialFailure(target, dest.status, dest.reason, cause_of(dest.status))
        if isinstance(dest, ToHandler):
            return DialFailure(target, 403, "A handled number cannot be dialled",
                               Cause.CALL_REJECTED)  # fmt: skip
        if isinstance(dest, ToOutside):
            return self._route_out(call, tenant, target, dest)
        if self._user_full(tenant.name, dest.extension):
            return DialFailure(target, 486, "Call limit reached for user", Cause.USER_BUSY)
        return Dialling(
            self._contacts(tenant, dest.extension),
            f"sip:{dest.extension}@{tenant.domain}",
            user=dest.extension,
        )

    def _route_out(
        self, call: HandledCall, tenant: Tenant, target: str, dest: ToOutside
    ) -> Dialling | DialFailure:
        if not tenant.gateways:
            return DialFailure(target, 403, "No route to outside numbers", Cause.CALL_REJECTED)
        free = self._free_gateways(tenant, dest.emergency)
        if not free:
            return DialFailure(target, 503, "Gateway call limit reached", Cause.SWITCH_CONGESTION)
        user = call.caller_user
        caller_id = tenant.caller_id_of(user) if user else next(iter(tenant.numbers), None)
        targets = [routing.gateway_target(gw, dest, caller_id, tenant.domain) for gw in free]
        peers = {gw.name: t.peer for gw, t in zip(free, targets, strict=True)}
        return Dialling(targets[:1], targets[0].uri, tuple(targets[1:]), gateways=peers)

    def connected(self, call: HandledCall, dialling: Dialling, peer: Peer) -> None:
        """A leg a handled call dialled answered: whom it reached counts in the limits."""
        usage = self._usage.get(call)
        if usage is None:
            return
        if dialling.user is not None and dialling.user not in usage.users:
            usage.users = (*usage.users, dialling.user)
            self._per_user[(usage.tenant, dialling.user)] += 1
        for name, gateway_peer in dialling.gateways.items():
            if gateway_peer == peer and name not in usage.gateways:
                usage.gateways[name] = peer
                self._per_gateway[name] += 1

    def event(self, call: HandledCall, event: CCEvent) -> None:
        self._on_event(call, event)

    async def stop(self) -> None:
        """Hang up the calls the switch handles (their handlers are cancelled)."""
        calls = [call for call in self.active if isinstance(call, HandledCall)]
        await asyncio.gather(*(call.stop() for call in calls), return_exceptions=True)

    def _over_limit(
        self,
        request: Request,
        tenant: str,
        user: str | None,
        to_tag: str,
        user_status: int = 403,
    ) -> Response | None:
        """``user_status`` when the user is in too many calls, 486 when its tenant is."""
        limits = self.config.calls
        if user is not None and self._user_full(tenant, user):
            scope, limit, status = "user", limits.max_per_user, user_status
        elif limits.max_per_tenant and self._per_tenant[tenant] >= limits.max_per_tenant:
            scope, limit, status = "tenant", limits.max_per_tenant, 486
        else:
            return None
        log.warning("call limit reached", call_id=request.call_id, tenant=tenant, user=user,
                    scope=scope, limit=limit)  # fmt: skip
        return request.response(status, f"Call limit reached for {scope}", to_tag)

    def _user_full(self, tenant: str, user: str) -> bool:
        limit = self.config.calls.max_per_user
        return bool(limit) and self._per_user[(tenant, user)] >= limit

    @staticmethod
    def relay_media(relay: RelayLike) -> MediaFactory:
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
        if dialog_id is not None and dialog_id in self.handled:
            response = request.response(501, "Transfer of handled calls", incoming.to_tag)
            incoming.respond(response)
            return
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

    def _replace(self, incoming: ServerRequest, tenant: Tenant, user: str) -> Response | None:
        """An INVITE with Replaces (RFC 3891): the caller's phone takes over a leg of ours."""
        request, to_tag = incoming.request, incoming.to_tag
        try:
            replaces = parse_replaces(request.headers.get("Replaces") or "")
        except ParseError as exc:
            return request.response(400, str(exc)[:120], to_tag)
        call = self.dialogs.get(replaces.dialog_id)
        side = call.side_of(replaces.dialog_id) if call is not None else None
        if call is None or side is None or call.tenant != tenant.name:
            return request.response(481, "Replaces: no such dialog", to_tag)  # §3 step 4
        if replaces.early_only:
            return request.response(486, None, to_tag)  # §3: the dialog is confirmed
        if call.state is not CallState.CONNECTED or call.transfer is not None or call.unacked:
            return request.response(491, "Request Pending", to_tag)
        try:
            replace(call, side, incoming, user)
        except TransferError as exc:
            return request.response(exc.status, exc.reason, to_tag)
        return None

    def _owner(self, dialog_id: DialogId | None) -> Call | HandledCall | None:
        """The call a dialog of ours belongs to."""
        if dialog_id is None:
            return None
        return self.handled.get(dialog_id) or self.dialogs.get(dialog_id)

    def on_in_dialog(self, incoming: ServerRequest) -> None:
        request = incoming.request
        dialog_id = uas_id(request)
        call = self._owner(dialog_id)
        if call is None or dialog_id is None:
            incoming.respond(request.response(481, None, incoming.to_tag))  # §12.2.2
            return
        call.on_request(incoming, dialog_id)

    def on_bye(self, incoming: ServerRequest) -> None:
        request = incoming.request
        dialog_id = uas_id(request)
        call = self._owner(dialog_id)
        if call is None or dialog_id is None:
            incoming.respond(request.response(481, None, incoming.to_tag))
            return
        call.on_bye(incoming, dialog_id)

    def on_ack(self, request: Request, peer: Peer) -> None:
        dialog_id = uas_id(request)
        call = self._owner(dialog_id)
        if call is not None and dialog_id is not None:
            call.on_ack(request, dialog_id)

    def on_stray_2xx(self, response: Response, peer: Peer) -> None:
        dialog_id = uac_id(response)
        call = self._owner(dialog_id)
        if call is not None and dialog_id is not None:
            call.on_2xx_again(response, dialog_id)

    def _on_event(self, call: Call | HandledCall, event: CCEvent) -> None:
        fields = {name: getattr(event, name) for name in event.__slots__}
        fields = {k: v.value if isinstance(v, enum.Enum) else v for k, v in fields.items()}
        log.info(type(event).__name__, call_id=call.id, state=call.state.value, **fields)
        if self.recorder is not None:
            self.recorder.on_event(call, event)
        usage = self._usage.get(call)
        if isinstance(event, CCEventTransfer):
            done = event.status == 200
            self.metrics.transfers_total.labels(event.kind, "done" if done else "failed").inc()
        if isinstance(event, CCEventTransfer) and event.status == 200 and usage is not None:
            # The new party is in the call, the replaced one out: the limits count that.
            users = [u for u in usage.users if u != event.replaced]
            usage.users = (*users, event.target) if event.target not in users else tuple(users)
            _uncount(self._per_user, [(usage.tenant, event.replaced)])
            self._per_user.update([(usage.tenant, event.target)])
        through_gateways = usage is not None and len(usage.gateways) > 1
        if isinstance(event, CCEventConnect) and isinstance(call, Call) and through_gateways:
            assert usage is not None
            # Answered: the call now holds a place on the gateway it went through only.
            kept = {name: peer for name, peer in usage.gateways.items() if peer == call.b_peer}
            _uncount(self._per_gateway, [name for name in usage.gateways if name not in kept])
            usage.gateways = kept
        if isinstance(event, CCEventFail | CCEventDisconnect):
            self.active.discard(call)
            self.metrics.calls_active.set(len(self.active))
            usage = self._usage.pop(call, None)
            if usage is not None:
                _uncount(self._per_tenant, [usage.tenant])
                _uncount(self._per_user, [(usage.tenant, user) for user in usage.users])
                _uncount(self._per_gateway, list(usage.gateways))


def _uncount(counter: Counter[_K], keys: list[_K]) -> None:
    """Take one off each of ``keys``, dropping those that reach zero: the counters hold only
    what is in calls now (a copy of the whole counter per ended call cost O(calls))."""
    for key in keys:
        left = counter[key] - 1
        if left > 0:
            counter[key] = left
        else:
            counter.pop(key, None)


def _gateway_full(request: Request, gateway: Gateway, to_tag: str) -> Response:
    log.warning("gateway call limit reached", call_id=request.call_id, gateway=gateway.name,
                limit=gateway.max_calls)  # fmt: skip
    response = request.response(503, "Gateway call limit reached", to_tag)
    response.headers.add("Reason", f'SIP;cause=503;text="Call limit of gateway {gateway.name}"')
    return response


def _uri_user(uri: object) -> str | None:
    return uri.user_unescaped if isinstance(uri, SipUri) else None


def _calling_number(request: Request) -> str:
    """Who calls from a trunk: P-Asserted-Identity (RFC 3325) if the carrier sent one, else From."""
    asserted = request.headers.get("P-Asserted-Identity")
    if asserted is not None:
        try:
            user = _uri_user(parse_name_addr(asserted.split(",")[0], "P-Asserted-Identity").uri)
        except ParseError:
            user = None
        if user:
            return user
    return _uri_user(request.from_.uri) or "anonymous"
