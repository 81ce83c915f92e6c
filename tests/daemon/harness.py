"""The real daemon as a subprocess: config on disk, start, probe, signals, metrics, logs.

A `Daemon` owns one temporary configuration and one SQLite file. It starts
`python -m switch.cli run -c FILE` from the working tree, waits until the
daemon answers both /metrics and a SIP OPTIONS on its UDP port, and keeps
everything the process printed (JSON log lines) in a file the tests read.
Every wait here is bounded in time; nothing polls forever.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 8.0  # the daemon drains for at most 5 s (switch/daemon.py DRAIN_SECONDS)

USERS = {
    "101": "s3cret-101",
    "102": "s3cret-102",
    "103": "s3cret-103",
}


# Ports the tests hand to peers come from below the kernel's ephemeral range
# (32768-60999 here) and below baresip's RTP range (20000-29999): a port taken from
# the ephemeral range could be handed to someone's outgoing connection between the
# check here and the peer's own bind ("Address already in use" in baresip, once).
TEST_PORTS = range(10000, 20000)
# Steps of 4: a peer given port P may also take P+1..P+3 (sipp's RTCP and video ports).
PORT_STEP = 4
_first_port = (os.getpid() * 7919) % len(TEST_PORTS) // PORT_STEP * PORT_STEP
_next_port = itertools.count(_first_port, PORT_STEP)


def free_port(host: str = "127.0.0.1", *, both: bool = False) -> int:
    """A port nobody listens on now: TCP, and with `both` also free for UDP, with the
    next `PORT_STEP - 1` UDP ports (a sipp given P as its media port binds up to P+3).

    Ports go round `TEST_PORTS` so one test run does not hand the same port out twice
    while its last holder may still be closing, nor its neighbours.
    """
    for _ in range(200):
        port = TEST_PORTS[next(_next_port) % len(TEST_PORTS)]
        binds = [(socket.SOCK_STREAM, port)]
        if both:
            binds += [(socket.SOCK_DGRAM, port + i) for i in range(PORT_STEP)]
        try:
            for kind, number in binds:
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind((host, number))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port found in 200 tries in {TEST_PORTS}")


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for DNS ``name`` signed by itself, and its key, valid for a day (openssl)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-days", "1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


# The whole daemon suite can run with the relay in media worker processes:
# SOFTSWITCH_TEST_MEDIA_WORKERS=2 pytest tests/daemon (CI runs some modules both ways:
# conftest's `media_workers` fixture).
MEDIA_WORKERS = int(os.environ.get("SOFTSWITCH_TEST_MEDIA_WORKERS", "0"))


def base_config(tmp: Path, sip_port: int, http_port: int) -> dict[str, Any]:
    """The test configuration: loopback only, short expiries, a small ban threshold."""
    return {
        "sip": {
            "listen": [
                {"transport": "udp", "address": "127.0.0.1", "port": sip_port},
                {"transport": "tcp", "address": "127.0.0.1", "port": sip_port},
            ],
            "user_agent": "softswitch-test",
        },
        "registrar": {
            "min_expires": 2,
            "default_expires": 60,
            "max_expires": 3600,
            "max_contacts": 10,
        },
        "security": {
            "nonce_ttl": 60,
            # sipp knows only MD5 and answers the first challenge: MD5 first.
            "auth_algorithms": ["MD5", "SHA-256"],
            "ban": {"failures": 5, "window": 60, "duration": 60, "whitelist": []},
        },
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "store": {"url": f"sqlite:///{tmp / 'softswitch.db'}"},
        "log": {"level": "info", "format": "json"},
        "tenants": [
            {
                "name": "acme",
                "domain": "acme.example",
                "users": [{"extension": ext, "password": pw} for ext, pw in USERS.items()],
            },
            {
                "name": "globex",
                "domain": "globex.example",
                "users": [{"extension": "101", "password": "globex-101"}],
            },
        ],
    }


class Daemon:
    """One softswitch process with its own config, database and log file."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.config = config
        self.config_path = tmp / "softswitch.yaml"
        self.log_path = tmp / "daemon.log"
        self.pid_path = tmp / "softswitch.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.env: dict[str, str] = {}  # set in the daemon's environment (systemd's variables)
        self.prefix: list[str] = []  # runs the daemon, e.g. setpriv with fewer capabilities
        self.write_config(config)

    # -- configuration ------------------------------------------------------

    @property
    def sip_port(self) -> int:
        return int(self.listener("udp")["port"])

    @property
    def tcp_port(self) -> int:
        return int(self.listener("tcp")["port"])

    @property
    def tls_port(self) -> int:
        return int(self.listener("tls")["port"])

    @property
    def http_port(self) -> int:
        return int(self.config["http"]["listen"].rpartition(":")[2])

    def listener(self, transport: str) -> dict[str, Any]:
        for spec in self.config["sip"]["listen"]:
            if spec["transport"] == transport:
                return dict(spec)
        raise KeyError(f"no {transport} listener in the test config")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- process ------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        """Start the process; with `wait`, return once it answers /metrics and OPTIONS."""
        assert self.process is None or self.process.poll() is not None, "already running"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "switch.cli", "run", "-c",
                 str(self.config_path), "--pid-file", str(self.pid_path)],
                cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.process.returncode} while starting:\n{self.log}"
                )
            if self._metrics_text(timeout=0.5) is not None and options_ok(self.sip_port, 0.3):
                return
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"daemon not ready after {START_TIMEOUT} s:\n{self.log}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None and self.running, "daemon is not running"
        self.process.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait for the exit, and return the exit code (asserting it is 0)."""
        assert self.process is not None
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon did not exit {timeout} s after SIGTERM") from None
        self.exit_codes.append(code)
        assert code == 0, f"daemon exited with {code}:\n{self.log}"
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP, then wait until the daemon logged the outcome (reloaded or refused)."""
        before = len(self.events())
        self.signal(signal.SIGHUP)
        wait_until(
            lambda: any(
                e.get("event") in ("reloaded", "reload refused, keeping the running configuration")
                for e in self.events()[before:]
            ),
            5.0,
            what="the daemon to log the reload outcome",
        )

    # -- observation --------------------------------------------------------

    @property
    def log(self) -> str:
        """What the daemon printed so far, up to what it did before this was asked.

        The daemon writes a loop turn's lines at the start of the next turn
        (switch/logs.py LoopWriter), so the line of what a peer has just seen happen (a
        BYE's 200 and the CCEventDisconnect of the same turn) may not be in the file yet
        when the peer exits. An HTTP request first is a barrier: the daemon serves it in a
        later turn, after those lines are written."""
        if self.running:
            self._metrics_text()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed; other lines (tracebacks) are left out."""
        events = []
        for line in self.log.splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def events_named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == name]

    def wait_events(self, name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The events called ``name`` once there is one: the daemon may log an event a moment
        after a peer has finished (a BYE's 200 is sent before the call's end is written)."""
        return list(wait_until(lambda: self.events_named(name), timeout, what=f"event {name!r}"))

    def _metrics_text(self, timeout: float = 2.0) -> str | None:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def metrics(self) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        """Sample name -> {label set -> value}, from /metrics."""
        text = self._metrics_text()
        assert text is not None, f"/metrics did not answer:\n{self.log[-3000:]}"
        samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = frozenset(sample.labels.items())
                samples.setdefault(sample.name, {})[labels] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value; 0 when the series does not exist (yet)."""
        return self.metrics().get(name, {}).get(frozenset(labels.items()), 0.0)

    def wait_metric(self, name: str, value: float, timeout: float = 5.0, **labels: str) -> None:
        last: list[float] = []

        def reached() -> bool:
            last[:] = [self.metric(name, **labels)]
            return last[0] == value

        try:
            wait_until(reached, timeout, 0.1)
        except AssertionError:
            raise AssertionError(f"{name}{labels} is {last}, expected {value}") from None

    def registrations(self, tenant: str = "acme") -> float:
        return self.metric("softswitch_registrations", tenant=tenant)


def options_ok(
    port: int, timeout: float, host: str = "127.0.0.1", source: str = "127.0.0.1"
) -> bool:
    """True when an OPTIONS over UDP from `source` gets a 200 within `timeout` seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        local = sock.getsockname()
        branch = f"z9hG4bK-probe-{time.monotonic_ns()}"
        message = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{local[0]}>;tag=probe\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {branch}@probe\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        try:
            sock.sendto(message, (host, port))
            data = sock.recv(65535)
        except OSError:  # timeout, or ICMP port unreachable before the daemon listens
            return False
        return data.startswith(b"SIP/2.0 200 ")
