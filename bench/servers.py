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
import functools
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
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` with its output in `log`; `cpus`: the only cores it (and all its
        threads and children) may run on, like `taskset -c`."""
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=None if cpus is None else functools.partial(_pin, cpus),
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


def _pin(cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)


def split_cores(server_core: int | None) -> tuple[set[int] | None, set[int] | None]:
    """(the server's core, the load generator's cores): the server alone on one core (the last
    by default), sipp on the others; (None, None) on a one-core machine."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    core = cores[-1] if server_core is None else server_core
    if core not in cores:
        raise SystemExit(f"--server-core {core}: not one of this process's cores {cores}")
    return {core}, set(cores) - {core}


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
        server = start_softswitch(args, work, procs)
        server.notes.append(
            "bindings: SQLite (WAL, synchronous=NORMAL), group commit before each 200 OK; "
            "server transaction per REGISTER"
        )
        return server
    return start_kamailio(key, args, work, procs)


def start_softswitch(
    args: argparse.Namespace,
    work: Path,
    procs: Processes,
    *,
    key: str = "softswitch",
    title: str | None = None,
    users: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    cpus: set[int] | None = None,
) -> Server:
    """softswitch with the bench config (its users all with --password); `overrides` replace
    whole top-level sections of it (e.g. ``{"media": {"relay": False}}``)."""
    import yaml  # a dependency of the softswitch itself

    port, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    store = work / f"{key}.db"
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
                "users": [
                    {"extension": u, "password": args.password}
                    for u in (args.user_list if users is None else users)
                ],
            }
        ],
        **(overrides or {}),
    }
    path = work / f"{key}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = work / f"{key}.log"
    gc_file = work / f"{key}-gc.json" if args.gc_probe else None
    if gc_file is None:
        argv = [sys.executable, "-m", "switch.cli", "run", "-c", str(path)]
        proc = procs.start(argv, log, cpus=cpus)
    else:
        argv = [sys.executable, str(GC_PROBE), "run", "-c", str(path)]
        env = {"SOFTSWITCH_GC_PROBE": str(gc_file), "PYTHONPATH": str(ROOT)}
        proc = procs.start(argv, log, env, cpus=cpus)
    notes = [
        f"python {platform.python_version()}, {event_loop()}, one process"
        + (f" pinned to core {min(cpus)}" if cpus else "")
        + f"; log.level={args.log_level} (JSON lines to a file)",
    ]
    if gc_file is not None:
        notes.append(
            "started through bench/softswitch_gc_probe.py: a gc.callbacks timer, nothing else "
            "changed (--no-gc-probe to run switch.cli bare)"
        )
    title = title or SERVERS["softswitch"]
    return Server(key, title, port, proc, log, notes, argv, gc_file)


def event_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


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


# -- sippy's B2BUA -----------------------------------------------------------------------------


SIPPY_PIP = "pip install sippy==2.5.0"


def sippy_missing(python: str) -> str | None:
    """Why `python` cannot run sippy's B2BUA; None when it can."""
    try:
        done = subprocess.run(
            [python, "-c", "import sippy.b2bua"], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        return f"{python}: {exc}"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"sippy is not importable by {python} ({last}); {SIPPY_PIP} into it, or give "
            "--sippy-python /path/to/a/venv/bin/python that has it"
        )
    return None


def sippy_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('sippy'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return f"sippy {done.stdout.strip() or '(version unknown)'}"


def start_sippy(
    args: argparse.Namespace, work: Path, procs: Processes, uas_port: int, cpus: set[int] | None
) -> Server:
    """sippy's B2BUA (`python -m sippy.b2bua`, the `b2bua` script) in the foreground, every
    call routed to the UAS at `uas_port`, no RADIUS authentication or accounting."""
    port = free_port(socket.SOCK_DGRAM)
    argv = [
        args.sippy_python,
        "-m",
        "sippy.b2bua",
        "-f",  # foreground: no daemonising, no pid file
        "-l",
        HOST,
        "-p",
        str(port),
        "--auth_enable=off",
        "--acct_enable=off",
        f"--static_route={HOST}:{uas_port}",
        "-c",
        str(work / "sippy-b2bua.sock"),  # its command socket
    ]
    # sippy logs every SIP message at its default level; SIPLOG_BEND=none turns that off
    # (--sippy-log keeps it, written to a file by its own logger thread).
    logged = args.sippy_log
    env = (
        {"SIPLOG_BEND": "file", "SIPLOG_LOGFILE_FILE": str(work / "sippy-sip.log")}
        if logged
        else {"SIPLOG_BEND": "none"}
    )
    log = work / "sippy.log"
    proc = procs.start(argv, log, env, cpus=cpus)
    notes = [
        f"{sippy_version(args.sippy_python)} on python "
        f"{python_version(args.sippy_python)}, its own event loop and sender threads, "
        + (f"pinned to core {min(cpus)}" if cpus else "not pinned"),
        "--auth_enable=off --acct_enable=off --static_route=<the UAS>: no RADIUS, every INVITE "
        "to the one callee; no media relay (SDP end to end); "
        + ("logs every SIP message to a file" if logged else "SIP log off (SIPLOG_BEND=none)"),
    ]
    return Server("sippy", "sippy B2BUA (PyPI sippy)", port, proc, log, notes, argv)


def python_version(python: str) -> str:
    code = "import platform; print(platform.python_version())"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"
