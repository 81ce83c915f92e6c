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
guard against toll fraud through a stolen password.

Not done here: calls to other tenants or trunks, dialplans.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable

import structlog

from media import MediaTimeout, PortsExhausted, Relay
from switch.b2bua.call import (
    Call,
    CCEvent,
    CCEventDisconnect,
    CCEventFail,
)
from switch.b2bua.forks import Target
from switch.b2bua.media import MediaFactory, MediaSession, RelayMedia, pass_through
from switch.cdr import CallRecorder
from switch.config import Config
from switch.endpoint import ServerRequest, SipEndpoint
from switch.location import LocationService
from switch.metrics import Metrics
from switch.registrar import Registrar
from switch.sip.dialog import DialogId, uac_id, uas_id
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
        self._parties: dict[Call, tuple[str, tuple[str, ...]]] = {}  # tenant, its users
        self._per_user: Counter[tuple[str, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()
        self.recorder: CallRecorder | None = None  # call records (CDR), when there is a store

    def attach(self) -> None:
        """Take INVITE, BYE, 2xx ACKs and stray 2xx from the endpoint."""
        self.endpoint.cores["INVITE"] = self.on_invite
        self.endpoint.cores["BYE"] = self.on_bye
        self.endpoint.cores["INFO"] = self.on_in_dialog
        self.endpoint.cores["UPDATE"] = self.on_in_dialog
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
        callee = target.user_unescaped
        if callee is None or tenant.user(callee) is None:
            return request.response(404, None, to_tag)
        refused = self._over_limit(request, tenant.name, outcome.user, to_tag)
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
        users = (outcome.user,) if callee == outcome.user else (outcome.user, callee)
        self._parties[call] = (tenant.name, users)
        self._per_tenant[tenant.name] += 1
        self._per_user.update((tenant.name, user) for user in users)
        if self.recorder is not None:
            self.recorder.begin(call, tenant=tenant.name, caller=outcome.user, callee=callee)
        call.start(targets, f"sip:{callee}@{tenant.domain}", outcome.user)
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
        if isinstance(event, CCEventFail | CCEventDisconnect):
            self.active.discard(call)
            self.metrics.calls_active.set(len(self.active))
            tenant, users = self._parties.pop(call, ("", ()))
            self._per_tenant.subtract([tenant] if users else [])
            self._per_user.subtract((tenant, user) for user in users)
            self._per_tenant, self._per_user = +self._per_tenant, +self._per_user  # drop zeros
