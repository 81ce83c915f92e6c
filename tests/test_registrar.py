"""The registrar's decisions (RFC 3261 §10.3, §22), fed requests in memory.

The daemon tests drive the same code with sipp, pjsua2 and baresip; these
pin down each rule on its own: challenge, failure counting, expiry limits,
removal, ordering and the NAT source kept with the binding.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switch.ban import BanList
from switch.config import Config, load_config
from switch.location import LocationService
from switch.metrics import Metrics
from switch.registrar import Registrar
from switch.sip.digest import NonceManager, parse_challenge, respond
from switch.sip.message import Request, Response, parse_message
from switch.store import open_store
from switch.transport import Peer

CONFIG = """
registrar: {min_expires: 60, max_expires: 3600, default_expires: 600, max_contacts: 2}
security: {auth_algorithms: [MD5, SHA-256], ban: {failures: 3, window: 60, duration: 600}}
store: {url: "sqlite:///%s"}
tenants:
  - name: acme
    domain: acme.example
    users:
      - {extension: "101", password: "pw-101"}
      - {extension: "102", password: "pw-102"}
"""

PHONE = Peer("udp", "203.0.113.7", 40123)  # the NAT's public side, not the Contact
NOW = 1_800_000_000.0


class Harness:
    def __init__(self, registrar: Registrar, metrics: Metrics) -> None:
        self.registrar = registrar
        self.metrics = metrics
        self.cseq = 0

    def request(
        self,
        user: str = "101",
        contacts: tuple[str, ...] = ("<sip:101@192.168.1.20:5062>",),
        expires: int | None = None,
        call_id: str = "reg-1",
        auth: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        self.cseq += 1
        lines = [
            "REGISTER sip:acme.example SIP/2.0",
            "Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK" + str(self.cseq) + ";rport",
            f"From: <sip:{user}@acme.example>;tag=ft",
            f"To: <sip:{user}@acme.example>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq if cseq is not None else self.cseq} REGISTER",
            *(f"Contact: {c}" for c in contacts),
            *([f"Expires: {expires}"] if expires is not None else []),
            *([f"Authorization: {auth}"] if auth else []),
            "Content-Length: 0",
        ]
        message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
        assert isinstance(message, Request)
        return message

    async def send(self, request: Request, peer: Peer = PHONE) -> Response:
        return await self.registrar.handle(request, peer, "tt")

    async def register(
        self, user: str = "101", password: str = "pw-101", algorithm: str = "MD5", **kw: object
    ) -> Response:
        """The two-step REGISTER a phone does: challenge, then credentials."""
        first = await self.send(self.request(user, **kw))  # type: ignore[arg-type]
        assert first.status == 401
        challenges = [parse_challenge(v) for v in first.headers.values("WWW-Authenticate")]
        challenge = next(c for c in challenges if c.algorithm == algorithm)
        creds = respond(
            challenge, method="REGISTER", uri="sip:acme.example", username=user,
            password=password, cnonce="c0ffee",
        )  # fmt: skip
        return await self.send(self.request(user, auth=creds.header_value(), **kw))  # type: ignore[arg-type]


def contact_expiries(response: Response) -> dict[str, int]:
    out = {}
    for value in response.headers.values("Contact"):
        match = re.fullmatch(r"<(.*)>;expires=(\d+)", value)
        assert match, value
        out[match.group(1)] = int(match.group(2))
    return out


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    path = tmp_path / "softswitch.yaml"
    path.write_text(CONFIG % (tmp_path / "db.sqlite"))
    config: Config = load_config(path)
    store = await open_store(config.store.url)
    location = LocationService(store)
    await location.load(NOW)
    location.start()
    metrics = Metrics()
    ban = config.security.ban
    registrar = Registrar(
        config, location, NonceManager(ttl=300), BanList(ban.failures, ban.window, ban.duration),
        metrics, clock=lambda: NOW,
    )  # fmt: skip
    yield Harness(registrar, metrics)
    await location.close()
    await store.close()


async def test_first_register_is_challenged_with_each_algorithm(harness: Harness) -> None:
    response = await harness.send(harness.request())
    assert response.status == 401
    algorithms = [parse_challenge(v).algorithm for v in response.headers.values("WWW-Authenticate")]
    assert algorithms == ["MD5", "SHA-256"]
    assert harness.metrics.auth_failures._value.get() == 0  # a challenge is not a failure


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_register_with_digest_stores_binding_with_nat_source(
    harness: Harness, algorithm: str
) -> None:
    response = await harness.register(algorithm=algorithm, expires=300)
    assert response.status == 200
    assert contact_expiries(response) == {"sip:101@192.168.1.20:5062": 300}
    (binding,) = harness.registrar.location.bindings("acme", "101", now=NOW)
    assert (binding.source_host, binding.source_port) == (PHONE.host, PHONE.port)


async def test_wrong_password_is_403_and_counts_until_source_blocked(harness: Harness) -> None:
    for _ in range(3):
        response = await harness.register(password="guess")
        assert response.status == 403
    assert harness.metrics.auth_failures._value.get() == 3
    assert harness.registrar.bans.is_banned(PHONE.host, now=NOW + 1)


async def test_unknown_user_gets_the_same_answer_as_a_wrong_password(harness: Harness) -> None:
    response = await harness.register(user="199", password="x")
    assert response.status == 403
    assert harness.metrics.auth_failures._value.get() == 1


async def test_user_cannot_register_another_users_aor(harness: Harness) -> None:
    first = await harness.send(harness.request("102"))
    challenge = parse_challenge(first.headers.values("WWW-Authenticate")[0])
    creds = respond(
        challenge, method="REGISTER", uri="sip:acme.example", username="101",
        password="pw-101", cnonce="x",
    )  # fmt: skip
    response = await harness.send(harness.request("102", auth=creds.header_value()))
    assert response.status == 403


async def test_expiry_limits(harness: Harness) -> None:
    too_brief = await harness.register(expires=30)
    assert too_brief.status == 423 and too_brief.headers.get("Min-Expires") == "60"
    clamped = await harness.register(expires=99999)
    assert set(contact_expiries(clamped).values()) == {3600}
    default = await harness.register(contacts=("<sip:101@192.168.1.20:5070>",), call_id="b")
    assert contact_expiries(default)["sip:101@192.168.1.20:5070"] == 600


async def test_unregister_one_and_all(harness: Harness) -> None:
    await harness.register(contacts=("<sip:101@10.0.0.1>", "<sip:101@10.0.0.2>"))
    one = await harness.register(contacts=("<sip:101@10.0.0.1>;expires=0",))
    assert list(contact_expiries(one)) == ["sip:101@10.0.0.2"]
    bad_star = await harness.register(contacts=("*",), expires=60)
    assert bad_star.status == 400
    everything = await harness.register(contacts=("*",), expires=0)
    assert everything.status == 200 and not everything.headers.values("Contact")


async def test_query_without_contact_lists_bindings(harness: Harness) -> None:
    await harness.register()
    query = await harness.register(contacts=())
    assert list(contact_expiries(query)) == ["sip:101@192.168.1.20:5062"]


async def test_oldest_binding_is_evicted_past_max_contacts(harness: Harness) -> None:
    for i, call_id in enumerate(("a", "b", "c")):
        response = await harness.register(contacts=(f"<sip:101@10.0.0.{i}>",), call_id=call_id)
    assert set(contact_expiries(response)) == {"sip:101@10.0.0.1", "sip:101@10.0.0.2"}


async def test_out_of_order_cseq_for_same_call_id_is_refused(harness: Harness) -> None:
    assert (await harness.register(cseq=50)).status == 200
    assert (await harness.register(cseq=10)).status == 400


async def test_register_to_unknown_domain_or_non_sip_aor(harness: Harness) -> None:
    request = harness.request()
    request.headers.set("To", "<sip:101@other.example>")
    assert (await harness.send(request)).status == 404
    data = (Path(__file__).parent / "torture" / "rfc4475" / "unksm2.dat").read_bytes()
    unksm2 = parse_message(data)
    assert isinstance(unksm2, Request)
    assert (await harness.send(unksm2)).status == 400


def test_ban_list_window_whitelist_and_expiry() -> None:
    from ipaddress import ip_network

    bans = BanList(failures=3, window=10, duration=100, whitelist=[ip_network("10.0.0.0/8")])
    assert not bans.record_failure("192.0.2.1", 0)
    assert not bans.record_failure("192.0.2.1", 1)
    assert not bans.record_failure("192.0.2.1", 20)  # the first two fell out of the window
    assert not bans.record_failure("192.0.2.1", 21)
    assert bans.record_failure("192.0.2.1", 22)
    assert bans.is_banned("192.0.2.1", 50) and not bans.is_banned("192.0.2.2", 50)
    assert not any(bans.record_failure("10.1.2.3", t) for t in range(10))
    assert bans.expire(200) == ["192.0.2.1"] and not bans.is_banned("192.0.2.1", 200)
