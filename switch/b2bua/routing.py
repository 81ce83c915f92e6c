"""Routing: what a dialled string or a called company number resolves to.

A phone of a tenant dials a string; it is, in this order:

- one of the tenant's extensions: an internal call;
- an emergency short code of the tenant's country (112, 911, ...): out
  through the tenant's gateways as dialled, never refused for a limit;
- a number (national in the tenant's country or international, see
  switch/numbers.py) that is one of the tenant's own DIDs: the extension
  that DID rings, still an internal call;
- any other number: out through the tenant's gateways, in E.164;
- anything else: 484 Address Incomplete (RFC 3261 §21.4.22).

A call from a gateway is for a company number (DID): its Request-URI user,
less the gateway's tech prefix, is E.164 with or without '+', or national
in the gateway's ``country`` when it has one. It rings the extension the
DID names until dialplans arrive. An unknown number is not routed at all:
a carrier's call never reaches an extension by its short number, nor goes
back out through a gateway.

This module only decides; it sends nothing and counts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from switch.b2bua.forks import Target
from switch.config import Config, Gateway, Tenant
from switch.numbers import is_emergency, to_e164
from switch.transport import Peer

# RFC 3261 §25.1: what the user part of a SIP URI may hold unescaped ('#' may not).
_USER_SAFE = "-_.!~*'()&=+$,;?/"


@dataclass(frozen=True, slots=True)
class ToExtension:
    tenant: Tenant
    extension: str
    did: str | None = None  # the company number that was called, if one was


@dataclass(frozen=True, slots=True)
class ToOutside:
    number: str  # E.164, or an emergency short code as dialled
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class Unroutable:
    status: int
    reason: str


Route = ToExtension | ToOutside | Unroutable


def dialled(tenant: Tenant, text: str) -> Route:
    """Where a call from a phone of ``tenant`` to ``text`` goes."""
    if tenant.user(text) is not None:
        return ToExtension(tenant, text)
    if is_emergency(text, tenant.country):
        return ToOutside(text, emergency=True)
    number = to_e164(text, tenant.country)
    if number is None:
        return Unroutable(484, "Address Incomplete")
    extension = tenant.numbers.get(number)
    if extension is not None:
        return ToExtension(tenant, extension, did=number)
    return ToOutside(number)


def inbound(config: Config, gateway: Gateway, text: str) -> ToExtension | None:
    """The extension a call from ``gateway`` to the number ``text`` rings, if it is a DID."""
    if gateway.tech_prefix:
        text = text.removeprefix(gateway.tech_prefix)
    forms = [inbound_number(text)]
    if gateway.country is not None and not text.startswith("+"):
        forms.append(to_e164(text, gateway.country))
    for number in forms:
        tenant = config.tenant_by_did(number) if number is not None else None
        if tenant is not None and number is not None:
            return ToExtension(tenant, tenant.numbers[number], did=number)
    return None


def inbound_number(text: str) -> str | None:
    """``text`` as an E.164 number, written with or without its '+'."""
    return to_e164(text if text.startswith("+") else "+" + text, None)


def gateway_target(
    gateway: Gateway, route: ToOutside, caller_id: str | None, domain: str
) -> Target:
    """Where an outbound INVITE to ``route`` through ``gateway`` goes, and who it says calls.

    The caller ID is in the gateway's number format, at the tenant's domain; without one
    the call is anonymous (RFC 3323 §4.1.1.3): an extension is never shown outside.
    """
    user = (
        gateway.tech_prefix + route.number if route.emergency else gateway.dial_string(route.number)
    )
    address = gateway.address
    host = f"[{address.host}]" if ":" in address.host else address.host
    transport = "" if gateway.transport == "udp" else f";transport={gateway.transport}"
    uri = f"sip:{quote(user, safe=_USER_SAFE)}@{host}:{address.port}{transport}"
    if caller_id is None:
        from_uri = "sip:anonymous@anonymous.invalid"
    else:
        number = caller_id if gateway.format == "+e164" else caller_id.removeprefix("+")
        from_uri = f"sip:{number}@{domain}"
    return Target(uri, Peer(gateway.transport, address.host, address.port), from_uri)
