"""The registrar (RFC 3261 §10.3): REGISTER with digest auth into the location service.

Tenants are found by the domain of the address-of-record (the To URI);
users by extension. Authentication follows §22 with RFC 8760 algorithms;
what counts as a failed authentication — and so toward blocking the
source — is decided here: a first challenge, a stale or replayed nonce are
not failures; a wrong password, an unknown user or a username that does
not own the AOR are (RFC 3261 §26.3.2.2 treats the last as impersonation).

Bindings remember the address the REGISTER came from, so a phone behind
NAT is reached where it is, not at the private address in its Contact.
The 200 OK is sent only once the change is on disk (the location service
commits in groups).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

import structlog

from switch.ban import BanList
from switch.config import Config, Tenant
from switch.location import Binding, LocationService
from switch.metrics import Metrics
from switch.sip.digest import AuthResult, NonceManager, parse_credentials
from switch.sip.errors import ParseError
from switch.sip.message import Request, Response
from switch.sip.uri import SipUri
from switch.transport import Peer

log = structlog.get_logger()

STALE_RESULTS = (AuthResult.STALE, AuthResult.BAD_NONCE, AuthResult.REPLAY)


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """Either the authenticated extension, or the response to send instead."""

    user: str | None
    response: Response | None


class Registrar:
    def __init__(
        self,
        config: Config,
        location: LocationService,
        nonces: NonceManager,
        bans: BanList,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # wall clock: binding expiry times are persisted
        self.config = config
        self.location = location
        self.nonces = nonces
        self.bans = bans
        self.metrics = metrics

    async def handle(self, request: Request, peer: Peer, to_tag: str) -> Response:
        now = self.clock()
        aor = request.to.uri
        if not isinstance(aor, SipUri) or not aor.user:
            return request.response(400, "To is not a SIP address-of-record", to_tag)
        tenant = self.config.tenant_by_domain(aor.host)
        if tenant is None:
            return request.response(404, "Domain not served here", to_tag)
        outcome = self.authenticate(request, tenant, peer, now, to_tag)
        if outcome.response is not None:
            return outcome.response
        user = aor.user_unescaped
        if outcome.user != user:
            self._failure(peer, now, "username does not own the address-of-record", tenant)
            return request.response(403, "Forbidden", to_tag)
        assert user is not None
        return await self._update(request, tenant, user, peer, now, to_tag)

    # -- authentication ----------------------------------------------------

    def authenticate(
        self,
        request: Request,
        tenant: Tenant,
        peer: Peer,
        now: float,
        to_tag: str,
        *,
        proxy: bool = False,
    ) -> AuthOutcome:
        """Check the credentials for ``tenant``'s realm (§22.4).

        A registrar asks with 401 and WWW-Authenticate; the B2BUA, which a
        phone sees as its proxy, with 407 and Proxy-Authenticate (§22.3).
        """
        realm = tenant.domain
        creds = None
        for value in request.headers.values("Proxy-Authorization" if proxy else "Authorization"):
            try:
                candidate = parse_credentials(value)
            except ParseError as exc:
                return AuthOutcome(
                    None, request.response(400, f"Bad Authorization: {exc}"[:120], to_tag)
                )
            if candidate.realm == realm:
                creds = candidate
                break
        if creds is None:
            return AuthOutcome(
                None, self.challenge(request, realm, now, to_tag, stale=False, proxy=proxy)
            )
        user = tenant.user(creds.username)
        if user is None:
            # Same answer as a wrong password: do not tell which extensions exist.
            self._failure(peer, now, "unknown user", tenant, creds.username)
            return AuthOutcome(None, request.response(403, "Forbidden", to_tag))
        result = self.nonces.verify(
            creds, request.method, now=now, realm=realm, password=user.password
        )
        if result is AuthResult.OK:
            return AuthOutcome(user.extension, None)
        if result in STALE_RESULTS:
            return AuthOutcome(
                None, self.challenge(request, realm, now, to_tag, stale=True, proxy=proxy)
            )
        self._failure(peer, now, result.value, tenant, creds.username)
        return AuthOutcome(None, request.response(403, "Forbidden", to_tag))

    def challenge(
        self,
        request: Request,
        realm: str,
        now: float,
        to_tag: str,
        *,
        stale: bool,
        proxy: bool = False,
    ) -> Response:
        response = request.response(407 if proxy else 401, None, to_tag)
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        algorithms = self.config.security.auth_algorithms
        for challenge in self.nonces.challenge(realm, now, stale=stale, algorithms=algorithms):
            response.headers.add(header, challenge.header_value())
        return response

    def _failure(
        self, peer: Peer, now: float, why: str, tenant: Tenant, username: str | None = None
    ) -> None:
        self.metrics.auth_failures.inc()
        # Log the observed source, never header content as the attacker's identity.
        log.warning(
            "auth failed", source=peer.host, port=peer.port, tenant=tenant.name, reason=why,
            username=username,
        )  # fmt: skip
        if self.bans.record_failure(peer.host, now):
            self.metrics.banned_sources.set(self.bans.banned_count)
            log.warning("source blocked", source=peer.host, seconds=self.bans.duration)

    # -- bindings (§10.3 steps 6-8) ------------------------------------------

    async def _update(
        self, request: Request, tenant: Tenant, user: str, peer: Peer, now: float, to_tag: str
    ) -> Response:
        settings = self.config.registrar
        contacts = request.contacts
        header_expires = request.expires
        if any(c.is_star for c in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return request.response(
                    400, "Contact * needs Expires: 0 and no other contact", to_tag
                )
            await self.location.update(tenant.name, user, [], [], remove_all=True)
            log.info("unregistered all", tenant=tenant.name, user=user, source=peer.host)
            return self._ok(request, tenant, user, now, to_tag)

        existing = {b.contact: b for b in self.location.bindings(tenant.name, user, now)}
        upserts: list[Binding] = []
        removals: list[str] = []
        cseq = request.cseq.number
        for contact in contacts:
            assert contact.address is not None
            uri = str(contact.address.uri)
            expires = contact.expires if contact.expires is not None else header_expires
            if expires is None:
                expires = settings.default_expires
            old = existing.get(uri)
            if old is not None and old.call_id == request.call_id and cseq <= old.cseq:
                return request.response(400, "CSeq out of order for this binding", to_tag)
            if expires == 0:
                removals.append(uri)
                continue
            if expires < settings.min_expires:
                response = request.response(423, "Interval Too Brief", to_tag)
                response.headers.add("Min-Expires", str(settings.min_expires))
                return response
            upserts.append(
                Binding(
                    tenant=tenant.name,
                    user=user,
                    contact=uri,
                    expires_at=now + min(expires, settings.max_expires),
                    q=contact.q,
                    call_id=request.call_id,
                    cseq=cseq,
                    transport=peer.transport,
                    source_host=peer.host,
                    source_port=peer.port,
                    user_agent=request.headers.get("User-Agent"),
                    instance=contact.address.param("+sip.instance"),
                    registered_at=now,
                )
            )
        removals.extend(self._evictions(existing, upserts, removals, settings.max_contacts))
        if upserts or removals:
            await self.location.update(tenant.name, user, upserts, removals)
            log.info(
                "registered", tenant=tenant.name, user=user, source=peer.host, port=peer.port,
                contacts=len(upserts), removed=len(removals),
            )  # fmt: skip
        return self._ok(request, tenant, user, now, to_tag)

    @staticmethod
    def _evictions(
        existing: dict[str, Binding], upserts: list[Binding], removals: list[str], limit: int
    ) -> list[str]:
        """Oldest bindings to drop so at most ``limit`` remain.

        A phone behind NAT that re-registers from a new port with a new Call-ID
        leaves its old binding behind; refusing the new one would lock it out.
        """
        new = {b.contact for b in upserts}
        kept = [b for c, b in existing.items() if c not in new and c not in removals]
        excess = len(kept) + len(new) - limit
        if excess <= 0:
            return []
        kept.sort(key=lambda b: b.registered_at)
        return [b.contact for b in kept[:excess]]

    def _ok(self, request: Request, tenant: Tenant, user: str, now: float, to_tag: str) -> Response:
        response = request.response(200, "OK", to_tag)
        for binding in self.location.bindings(tenant.name, user, now):
            response.headers.add(
                "Contact", f"<{binding.contact}>;expires={binding.expires_in(now)}"
            )
        response.headers.add("Date", formatdate(now, usegmt=True))
        return response
