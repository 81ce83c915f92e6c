"""sd_notify (switch/systemd.py) against a real datagram socket, as systemd listens on one."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from switch.systemd import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """What systemd holds for a Type=notify unit: a bound AF_UNIX datagram socket."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2.0)
        yield sock, path


def parse(data: bytes) -> dict[str, str]:
    """One sd_notify datagram: KEY=value lines."""
    return dict(line.split("=", 1) for line in data.decode().split("\n"))


def fields(sock: socket.socket) -> dict[str, str]:
    return parse(sock.recv(4096))


def test_ready_reaches_the_socket_with_its_status(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready("running: 2 SIP listeners")
    assert fields(sock) == {"READY": "1", "STATUS": "running: 2 SIP listeners"}


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime(time.CLOCK_MONOTONIC)
    notifier.reloading()
    after = time.clock_gettime(time.CLOCK_MONOTONIC)
    got = fields(sock)
    assert got["RELOADING"] == "1"
    assert before - 1e-6 <= int(got["MONOTONIC_USEC"]) / 1e6 <= after  # CLOCK_MONOTONIC, us


def test_abstract_socket_names_start_with_an_at_sign() -> None:
    name = f"softswitch-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify(STATUS="hello")
        assert fields(sock) == {"STATUS": "hello"}


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.notify(READY=1)


def test_a_socket_that_is_gone_is_reported_once_and_never_fails_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not notifier.notify(READY=1)
    assert not notifier.notify(STOPPING=1)
    assert capsys.readouterr().out.count("cannot notify systemd") == 1


def test_an_address_it_cannot_use_is_refused_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "NOTIFY_SOCKET not understood" in capsys.readouterr().out


async def test_watchdog_pings_twice_per_period(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_seconds == 0.1
    task = asyncio.create_task(notifier.watchdog())
    await asyncio.sleep(0.22)  # pings at 0, 0.05, 0.10, 0.15, 0.20
    task.cancel()
    pings = []
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert set(pings) == {b"WATCHDOG=1"}
    assert 3 <= len(pings) <= 6


def test_a_watchdog_meant_for_another_process_is_not_fed(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "1000000"}
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_seconds == 1.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_seconds is None


def test_from_environment_unsets_the_variables_for_children(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier.from_environment()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert notifier.watchdog_seconds == 30.0
    assert notifier.notify(READY=1)  # the notifier itself keeps what it read
    assert fields(sock) == {"READY": "1"}
