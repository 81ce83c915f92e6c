"""Routing: what a dialled string or a called number resolves to (switch/b2bua/routing.py)."""

from __future__ import annotations

import pytest

from switch.b2bua.routing import (
    ToExtension,
    ToOutside,
    Unroutable,
    dialled,
    gateway_target,
    inbound,
)
from switch.config import Config, Tenant
from switch.numbers import to_e164
from switch.transport import Peer

CONFIG = Config.model_validate(
    {
        "gateways": [
            {"name": "carrier", "address": "192.0.2.10", "country": "RU", "tech_prefix": "77#"},
            {"name": "us", "address": "[2001:db8::1]:5080", "transport": "tcp", "format": "e164"},
        ],
        "tenants": [
            {
                "name": "acme",
                "domain": "acme.example",
                "country": "RU",
                "gateways": ["carrier"],
                "dids": {"+74951234567": "101"},
                "users": [{"extension": "101", "password": "x"}],
            },
            {
                "name": "initech",
                "domain": "initech.example",
                "country": "US",
                "gateways": ["us"],
                "dids": {"(212) 555-0100": "7"},
                "users": [{"extension": "7", "password": "x"}],
            },
        ],
    }
)
ACME, INITECH = CONFIG.tenants


def tenant(name: str) -> Tenant:
    return ACME if name == "acme" else INITECH


@pytest.mark.parametrize(
    ("who", "text", "route"),
    [
        ("acme", "101", ToExtension(ACME, "101")),
        ("acme", "84951234567", ToExtension(ACME, "101", did="+74951234567")),  # its own DID
        ("acme", "84991234567", ToOutside("+74991234567")),  # national, trunk prefix 8
        ("acme", "4991234567", ToOutside("+74991234567")),  # national without it
        ("acme", "+79161234567", ToOutside("+79161234567")),
        ("acme", "81012125550100", ToOutside("+12125550100")),  # 8-10
        ("acme", "00442079460958", ToOutside("+442079460958")),  # 00, as most of the world
        ("acme", "112", ToOutside("112", emergency=True)),
        ("acme", "5", Unroutable(484, "Address Incomplete")),
        ("acme", "8499", Unroutable(484, "Address Incomplete")),
        ("acme", "*72", Unroutable(484, "Address Incomplete")),
        ("initech", "7", ToExtension(INITECH, "7")),
        ("initech", "2125550100", ToExtension(INITECH, "7", did="+12125550100")),
        ("initech", "2125550199", ToOutside("+12125550199")),
        ("initech", "12125550199", ToOutside("+12125550199")),  # 1 + area code
        ("initech", "011442079460958", ToOutside("+442079460958")),  # 011: US international
        ("initech", "911", ToOutside("911", emergency=True)),
    ],
)
def test_dialled(who: str, text: str, route: object) -> None:
    assert dialled(tenant(who), text) == route


@pytest.mark.parametrize(
    ("gateway", "text", "expected"),
    [
        ("carrier", "+74951234567", ("acme", "101")),
        ("carrier", "74951234567", ("acme", "101")),  # E.164 without '+'
        ("carrier", "84951234567", ("acme", "101")),  # national in the gateway's country
        ("carrier", "77#74951234567", ("acme", "101")),  # the tech prefix comes off
        ("carrier", "+74951234500", None),
        ("carrier", "101", None),  # no extension is reached by its short number from outside
        ("us", "12125550100", ("initech", "7")),
        ("us", "2125550100", None),  # national, and this gateway has no country
    ],
)
def test_inbound(gateway: str, text: str, expected: tuple[str, str] | None) -> None:
    route = inbound(CONFIG, CONFIG.gateway(gateway), text)
    found = None if route is None else (route.tenant.name, route.extension)
    assert found == expected
    if route is not None:
        assert route.did == to_e164(
            text.removeprefix("77#"), "RU" if gateway == "carrier" else "US"
        )


def test_gateway_targets() -> None:
    carrier, us = CONFIG.gateway("carrier"), CONFIG.gateway("us")
    target = gateway_target(carrier, ToOutside("+442079460958"), "+74951234567", "acme.example")
    assert target.uri == "sip:77%23+442079460958@192.0.2.10:5060"  # '#' is escaped (§25.1)
    assert target.peer == Peer("udp", "192.0.2.10", 5060)
    assert target.from_uri == "sip:+74951234567@acme.example"
    target = gateway_target(us, ToOutside("911", emergency=True), None, "initech.example")
    assert target.uri == "sip:911@[2001:db8::1]:5080;transport=tcp"
    assert target.peer == Peer("tcp", "2001:db8::1", 5080)
    assert target.from_uri == "sip:anonymous@anonymous.invalid"  # no caller ID: anonymous
    target = gateway_target(us, ToOutside("+12125550199"), "+12125550100", "initech.example")
    assert (target.uri, target.from_uri) == (
        "sip:12125550199@[2001:db8::1]:5080;transport=tcp",
        "sip:12125550100@initech.example",
    )
