"""Real softphones against the daemon: pjsua2 (pjsip) and baresip (libre), over UDP.

Each phone runs in its own process, bounded in time, and the test watches the
daemon's side: the binding appears in /metrics and in a bindings query while
the phone is registered, and is gone after the phone unregisters.

Known limits of the phones installed here (found by these tests):
- pjsip 2.14.1 answers only MD5; it skips a SHA-256 challenge when an MD5 one
  follows, and fails when SHA-256 is all it is offered (SHA-256 came in 2.15).
- libre 1.1.0 (baresip 1.0.0) walks every WWW-Authenticate and gives up with
  ENOSYS on the first non-MD5 one, so it cannot register while SHA-256 is
  offered at all, even after MD5.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.baresip_phone import Lines, Phones
from tests.daemon.harness import USERS, Daemon, free_port, wait_until
from tests.daemon.sipclient import SipClient, contacts

PHONE = Path(__file__).with_name("pjsua_phone.py")


def bindings(daemon: Daemon, user: str) -> list[str]:
    with SipClient(daemon.sip_port) as client:
        exchange = client.register(user, USERS[user], contact=None)
    assert exchange.status == 200 and exchange.response is not None, exchange.raw
    return contacts(exchange.response)


def algorithms(*names: str) -> Any:
    def edit(config: dict[str, Any]) -> None:
        config["security"]["auth_algorithms"] = list(names)

    return edit


def default_algorithms(config: dict[str, Any]) -> None:
    """Leave auth_algorithms to the daemon's default (the harness sets both)."""
    config["security"].pop("auth_algorithms", None)


# -- pjsua2 ---------------------------------------------------------------------------


@pytest.fixture
def pjsua() -> Iterator[list[subprocess.Popen[str]]]:
    pytest.importorskip("pjsua2")
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def start_pjsua(children: list[Any], daemon: Daemon, folder: Path) -> tuple[Any, Lines, int]:
    port = free_port(both=True)
    child = subprocess.Popen(
        [sys.executable, str(PHONE), "--server", f"127.0.0.1:{daemon.sip_port}",
         "--local-port", str(port), "--user", "102", "--password", USERS["102"],
         "--log", str(folder / "pjsua.log"), "--timeout", "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    children.append(child)
    assert child.stdout is not None
    return child, Lines(child.stdout), port


def report(lines: Lines, timeout: float) -> dict[str, Any]:
    """The phone's next JSON report."""
    line = lines.next_matching(lambda text: text.startswith("{"), timeout)
    assert line is not None, "pjsua_phone.py said nothing:\n" + "".join(lines.seen)
    return dict(json.loads(line))


@pytest.mark.parametrize("offered", [("MD5",), ("SHA-256", "MD5")], ids=["md5", "sha256-then-md5"])
def test_pjsua2_registers_and_unregisters(
    make_daemon: Any, pjsua: list[Any], tmp_path: Path, offered: tuple[str, ...]
) -> None:
    daemon: Daemon = make_daemon(algorithms(*offered))
    child, lines, port = start_pjsua(pjsua, daemon, tmp_path)
    started = report(lines, 10)
    assert started["state"] == "started", started
    registered = report(lines, 15)
    assert registered["state"] == "registered" and registered["code"] == 200, registered
    assert registered["expiration"] == 60

    assert daemon.registrations() == 1
    (binding,) = bindings(daemon, "102")
    assert re.match(rf"<sip:102@127\.0\.0\.1:{port}[;>].*;expires=\d+$", binding), binding
    (event,) = daemon.events_named("registered")
    assert (event["user"], event["port"]) == ("102", port)

    child.stdin.write("unregister\n")
    child.stdin.flush()
    unregistered = report(lines, 15)
    assert unregistered["state"] == "unregistered" and unregistered["code"] == 200, unregistered
    assert child.wait(15) == 0, "".join(lines.seen)
    assert daemon.registrations() == 0
    assert bindings(daemon, "102") == []
    assert daemon.metric("softswitch_auth_failures_total") == 0

    # pjsip 2.14 answers MD5 even when SHA-256 is offered first (module docstring).
    sent = (tmp_path / "pjsua.log").read_text(errors="replace")
    answered = re.findall(r"Authorization: Digest [^\r\n]*algorithm=([\w-]+)", sent)
    assert answered and set(answered) == {"MD5"}, answered


def test_pjsua2_with_sha256_only(make_daemon: Any, pjsua: list[Any], tmp_path: Path) -> None:
    """SHA-256 alone: pjsip >= 2.15 registers with it; 2.14 cannot answer and says so."""
    daemon: Daemon = make_daemon(algorithms("SHA-256"))
    child, lines, _ = start_pjsua(pjsua, daemon, tmp_path)
    version = tuple(int(n) for n in re.findall(r"\d+", report(lines, 10)["pjsip"])[:2])
    result = report(lines, 15)
    if version >= (2, 15):
        assert result["state"] == "registered", result
        assert daemon.registrations() == 1
        child.stdin.write("unregister\n")
        child.stdin.flush()
        assert report(lines, 15)["state"] == "unregistered"
        assert child.wait(15) == 0
    else:
        assert (result["state"], result["code"]) == ("failed", 401), result
        assert daemon.registrations() == 0
        assert child.wait(15) == 1
    log = (tmp_path / "pjsua.log").read_text(errors="replace")  # complete once it exited
    assert 'algorithm=SHA-256, qop="auth"' in log, "the daemon must offer SHA-256"
    if version >= (2, 15):
        assert re.search(r"Authorization: Digest [^\r\n]*algorithm=SHA-256", log)
    else:
        assert 'Unsupported digest algorithm "SHA-256"' in log


# -- baresip --------------------------------------------------------------------------


def test_baresip_registers_and_unregisters_on_exit(make_daemon: Any, baresip: Phones) -> None:
    # The default algorithms: libre 1.1 gives up on a SHA-256 challenge even
    # when MD5 is offered too, which is why the default offers MD5 only.
    daemon: Daemon = make_daemon(default_algorithms)
    phone = baresip.start(daemon, "103")
    wait_until(lambda: daemon.registrations() == 1, 10, what="baresip's binding")
    (binding,) = bindings(daemon, "103")
    assert binding.startswith("<sip:103-") and "@127.0.0.1:" in binding, binding
    (event,) = daemon.events_named("registered")
    assert event["user"] == "103"

    # On SIGTERM baresip unregisters (Contact ...;expires=0) before it exits.
    assert phone.stop() == 0
    wait_until(lambda: daemon.registrations() == 0, 5, what="baresip's unregistration")
    assert bindings(daemon, "103") == []
    assert "expires=0" in phone.said
