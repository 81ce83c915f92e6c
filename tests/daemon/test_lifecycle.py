"""The daemon as operators run it: TLS, reload on SIGHUP, `softswitch check`, SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from media.bpf import BpfError
from media.kernel import KernelPath
from tests.daemon.conftest import require
from tests.daemon.harness import (
    REPO,
    USERS,
    Daemon,
    free_port,
    options_ok,
    self_signed,
    wait_until,
)
from tests.daemon.sipclient import SipClient, contacts
from tests.daemon.sipp import run_sipp
from tests.test_systemd import parse

ALICE = ("101", "acme.example", USERS["101"])


def softswitch(*args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command line: the console script, or the module when not installed."""
    script = shutil.which("softswitch")
    command = [script] if script else [sys.executable, "-m", "switch.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )


# -- TLS ----------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    require("openssl")
    return self_signed(tmp_path, "localhost")


def test_tls_register(make_daemon: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    tls_port = free_port()

    def with_tls(config: dict[str, Any]) -> None:
        config["sip"]["listen"].append(
            {"transport": "tls", "address": "127.0.0.1", "port": tls_port,
             "cert": str(cert), "key": str(key)}
        )  # fmt: skip

    daemon: Daemon = make_daemon(with_tls)
    listening = {(e["transport"], e["port"]) for e in daemon.events_named("listening")}
    assert ("tls", tls_port) in listening, listening
    context = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the name
    with SipClient(daemon.tls_port, "tls", tls=context, server_hostname="localhost") as phone:
        exchange = phone.register("101", USERS["101"], expires=120)
        assert exchange.status == 200, exchange.raw
        assert exchange.response is not None
        assert [r.status for r in exchange.seen] == [401]
        (binding,) = contacts(exchange.response)
        assert binding.startswith(f"<sip:101@127.0.0.1:{phone.local[1]}>;expires=")
        # The answer came back over the same TLS connection, with the Via we sent.
        assert exchange.response.top_via.transport == "TLS"
        assert phone.options().status == 200
    assert daemon.registrations() == 1
    (event,) = daemon.events_named("registered")
    assert event["source"] == "127.0.0.1"
    assert daemon.events_named("auth failed") == []

    # A client that does not trust the certificate gets no session at all.
    with pytest.raises(ssl.SSLError):
        SipClient(daemon.tls_port, "tls", tls=ssl.create_default_context(), server_hostname="x")


# -- reload -------------------------------------------------------------------------


def test_sighup_adds_a_user_and_refuses_a_broken_file(daemon: Daemon, work: Path) -> None:
    newcomer = ("104", "acme.example", "s3cret-104")
    result = run_sipp("register_403.xml", daemon.sip_port, work, users=[newcomer])
    assert result.successful == 1, result

    config = daemon.config
    config["tenants"][0]["users"].append({"extension": "104", "password": "s3cret-104"})
    daemon.write_config(config)
    daemon.reload()
    (reloaded,) = daemon.events_named("reloaded")
    assert reloaded["users"] == 5
    result = run_sipp("register.xml", daemon.sip_port, work, users=[newcomer])
    assert result.returncode == 0 and result.successful == 1, result

    # The operator's other way to reload: `softswitch reload --pid-file`.
    done = softswitch("reload", "--pid-file", str(daemon.pid_path))
    assert done.returncode == 0, done.stderr
    assert daemon.process is not None and f"{daemon.process.pid}" in done.stdout
    wait_until(lambda: len(daemon.events_named("reloaded")) == 2, 5.0, what="second reload")

    # A broken file is refused whole: the running configuration (with 104) stays.
    good = daemon.config_path.read_text()
    bad = good.replace("extension: '104'", "extension: 10four")
    assert bad != good
    bad_line = next(i for i, t in enumerate(bad.splitlines(), 1) if "extension: 10four" in t)
    daemon.config_path.write_text(bad)
    daemon.reload()
    (refused,) = daemon.events_named("reload refused, keeping the running configuration")
    assert f"{daemon.config_path}:{bad_line}:" in refused["problems"], refused
    assert "10four" in refused["problems"]
    assert daemon.running
    result = run_sipp("register.xml", daemon.sip_port, work, users=[newcomer, ALICE], calls=2)
    assert result.returncode == 0 and result.successful == 2, result
    # 104 from two sipp runs (two local ports, two bindings) and 101.
    assert daemon.registrations() == 3


def test_check_names_file_and_line(daemon: Daemon) -> None:
    done = softswitch("check", "-c", str(daemon.config_path))
    assert done.returncode == 0, done.stderr
    assert "OK (2 tenants, 4 users)" in done.stdout

    config = yaml.safe_load(daemon.config_path.read_text())
    config["registrar"]["min_expires"] = "soon"
    bad = daemon.tmp / "bad.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    bad.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "min_expires: soon" in t)
    done = softswitch("check", "-c", str(bad))
    assert done.returncode == 1
    assert f"{bad}:{line}: registrar.min_expires:" in done.stderr, done.stderr
    assert "soon" in done.stderr

    bad.write_text("tenants: [\n")
    done = softswitch("check", "-c", str(bad))
    assert done.returncode == 1
    assert f"{bad}:2: YAML syntax error" in done.stderr, done.stderr


# -- stopping -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(daemon: Daemon, work: Path, sig: signal.Signals) -> None:
    result = run_sipp("register.xml", daemon.sip_port, work, users=[ALICE])
    assert result.successful == 1, result
    assert daemon.process is not None
    daemon.signal(sig)
    assert daemon.process.wait(8) == 0, daemon.log
    names = [e["event"] for e in daemon.events() if "worker" not in e]  # media workers' own
    assert names[-2:] == ["draining", "stopped"], names
    assert not options_ok(daemon.sip_port, 0.5), "the SIP port must be closed"
    assert not daemon.pid_path.exists(), "the pid file is removed on exit"


# -- under systemd (config/softswitch.service) ----------------------------------------


def notifications(sock: socket.socket, until: str, timeout: float = 15.0) -> list[dict[str, str]]:
    """sd_notify messages the daemon sent, up to the first that has the field `until`."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not got or until not in got[-1]:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no {until} within {timeout} s, got {got}") from None
        got.append(parse(data))
    return got


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_systemd_hears_ready_reloading_stopping_and_the_watchdog(
    make_daemon: Any, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        daemon: Daemon = make_daemon(
            lambda c: c.setdefault("media", {}).update(workers=1), start=False
        )
        daemon.env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
        daemon.start(wait=False)
        (ready,) = notifications(sock, "READY")
        # READY means serving: SIP and HTTP answer at once (what `systemctl start` waits for).
        assert options_ok(daemon.sip_port, 0.5)
        assert daemon.metric("softswitch_calls_active") == 0
        assert ready["STATUS"] == "running: 2 SIP listeners, 0 bindings", ready
        daemon.wait_ready()
        pings: list[dict[str, str]] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pings += notifications(sock, "WATCHDOG", timeout=1.0)
        assert len(pings) >= 3 and all(p == {"WATCHDOG": "1"} for p in pings), pings

        daemon.signal(signal.SIGHUP)
        got = [m for m in notifications(sock, "READY") if "WATCHDOG" not in m]
        assert [sorted(m) for m in got] == [["MONOTONIC_USEC", "RELOADING"], ["READY", "STATUS"]]
        assert got[1]["STATUS"].startswith("running: reloaded, 2 tenants"), got

        # A media worker is a child: it must not speak for the service nor feed its watchdog.
        assert daemon.process is not None
        (worker,) = children(daemon.process.pid)
        environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]

        daemon.signal(signal.SIGTERM)
        stopping = notifications(sock, "STOPPING")[-1]
        assert stopping["STATUS"].startswith("draining"), stopping
        assert daemon.stop() == 0


def test_the_unit_file_is_valid_for_systemd(tmp_path: Path) -> None:
    require("systemd-analyze")
    # The unit names the installed paths (/opt/softswitch, /etc/softswitch); point them here.
    script = Path(sys.executable).parent / "softswitch"  # pip's console script, beside python
    if not script.exists():
        pytest.skip("softswitch is not installed in this environment")
    lines = (REPO / "config" / "softswitch.service").read_text().splitlines()
    unit = "\n".join(line for line in lines if not line.startswith("#"))
    unit = unit.replace("/opt/softswitch/.venv/bin/softswitch", str(script))
    unit = unit.replace("/opt/softswitch/README.md", str(REPO / "README.md"))
    assert "/opt/softswitch" not in unit and f"ExecStart={script} run" in unit
    path = tmp_path / "softswitch.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    # It names each line it cannot use (an unknown key, a bad value) and goes on.
    assert "softswitch.service" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr


def test_the_capabilities_the_unit_grants_are_enough(make_daemon: Any) -> None:
    # The unit runs the daemon with CAP_NET_ADMIN, CAP_BPF and CAP_NET_BIND_SERVICE only:
    # with those, the SIP socket gets its full receive buffer and latched RTP goes through the
    # kernel. (Root here, but with every other capability dropped, as the unit does.)
    require("setpriv")
    if os.geteuid() != 0:
        pytest.skip("dropping to a capability set needs root")
    caps = "+net_admin,+bpf,+net_bind_service"
    daemon: Daemon = make_daemon(start=False)
    daemon.prefix = ["setpriv", f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}", "--"]
    daemon.start()
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s+([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    assert bounding == (1 << 12) | (1 << 39) | (1 << 10)  # NET_ADMIN, BPF, NET_BIND_SERVICE
    names = [e["event"] for e in daemon.events()]
    assert "udp receive buffer smaller than configured" not in names, daemon.log
    if kernel_forwarding_here():
        assert daemon.events_named("media kernel forwarding"), daemon.log
    assert daemon.stop() == 0


def kernel_forwarding_here() -> bool:
    """Whether this host gives kernel forwarding to a process with every capability."""
    try:
        KernelPath(address="127.0.0.1", capacity=2).close()
    except (BpfError, OSError):
        return False
    return True
