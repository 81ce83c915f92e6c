"""REGISTER against the running daemon (RFC 3261 §10), driven by sipp and a socket client.

Each test starts its own daemon (conftest.py). sipp plays the phone; the
Python client (sipclient.py) asks for the bindings afterwards (a REGISTER
without Contact, §10.2.3) so the test sees what the registrar stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon.harness import USERS, Daemon
from tests.daemon.sipclient import SipClient, contacts
from tests.daemon.sipp import run_sipp

ALICE = ("101", "acme.example", USERS["101"])
EXPIRES_RE = re.compile(r";expires=(\d+)")


def query(daemon: Daemon, user: str = "101", transport: str = "udp") -> list[str]:
    """The Contact values of a bindings query for user@acme.example."""
    with SipClient(daemon.sip_port, transport) as client:
        exchange = client.register(user, USERS[user], contact=None)
    assert exchange.status == 200, exchange.raw
    assert exchange.response is not None
    return contacts(exchange.response)


def test_sipp_register_with_digest(daemon: Daemon, work: Path) -> None:
    phone = run_sipp("register.xml", daemon.sip_port, work, users=[ALICE])
    assert phone.returncode == 0 and phone.successful == 1, phone
    assert daemon.registrations("acme") == 1
    assert daemon.registrations("globex") == 0
    assert daemon.metric("softswitch_sip_responses_total", code="401") == 1
    probes = daemon.metric("softswitch_sip_requests_total", method="OPTIONS")  # readiness
    assert daemon.metric("softswitch_sip_responses_total", code="200") == 1 + probes
    assert daemon.metric("softswitch_sip_requests_total", method="REGISTER") == 2
    assert daemon.metric("softswitch_auth_failures_total") == 0

    # sipp's own bindings query, then ours with the exact values.
    result = run_sipp("query.xml", daemon.sip_port, work, users=[ALICE])
    assert result.returncode == 0 and result.successful == 1, result
    (binding,) = query(daemon)
    assert binding.startswith(f"<sip:101@127.0.0.1:{phone.local_port}>;"), binding
    match = EXPIRES_RE.search(binding)
    assert match is not None, binding
    assert 3590 <= int(match.group(1)) <= 3600
    assert daemon.registrations("acme") == 1, "a query must not change the bindings"
    (event,) = daemon.events_named("registered")
    assert event["user"] == "101" and event["tenant"] == "acme" and event["source"] == "127.0.0.1"


def test_wrong_password_gets_403_and_counts(daemon: Daemon, work: Path) -> None:
    result = run_sipp(
        "register_403.xml",
        daemon.sip_port,
        work,
        users=[("101", "acme.example", "Tr0ub4dor-guess")],
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.metric("softswitch_auth_failures_total") == 1
    assert daemon.metric("softswitch_sip_responses_total", code="403") == 1
    assert daemon.registrations("acme") == 0
    (event,) = daemon.events_named("auth failed")
    assert event["source"] == "127.0.0.1" and event["reason"] == "wrong-password"
    assert "Tr0ub4dor" not in daemon.log, "the password must never be logged"


def test_unknown_user_gets_403_after_challenge(daemon: Daemon, work: Path) -> None:
    result = run_sipp(
        "register_403.xml", daemon.sip_port, work, users=[("199", "acme.example", "guess")]
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.metric("softswitch_auth_failures_total") == 1
    (event,) = daemon.events_named("auth failed")
    assert event["reason"] == "unknown user"
    # The same answer as a wrong password: the response does not reveal which users exist.
    with SipClient(daemon.sip_port) as client:
        unknown = client.register("199", "guess")
        wrong = client.register("101", "guess")
    assert unknown.response is not None and wrong.response is not None
    assert (unknown.status, unknown.response.reason) == (wrong.status, wrong.response.reason)
    assert unknown.status == 403
    assert [r.status for r in unknown.seen] == [401]


def test_binding_expires_and_re_registers(daemon: Daemon, work: Path) -> None:
    result = run_sipp(
        "register_expires.xml", daemon.sip_port, work, users=[ALICE], keys={"expires": "2"}
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 1
    (binding,) = query(daemon)
    assert EXPIRES_RE.search(binding).group(1) in ("1", "2"), binding  # type: ignore[union-attr]
    # The binding lives 2 s; housekeeping runs every second.
    daemon.wait_metric("softswitch_registrations", 0, timeout=6, tenant="acme")
    assert query(daemon) == []
    assert any(e["user"] == "101" for e in daemon.events_named("binding expired"))

    result = run_sipp(
        "register_expires.xml", daemon.sip_port, work, users=[ALICE], keys={"expires": "60"}
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 1


def test_interval_too_brief(daemon: Daemon, work: Path) -> None:
    result = run_sipp(
        "register_423.xml", daemon.sip_port, work, users=[ALICE], keys={"expires": "1"}
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 0
    with SipClient(daemon.sip_port) as client:
        exchange = client.register("101", USERS["101"], expires=1)
    assert exchange.status == 423 and exchange.response is not None
    assert exchange.response.reason == "Interval Too Brief"
    assert exchange.response.headers.get("Min-Expires") == "2"
    assert daemon.metric("softswitch_auth_failures_total") == 0


def test_unregister_one_then_all(daemon: Daemon, work: Path) -> None:
    first = run_sipp("register.xml", daemon.sip_port, work, users=[ALICE])
    second = run_sipp("register.xml", daemon.sip_port, work, users=[ALICE])
    assert first.successful == 1 and second.successful == 1, (first, second)
    assert daemon.registrations() == 2
    bound = query(daemon)
    assert len(bound) == 2

    # Contact <first>;expires=0 removes the first binding only.
    result = run_sipp(
        "unregister.xml", daemon.sip_port, work, users=[ALICE], local_port=first.local_port
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 1
    (left,) = query(daemon)
    assert left.startswith(f"<sip:101@127.0.0.1:{second.local_port}>"), left

    # Contact: * with Expires: 0 removes the rest.
    third = run_sipp("register.xml", daemon.sip_port, work, users=[ALICE])
    assert third.successful == 1, third
    assert daemon.registrations() == 2
    result = run_sipp("unregister_all.xml", daemon.sip_port, work, users=[ALICE])
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 0
    assert query(daemon) == []
    assert daemon.events_named("unregistered all")


def test_unregister_all_needs_expires_zero(daemon: Daemon) -> None:
    with SipClient(daemon.sip_port) as client:
        exchange = client.register("101", USERS["101"], contact="*", expires=5)
    assert exchange.status == 400, exchange.raw
    assert exchange.response is not None and "Expires: 0" in exchange.response.reason


def test_tcp_register(daemon: Daemon, work: Path) -> None:
    result = run_sipp("register.xml", daemon.tcp_port, work, users=[ALICE], transport="t1")
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 1
    (binding,) = query(daemon, transport="tcp")
    assert binding.startswith("<sip:101@127.0.0.1:"), binding
    result = run_sipp("options.xml", daemon.tcp_port, work, transport="t1")
    assert result.returncode == 0 and result.successful == 1, result


def test_binding_survives_restart(daemon: Daemon, work: Path) -> None:
    result = run_sipp("register.xml", daemon.sip_port, work, users=[ALICE])
    assert result.returncode == 0 and result.successful == 1, result
    (before,) = query(daemon)
    daemon.restart()
    assert daemon.exit_codes == [0]
    assert daemon.registrations() == 1
    (after,) = query(daemon)
    assert after.partition(";")[0] == before.partition(";")[0]
    assert 3500 < int(EXPIRES_RE.search(after).group(1)) <= 3600  # type: ignore[union-attr]
    started = daemon.events_named("started")
    assert [e["bindings"] for e in started] == [0, 1]
    # Registering again after the restart refreshes the same binding, not a second one.
    result = run_sipp(
        "register.xml", daemon.sip_port, work, users=[ALICE], local_port=result.local_port
    )
    assert result.returncode == 0 and result.successful == 1, result
    assert daemon.registrations() == 1


def test_sha256_digest(make_daemon: Callable[..., Daemon]) -> None:
    """SHA-256 (RFC 8760) end to end. sipp, pjsip 2.14 and libre 1.1 answer only MD5, so
    this side is played by the client half of switch.sip.digest."""

    def sha256_first(config: dict[str, Any]) -> None:
        config["security"]["auth_algorithms"] = ["SHA-256", "MD5"]

    daemon = make_daemon(sha256_first)
    with SipClient(daemon.sip_port) as client:
        exchange = client.register("101", USERS["101"], algorithm="SHA-256")
        assert exchange.status == 200, exchange.raw
        challenge = exchange.seen[0]
        offered = [
            re.search(r"algorithm=([\w-]+)", v).group(1)  # type: ignore[union-attr]
            for v in challenge.headers.values("WWW-Authenticate")
        ]
        assert offered == ["SHA-256", "MD5"], "challenges in the configured order"
        assert client.register("101", USERS["101"], algorithm="MD5").status == 200
        assert client.register("101", "not-it", algorithm="SHA-256").status == 403
    assert daemon.registrations() == 1
    assert daemon.metric("softswitch_auth_failures_total") == 1


def test_tenants_are_separate(daemon: Daemon, work: Path) -> None:
    """Extension 101 exists in acme and in globex: two users, two passwords, two counts."""
    result = run_sipp(
        "register.xml", daemon.sip_port, work,
        users=[ALICE, ("101", "globex.example", "globex-101")], calls=2,
    )  # fmt: skip
    assert result.returncode == 0 and result.successful == 2, result
    assert (daemon.registrations("acme"), daemon.registrations("globex")) == (1, 1)
    # acme's password is not globex's, and an unknown domain is not served at all.
    result = run_sipp(
        "register_403.xml", daemon.sip_port, work, users=[("101", "globex.example", USERS["101"])]
    )
    assert result.returncode == 0 and result.successful == 1, result
    with SipClient(daemon.sip_port) as client:
        exchange = client.register("101", USERS["101"], domain="initech.example")
    assert exchange.status == 404, exchange.raw
