"""The servers a benchmark measures: softswitch and Kamailio, each started on 127.0.0.1 with a
generated configuration in a work directory, and every process stopped on exit.

- `Processes`: every process a bench starts, each in its own process group, stopped (with
  whatever it forked) by `stop`/`stop_all`; `exit_on_signals()` makes SIGTERM, SIGHUP and
  Ctrl-C unwind through the caller's `finally: procs.stop_all()`;
- `start_server(key, ...)`: a `Server` (one of `SERVERS`) listening on a free UDP port;
  `options_probe` says when it answers; `unavailable` why it cannot run here;
- `bench_users(n)`: the extensions every server knows, all with one password.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procstat import process_tree, settle

ROOT = Path(__file__).resolve().parent.parent
GC_PROBE = ROOT / "bench" / "softswitch_gc_probe.py"
KAMAILIO_CFG = ROOT / "bench" / "kamailio-registrar.cfg"
KAMAILIO_SQL = Path("/usr/share/kamailio/db_sqlite")
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
DOMAIN = "bench.example"
HOST = "127.0.0.1"

SERVERS = {
    "softswitch": "softswitch (this repo)",
    "kamailio": "Kamailio, usrloc in memory (db_mode=0), 1 worker",
    "kamailio-sqlite": "Kamailio, usrloc write-through to SQLite (db_mode=1), 1 worker",
    "kamailio-8": "Kamailio, usrloc in memory (db_mode=0), 8 workers (its default)",
}


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Every process this bench starts, each in its own process group, stopped on exit."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
            )
        self.running.append(proc)
        return proc

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop on exit a process started elsewhere (in its own session)."""
        self.running.append(proc)

    def reaped(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget a process the caller has waited for itself."""
        self.running.remove(proc)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.returncode is None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait()
        # Workers a server forked may outlive it briefly; they are in its process group.
        self._signal(proc, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc, timeout=5.0)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        # The group this bench created for it (start_new_session): the server and its workers.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP exit (SystemExit 128+signal), Ctrl-C raises KeyboardInterrupt: both
    unwind through the caller's `finally: procs.stop_all()`."""

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the caller's finally

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    # Ctrl-C even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    key: str
    title: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    notes: list[str]
    argv: list[str]
    gc_file: Path | None = None  # the GC probe's output (softswitch with --gc-probe)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def settle(self) -> None:
        """Wait until the server has worked off any backlog (its CPU use drops to idle)."""
        settle(self.pids, self.alive)


def options_probe(port: int, timeout: float) -> bool:
    """True once the server answers an OPTIONS on UDP (it is listening and routing)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(0.2)
        local = sock.getsockname()[1]
        while time.monotonic() < deadline:
            tag = secrets.token_hex(6)
            message = (
                f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK{tag};rport\r\n"
                f"From: <sip:probe@{DOMAIN}>;tag={tag}\r\n"
                f"To: <sip:{DOMAIN}>\r\n"
                f"Call-ID: probe-{tag}\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendto(message.encode(), (HOST, port))
            try:
                data = sock.recv(65535)
            except TimeoutError:
                continue
            if data.startswith(b"SIP/2.0 200"):
                return True
    return False


def bench_users(count: int) -> list[str]:
    return [str(100000 + i) for i in range(count)]


def unavailable(key: str, args: argparse.Namespace) -> str | None:
    """Why server `key` cannot run on this machine; None when it can."""
    if not key.startswith("kamailio"):
        return None
    if shutil.which(args.kamailio) is None:
        return f"{args.kamailio} not found"
    if key == "kamailio-sqlite":
        return kamailio_sqlite_missing()
    return None


def start_server(key: str, args: argparse.Namespace, work: Path, procs: Processes) -> Server:
    if key == "softswitch":
        return start_softswitch(args, work, procs)
    return start_kamailio(key, args, work, procs)


def start_softswitch(args: argparse.Namespace, work: Path, procs: Processes) -> Server:
    import yaml  # a dependency of the softswitch itself

    port, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    store = work / "softswitch.db"
    config = {
        "sip": {"listen": [{"transport": "udp", "address": HOST, "port": port}]},
        "security": {
            "auth_algorithms": ["MD5"],  # sipp answers only MD5
            "ban": {"failures": 1_000_000, "whitelist": ["127.0.0.0/8"]},
        },
        "http": {"listen": f"{HOST}:{http}"},
        "store": {"url": f"sqlite:///{store}"},  # absolute path: sqlite:////tmp/...
        "log": {"level": args.log_level, "format": "json"},
        "tenants": [
            {
                "name": "bench",
                "domain": DOMAIN,
                "users": [{"extension": u, "password": args.password} for u in args.user_list],
            }
        ],
    }
    path = work / "softswitch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = work / "softswitch.log"
    gc_file = work / "softswitch-gc.json" if args.gc_probe else None
    if gc_file is None:
        argv = [sys.executable, "-m", "switch.cli", "run", "-c", str(path)]
        proc = procs.start(argv, log)
    else:
        argv = [sys.executable, str(GC_PROBE), "run", "-c", str(path)]
        env = {"SOFTSWITCH_GC_PROBE": str(gc_file), "PYTHONPATH": str(ROOT)}
        proc = procs.start(argv, log, env)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    notes = [
        f"python {platform.python_version()}, {loop}, one process; "
        f"log.level={args.log_level} (JSON lines to a file)",
        "bindings: SQLite (WAL, synchronous=NORMAL), group commit before each 200 OK; "
        "server transaction per REGISTER",
    ]
    if gc_file is not None:
        notes.append(
            "started through bench/softswitch_gc_probe.py: a gc.callbacks timer, nothing else "
            "changed (--no-gc-probe to run switch.cli bare)"
        )
    return Server("softswitch", SERVERS["softswitch"], port, proc, log, notes, argv, gc_file)


def kamailio_sqlite_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")  # persistent in the file: db_sqlite keeps it
        for name in ("standard-create.sql", "usrloc-create.sql"):
            db.executescript((KAMAILIO_SQL / name).read_text())
    db.close()


def kamailio_sqlite_missing() -> str | None:
    if not (KAMAILIO_MODULES / "db_sqlite.so").exists():
        return "no db_sqlite module (apt-get install kamailio-sqlite-modules)"
    if not (KAMAILIO_SQL / "usrloc-create.sql").exists():
        return f"no {KAMAILIO_SQL}/usrloc-create.sql (apt-get install kamailio-sqlite-modules)"
    return None


def start_kamailio(key: str, args: argparse.Namespace, work: Path, procs: Processes) -> Server:
    port = free_port(socket.SOCK_DGRAM)
    rundir = work / f"{key}-run"
    rundir.mkdir()
    workers = 8 if key == "kamailio-8" else 1
    argv = [
        args.kamailio,
        "-f",
        str(KAMAILIO_CFG),
        "-DD",
        "-E",
        "-n",
        str(workers),
        "-l",
        f"udp:{HOST}:{port}",
        "-Y",
        str(rundir),
        "-m",
        "256",
        "-A",
        f'BENCH_PASSWORD="{args.password}"',
    ]
    notes = [
        f"{kamailio_version(args.kamailio)}; children={workers} "
        + ("(one UDP worker: one core, like softswitch)" if workers == 1 else "(all cores)"),
        "digest MD5 qop=auth, nonce_count replay check, auth user must be the To user; "
        "stateless replies (sl), no per-REGISTER log",
    ]
    if key == "kamailio-sqlite":
        db = work / "kamailio.db"
        kamailio_sqlite_db(db)
        argv += ["-A", "WITH_SQLITE", "-A", f'DBURL="sqlite://{db}"']
        notes.append(
            "usrloc db_mode=1: each binding written to SQLite (WAL, synchronous=FULL: "
            "db_sqlite's default, one fsync per REGISTER) before the 200 OK"
        )
    else:
        notes.append("usrloc db_mode=0: bindings in memory only (lost on restart)")
    log = work / f"{key}.log"
    proc = procs.start(argv, log)
    return Server(key, SERVERS[key], port, proc, log, notes, argv)


def kamailio_version(binary: str) -> str:
    try:
        text = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "kamailio (version unknown)"
    match = re.search(r"version: (kamailio [^ ]+)", text)
    return match.group(1) if match else "kamailio"
