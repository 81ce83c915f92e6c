#!/usr/bin/env python3
"""REGISTER-with-digest rate of the softswitch registrar, against Kamailio measured in the same run.

Starts each server on 127.0.0.1 with N users sharing one password, registers every user once
(warm-up), then drives it with sipp (bench/scenarios/register.xml: REGISTER -> 401 ->
REGISTER with Authorization -> 200) at stepped rates for a fixed time each, and reports the
highest rate that the server sustained with zero failed transactions, with the CPU it took.

A step passes when sipp reports no failed call, reached at least 95% of the target rate and
retransmitted at most 1% of its REGISTERs (a retransmission means an answer was 500 ms late:
the server is queueing, not keeping up). Rates double from --start-rate until a step fails,
then --refine bisection steps narrow the gap.

CPU is read from /proc/PID/stat (utime+stime of the server and every process it forked) over
the sipp run; sipp's own CPU from its rusage, to show whether the load generator was the limit.

Run from the repository root:  python bench/register_rate.py            (about 5 minutes)
                               python bench/register_rate.py --quick    (about 1 minute)
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "bench" / "scenarios" / "register.xml"
GC_PROBE = ROOT / "bench" / "softswitch_gc_probe.py"
KAMAILIO_CFG = ROOT / "bench" / "kamailio-registrar.cfg"
KAMAILIO_SQL = Path("/usr/share/kamailio/db_sqlite")
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
DOMAIN = "bench.example"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PASS_RATE_FRACTION = 0.95  # of the target rate, reached over the whole step
MAX_RETRANS_FRACTION = 0.01  # of the REGISTERs sent
GRACE_SECONDS = 3.0  # a step still running this long after its last call was due is overloaded
SETTLE_CPU_PERCENT = 5.0  # between steps, wait until the server is this idle
SIPP_BUFFER = 4 * 1024 * 1024
BUSY_OTHER_PERCENT = 20.0  # other CPU use (of one core) above which a step's figures are suspect

SERVERS = {
    "softswitch": "softswitch (this repo)",
    "kamailio": "Kamailio, usrloc in memory (db_mode=0), 1 worker",
    "kamailio-sqlite": "Kamailio, usrloc write-through to SQLite (db_mode=1), 1 worker",
    "kamailio-8": "Kamailio, usrloc in memory (db_mode=0), 8 workers (its default)",
}


def out(text: str = "") -> None:
    print(text, flush=True)


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


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stat_fields(path: Path) -> list[str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry / "stat")
            if fields is not None:
                children[int(fields[1])].append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of these processes (each summed over all its threads), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle on all cores since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # guest time is already counted in user
    return (sum(fields) - idle - guest) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, float]:
    result = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        fields = _stat_fields(task / "stat")
        if fields is not None:
            result[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return result


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


def sipp_version(binary: str) -> str:
    try:
        result = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return "sipp (version unknown)"
    match = re.search(r"SIPp (v[^\s-]+)", result.stdout + result.stderr)
    return f"sipp {match.group(1)}" if match else "sipp"


# -- one sipp run ------------------------------------------------------------------------------


@dataclass
class Step:
    target: int
    calls: int
    ok: int = 0
    failed: int = 0
    retrans: int = 0
    elapsed: float = 0.0
    response_ms: float = 0.0
    p99: str = "-"  # registration time bucket holding the 99th percentile, e.g. "<50"
    worst: str = "-"  # bucket of the slowest registration
    server_cpu: float = 0.0
    sipp_cpu: float = 0.0
    other_cpu: float = 0.0  # everything else the machine ran meanwhile (kernel, other processes)
    gc_seconds: float | None = None  # time in Python's garbage collector (softswitch, probed)
    gc_full: int = 0  # full (generation 2) collections
    gc_max: float = 0.0  # longest full collection, seconds
    threads: dict[str, float] = field(default_factory=dict)
    problem: str | None = None  # why the step failed; None when it passed

    @property
    def passed(self) -> bool:
        return self.problem is None

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def server_pct(self) -> float:
        return 100.0 * self.server_cpu / self.elapsed if self.elapsed else 0.0

    @property
    def sipp_pct(self) -> float:
        return 100.0 * self.sipp_cpu / self.elapsed if self.elapsed else 0.0

    @property
    def gc_pct(self) -> str:
        if self.gc_seconds is None or not self.elapsed:
            return "-"
        return f"{100.0 * self.gc_seconds / self.elapsed:.0f}"

    @property
    def gc_max_ms(self) -> str:
        if self.gc_seconds is None:
            return "-"
        return f"{1000.0 * self.gc_max:.0f}" if self.gc_full else "none"

    @property
    def other_pct(self) -> float:
        return 100.0 * self.other_cpu / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_ms_per_reg(self) -> float:
        return 1000.0 * self.server_cpu / self.ok if self.ok else float("nan")


def _sipp_duration(text: str) -> float:
    """sipp's HH:MM:SS:micro (or HH:MM:SS) as seconds."""
    parts = [float(p) for p in text.split(":")]
    seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds + (parts[3] / 1e6 if len(parts) > 3 else 0.0)


def read_sipp_stats(path: Path) -> dict[str, str]:
    try:
        rows = list(csv.reader(path.open(newline=""), delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def read_gc(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def gc_delta(
    step: Step,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    wall: tuple[float, float],
) -> None:
    if before is None or after is None:
        return
    young = sum(after["totals"][g]["seconds"] - before["totals"][g]["seconds"] for g in ("0", "1"))
    full = [took for at, took, _ in after["full"] if wall[0] <= at <= wall[1]]
    step.gc_seconds = young + sum(full)
    step.gc_full = len(full)
    step.gc_max = max(full, default=0.0)


def response_buckets(stats: dict[str, str]) -> tuple[str, str]:
    """(bucket of the 99th percentile, bucket of the slowest) from sipp's rtd histogram."""
    prefix = "ResponseTimeRepartition1_"
    buckets = [(k[len(prefix) :], int(v or 0)) for k, v in stats.items() if k.startswith(prefix)]
    total = sum(n for _, n in buckets)
    if not total:
        return "-", "-"
    seen, p99 = 0, "-"
    for name, n in buckets:
        seen += n
        if seen >= 0.99 * total:
            p99 = name
            break
    worst = [name for name, n in buckets if n][-1]
    return p99, worst


class Sipp:
    def __init__(self, args: argparse.Namespace, work: Path, procs: Processes) -> None:
        self.args = args
        self.work = work
        self.procs = procs
        self.local_port = free_port(socket.SOCK_DGRAM)  # fixed: each user keeps one Contact
        self.control_port = free_port(socket.SOCK_DGRAM)
        self.users_file = work / "users.csv"
        with self.users_file.open("w") as f:
            f.write("SEQUENTIAL\n")
            for user in args.user_list:
                password = args.password
                f.write(f"{user};{DOMAIN};[authentication username={user} password={password}]\n")
        self.runs = 0

    def argv(self, port: int, rate: int, calls: int, stat: Path, errors: Path) -> list[str]:
        timeout = int(calls / rate + GRACE_SECONDS + 30)
        # fmt: off
        return [
            self.args.sipp, f"{HOST}:{port}",
            "-sf", str(SCENARIO), "-inf", str(self.users_file),
            "-t", "u1", "-i", HOST, "-p", str(self.local_port), "-cp", str(self.control_port),
            # rate/1000 calls every millisecond: paced evenly, not in per-second bursts that
            # overflow a server's socket buffer while it still has CPU to spare.
            "-r", f"{rate / 1000:g}", "-rp", "1", "-m", str(calls), "-l", str(max(100, rate)),
            "-max_recv_loops", "10000", "-max_sched_loops", "10000",
            "-buff_size", str(SIPP_BUFFER), "-nostdin", "-timeout", f"{timeout}s",
            "-trace_stat", "-stf", str(stat), "-fd", "1", "-trace_err", "-error_file", str(errors),
        ]
        # fmt: on

    def run(self, server: Server, rate: int, seconds: float) -> Step:
        self.runs += 1
        calls = max(1, round(rate * seconds))
        name = f"{server.key}-{self.runs:03d}-{rate}"
        stat, errors = self.work / f"{name}.csv", self.work / f"{name}.errors"
        argv = self.argv(server.port, rate, calls, stat, errors)
        step = Step(target=rate, calls=calls)
        pids = server.pids()
        cpu0 = cpu_seconds(pids)
        busy0 = machine_busy_seconds()
        gc0, wall0 = read_gc(server.gc_file), time.time()
        threads0 = thread_cpu(server.proc.pid) if server.key == "softswitch" else {}
        start = time.monotonic()
        proc = self.procs.start(argv, self.work / f"{name}.out")
        deadline = start + calls / rate + GRACE_SECONDS
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                killed = True
                break
            time.sleep(0.05)
        step.elapsed = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.procs.running.remove(proc)
        step.server_cpu = cpu_seconds(pids) - cpu0
        step.sipp_cpu = usage.ru_utime + usage.ru_stime
        busy = machine_busy_seconds() - busy0
        step.other_cpu = max(0.0, busy - step.server_cpu - step.sipp_cpu)
        if server.gc_file is not None:
            time.sleep(1.0)  # the probe rewrites its totals at most once a second
            gc_delta(step, gc0, read_gc(server.gc_file), (wall0, wall0 + step.elapsed))
        if threads0:
            threads1 = thread_cpu(server.proc.pid)
            main = server.proc.pid
            step.threads = {
                "event loop": threads1.get(main, 0.0) - threads0.get(main, 0.0),
                "other threads": sum(
                    v - threads0.get(t, 0.0) for t, v in threads1.items() if t != main
                ),
            }
        stats = read_sipp_stats(stat)
        step.ok = int(stats.get("SuccessfulCall(C)", 0) or 0)
        step.failed = int(stats.get("FailedCall(C)", 0) or 0)
        step.retrans = int(stats.get("Retransmissions(C)", 0) or 0)
        if stats.get("ResponseTime1(C)"):
            step.response_ms = 1000.0 * _sipp_duration(stats["ResponseTime1(C)"])
        step.p99, step.worst = response_buckets(stats)
        if killed:
            created = int(stats.get("OutgoingCall(C)", 0) or 0)
            step.problem = (
                f"overloaded: {created - step.ok - step.failed} calls still open "
                f"{GRACE_SECONDS:.0f} s after the last was due (sipp stopped)"
            )
        elif step.failed:
            step.problem = f"{step.failed} failed calls"
        elif step.ok < calls:
            step.problem = f"sipp exited with {step.ok}/{calls} calls done (rc {proc.returncode})"
        elif step.rate < PASS_RATE_FRACTION * rate:
            step.problem = f"reached only {step.rate:.0f}/s"
        elif step.retrans > MAX_RETRANS_FRACTION * 2 * calls:
            step.problem = f"{step.retrans} retransmissions (server answers > 500 ms late)"
        if not server.alive():
            step.problem = f"server exited (rc {server.proc.returncode}); see {server.log}"
        return step


def settle(server: Server, limit: float = 15.0) -> None:
    """Wait until the server has worked off any backlog (its CPU use drops to idle)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and server.alive():
        pids = server.pids()
        before = cpu_seconds(pids)
        time.sleep(0.5)
        if 100.0 * (cpu_seconds(pids) - before) / 0.5 < SETTLE_CPU_PERCENT:
            return


# -- search ------------------------------------------------------------------------------------


@dataclass
class Result:
    server: Server
    steps: list[Step]
    best: Step | None
    first_fail: Step | None
    limited_by: str
    profile: str | None = None


ROW = (
    "  "
    + " ".join(f"{{:>{width}}}" for width in (8, 8, 9, 6, 6, 7, 6, 5, 6, 7, 7, 5, 5, 4, 5))
    + "  {}"
)


def print_step_header() -> None:
    out(
        ROW.format(
            "target/s",
            "REG/s",
            "SIP req/s",
            "ok",
            "failed",
            "retrans",
            "reg ms",
            "p99",
            "worst",
            "srv CPU",
            "ms CPU/",
            "sipp",
            "other",
            "GC",
            "GC",
            "verdict",
        )
    )
    out(
        ROW.format(
            "",
            "(auth'd)",
            "(2x)",
            "",
            "",
            "",
            "mean",
            "ms",
            "ms",
            "% core",
            "REG",
            "CPU%",
            "CPU%",
            "%",
            "max",
            "",
        )
    )


def print_step(step: Step, verdict: str | None = None) -> None:
    if verdict is None:
        verdict = "pass" if step.passed else f"FAIL: {step.problem}"
    out(
        ROW.format(
            step.target,
            f"{step.rate:.0f}",
            f"{2 * step.rate:.0f}",
            step.ok,
            step.failed,
            step.retrans,
            _ms(step.response_ms),
            step.p99,
            step.worst,
            f"{step.server_pct:.0f}",
            f"{step.cpu_ms_per_reg:.3f}",
            f"{step.sipp_pct:.0f}",
            f"{step.other_pct:.0f}",
            step.gc_pct,
            step.gc_max_ms,
            verdict,
        )
    )


def _ms(value: float) -> str:
    # sipp measures in whole milliseconds: a mean of 0 means under a millisecond.
    return "<1" if value < 1 else f"{value:.0f}"


def round_rate(value: float) -> int:
    unit = 25 if value < 2000 else 100 if value < 10000 else 500
    return max(unit, round(value / unit) * unit)


def search(server: Server, sipp: Sipp, args: argparse.Namespace) -> Result:
    steps: list[Step] = []
    best: Step | None = None
    first_fail: Step | None = None

    def measure(rate: int) -> Step:
        for attempt in range(1 + args.busy_retries):
            if attempt:
                wait_quiet(max(args.wait_quiet, 30.0))
            settle(server)
            step = sipp.run(server, rate, args.duration)
            if step.other_pct < BUSY_OTHER_PERCENT or attempt == args.busy_retries:
                break
            print_step(
                step, f"(not counted: other work took {step.other_pct:.0f}% of a core; again)"
            )
        steps.append(step)
        print_step(step)
        return step

    rate = args.start_rate
    while rate <= args.max_rate:
        step = measure(rate)
        if not step.passed:
            first_fail = step
            break
        best = step
        if rate == args.max_rate:
            break
        rate = min(rate * 2, args.max_rate)
    hi = first_fail.target if first_fail else None
    for _ in range(args.refine):
        if hi is None or not server.alive():
            break
        lo = best.target if best else 0
        mid = round_rate((lo + hi) / 2)
        if mid <= lo or mid >= hi:
            break
        step = measure(mid)
        if step.passed:
            best = step
        else:
            hi = mid
            first_fail = step
    return Result(server, steps, best, first_fail, limited_by(best, first_fail, args))


def limited_by(best: Step | None, fail: Step | None, args: argparse.Namespace) -> str:
    if fail is None:
        return f"not reached: every step passed up to --max-rate {args.max_rate}"
    causes = []
    if fail.sipp_pct >= 90:
        causes.append(f"load generator (sipp at {fail.sipp_pct:.0f}% of a core)")
    if fail.server_pct >= 90:
        causes.append(f"server CPU ({fail.server_pct:.0f}% of a core)")
    if fail.gc_full and fail.gc_max >= 0.2:
        causes.append(
            f"full GC pauses ({fail.gc_full}, up to {1000 * fail.gc_max:.0f} ms: answers late "
            "past sipp's 500 ms retransmit timer)"
        )
    if fail.other_pct >= BUSY_OTHER_PERCENT:
        causes.append(f"other work on the machine ({fail.other_pct:.0f}% of a core)")
    if not causes:
        causes.append(
            f"latency/drops (server {fail.server_pct:.0f}%, sipp {fail.sipp_pct:.0f}% CPU)"
        )
    return f"at {fail.target}/s: " + "; ".join(causes)


# -- profile -----------------------------------------------------------------------------------


def profile_step(server: Server, sipp: Sipp, rate: int, args: argparse.Namespace) -> str:
    """One more step at `rate` with py-spy sampling the daemon; returns a text summary."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "py-spy not found (pip install py-spy); no profile"
    raw = Path(args.profile).resolve()
    seconds = max(3, int(args.duration))
    settle(server)
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(server.proc.pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--threads",
            "--duration",
            str(seconds + 1),
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sipp.procs.running.append(spy)
    time.sleep(0.5)  # py-spy attaches
    step = sipp.run(server, rate, seconds)
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(timeout=seconds + 30)
    sipp.procs.stop(spy)
    lines = [
        f"py-spy profile of softswitch at {rate} REGISTER/s for {seconds} s "
        f"(achieved {step.rate:.0f}/s, server {step.server_pct:.0f}% CPU; "
        f"{'pass' if step.passed else 'FAIL: ' + str(step.problem)}), 200 samples/s, "
        f"idle time not sampled. Collapsed stacks: {raw}",
    ]
    lines += summarize_collapsed(raw)
    return "\n".join(lines)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

AREAS = [
    ("switch/sip/", "switch.sip (parse, headers, transactions, digest)"),
    ("switch/", "switch (endpoint, registrar, location, transport)"),
    ("structlog", "structlog (logging)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("aiosqlite", "aiosqlite"),
    ("sqlite3", "sqlite3"),
    ("prometheus_client", "prometheus_client"),
    ("uvloop", "uvloop / asyncio"),
    ("asyncio", "uvloop / asyncio"),
    ("email/", "email.utils (Date header)"),
    ("hashlib", "hashlib"),
    ("json", "json (log rendering)"),
    ("threading", "threading"),
    ("queue.py", "threading"),
    ("dataclasses", "dataclasses"),
]


def _area(file: str) -> str:
    for needle, name in AREAS:
        if needle in file:
            return name
    return "other: " + (Path(file).name or "?")


def summarize_collapsed(path: Path, top: int = 25, rate: int = 200) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        return [f"(no profile: {exc})"]
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stacks: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else ""
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        if not frames:
            continue
        total += count
        stacks[stack] += count
        threads[thread or "?"] += count
        leaf = _FRAME.match(frames[-1])
        leaf_file = leaf.group("file") if leaf else frames[-1]
        self_time[_short(frames[-1])] += count
        areas[_area(leaf_file)] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
    if not total:
        return ["(profile holds no samples)"]
    lines = [f"  {total} samples", "  threads (share of samples):"]
    for name, count in threads.most_common():
        lines.append(f"    {100 * count / total:5.1f}%  {name}")
    lines.append("  self time by area (where the leaf frame is):")
    for name, count in areas.most_common(12):
        lines.append(f"    {100 * count / total:5.1f}%  {name}")
    lines.append(f"  top {top} functions by self time:")
    for name, count in self_time.most_common(top):
        lines.append(f"    {100 * count / total:5.1f}%  {name}")
    lines.append(f"  top {top} functions by inclusive time (self + callees):")
    for name, count in inclusive.most_common(top):
        lines.append(f"    {100 * count / total:5.1f}%  {name}")
    lines.append(
        "  heaviest single stacks (a full GC pause is charged whole to the line that was "
        "allocating when it began: one Python stack holding hundreds of ms; a thread blocked in "
        "C code, e.g. aiosqlite's queue.get or uvloop's poll, also collects samples here):"
    )
    for stack, count in stacks.most_common(3):
        frames = [f for f in stack.split(";") if not f.startswith(("thread", "process"))]
        where = " <- ".join(_short(f) for f in reversed(frames[-3:]))
        lines.append(f"    {100 * count / total:5.1f}%  {1000 * count / rate:.0f} ms  {where}")
    return lines


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = file.replace(str(ROOT) + "/", "")
    return f"{match.group('func')} ({file})"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000, help="extensions (default 1000)")
    parser.add_argument("--password", default="bench-Secret-42", help="every user's password")
    parser.add_argument(
        "--duration",
        type=float,
        default=8.0,
        help="seconds of traffic per step (default 8; --quick 3)",
    )
    parser.add_argument("--start-rate", type=int, default=500, help="first step, REGISTER/s")
    parser.add_argument("--max-rate", type=int, default=16000, help="highest step, REGISTER/s")
    parser.add_argument(
        "--refine",
        type=int,
        default=3,
        help="bisection steps after the first failure (default 3; --quick 1)",
    )
    parser.add_argument(
        "--servers",
        default="softswitch,kamailio,kamailio-sqlite",
        help="comma list of: " + ", ".join(SERVERS) + " (default: the first three; "
        "kamailio-8 = Kamailio with its default 8 workers)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about 1 minute: --duration 3 --refine 1, softswitch + kamailio",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="softswitch log.level (default info: its default, one line per REGISTER)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="after the search, profile softswitch with py-spy for one more step at "
        "its best rate; collapsed stacks go to FILE, a summary is printed",
    )
    parser.add_argument(
        "--no-gc-probe",
        dest="gc_probe",
        action="store_false",
        help="run softswitch bare, without bench/softswitch_gc_probe.py (no GC columns)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before starting, wait up to this long for other work on the machine "
        f"to drop below {BUSY_OTHER_PERCENT:.0f}%% of a core (default 0)",
    )
    parser.add_argument(
        "--busy-retries",
        type=int,
        default=1,
        metavar="N",
        help=f"repeat a step that ran while other work took >= {BUSY_OTHER_PERCENT:.0f}%% of a "
        "core, up to N times, after waiting up to 30 s for quiet (default 1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, csv)")
    parser.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    parser.add_argument("--kamailio", default=shutil.which("kamailio") or "/usr/sbin/kamailio")
    parser.add_argument("-v", "--verbose", action="store_true", help="print server/sipp commands")
    args = parser.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        if "--duration" not in given:
            args.duration = 3.0
        if "--refine" not in given:
            args.refine = 1
        if "--servers" not in given:
            args.servers = "softswitch,kamailio"
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.server_list if s not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; expected some of {list(SERVERS)}")
    args.user_list = bench_users(args.users)
    return args


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    command = shlex.join(["python", "bench/register_rate.py", *given])
    if shutil.which(args.sipp) is None:
        out(f"error: {args.sipp} not found (sipp 3.x is the load generator)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="register-rate-"))
    procs = Processes()

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    # Ctrl-C even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    failed = False
    try:
        print_preamble(args)
        busy = wait_quiet(args.wait_quiet)
        out(
            f"  other work on the machine before start: {busy:.0f}% of a core"
            + ("  ** busy: figures will be perturbed **" if busy >= BUSY_OTHER_PERCENT else "")
        )
        sipp = Sipp(args, work, procs)
        results: list[Result] = []
        skipped: list[str] = []
        for key in args.server_list:
            why = unavailable(key, args)
            if why:
                skipped.append(f"{key}: {why}")
                continue
            result = bench_server(key, args, work, procs, sipp)
            if result is None or not result.server.alive():
                failed = True
            if result is not None:
                results.append(result)
                procs.stop(result.server.proc)
        summary(results, skipped, args)
        for result in results:
            if result.profile:
                out()
                out(result.profile)
        out()
        kept = args.keep or failed
        out(
            f"  total bench time {time.monotonic() - began:.0f} s; work directory {work}"
            + ("" if kept else " (removed)")
        )
        out(f"  reproduce: cd {ROOT} && {command}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        out("\ninterrupted; stopping servers")
        return 130
    finally:
        procs.stop_all()
        if not (args.keep or failed):
            shutil.rmtree(work, ignore_errors=True)


def print_preamble(args: argparse.Namespace) -> None:
    out("REGISTER rate with digest auth: softswitch vs Kamailio, same sipp scenario, same run")
    out(
        f"  machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"Linux {platform.release()}"
    )
    out(
        f"  load: {sipp_version(args.sipp)} over UDP on {HOST}, one socket (-t u1), "
        f"scenario {SCENARIO.relative_to(ROOT)}: REGISTER -> 401 -> REGISTER+auth -> 200"
    )
    out(
        f"  users: {args.users} extensions @{DOMAIN}, one shared password, injection file "
        "cycled in order; one Contact per user (fixed sipp port)"
    )
    out(
        f"  steps: {args.duration:g} s each, from {args.start_rate}/s doubling to at most "
        f"{args.max_rate}/s, then {args.refine} bisection step(s); every user registered "
        "once before the first step"
    )
    out(
        f"  a step passes with 0 failed calls, >= {PASS_RATE_FRACTION:.0%} of the target "
        f"rate reached, <= {MAX_RETRANS_FRACTION:.0%} REGISTERs retransmitted"
    )
    out(
        "  REG/s = completed digest registrations per second (sipp successful calls); "
        "each is 2 SIP requests"
    )
    out(
        "  CPU: server = utime+stime of all its processes/threads from /proc over the step, "
        "in % of one core; sipp from its rusage; other = the rest of the machine"
    )


def unavailable(key: str, args: argparse.Namespace) -> str | None:
    if not key.startswith("kamailio"):
        return None
    if shutil.which(args.kamailio) is None:
        return f"{args.kamailio} not found"
    if key == "kamailio-sqlite":
        return kamailio_sqlite_missing()
    return None


def bench_server(
    key: str, args: argparse.Namespace, work: Path, procs: Processes, sipp: Sipp
) -> Result | None:
    """Start one server, warm it up, search its rate; None if it never got going."""
    out()
    if key == "softswitch":
        server = start_softswitch(args, work, procs)
    else:
        server = start_kamailio(key, args, work, procs)
    out(f"== {server.title}")
    for note in server.notes:
        out(f"   {note}")
    if args.verbose:
        out(f"   server: {shlex.join(server.argv)}")
        example = sipp.argv(server.port, 1000, 8000, work / "STEP.csv", work / "STEP.errors")
        out(f"   sipp (a 1000/s step): {shlex.join(example)}")
    if not options_probe(server.port, 20.0):
        out(f"   no answer to OPTIONS within 20 s; {server.log}:")
        out(tail(server.log))
        procs.stop(server.proc)
        return None
    rate = min(500, args.start_rate)
    warm = sipp.run(server, rate, args.users / rate)
    if not warm.passed:
        out(f"   warm-up (every user registered once at {rate}/s) failed: {warm.problem}")
        out(tail(server.log))
        procs.stop(server.proc)
        return None
    print_step_header()
    result = search(server, sipp, args)
    if args.profile and key == "softswitch" and server.alive():
        best = result.best.target if result.best else args.start_rate
        result.profile = profile_step(server, sipp, best, args)
    if not server.alive():
        out(f"   server exited (rc {server.proc.returncode}); {server.log}:")
        out(tail(server.log))
    return result


def summary(results: list[Result], skipped: list[str], args: argparse.Namespace) -> None:
    out()
    out("== Highest sustained REGISTER rate with zero failed transactions")
    fmt = "  {:<62} {:>6} {:>9} {:>7} {:>7} {:>5} {:>6} {:>5}"
    out(fmt.format("server", "REG/s", "SIP req/s", "srv CPU", "ms CPU/", "sipp", "reg ms", "p99"))
    out(fmt.format("", "", "", "% core", "REG", "CPU%", "mean", "ms"))
    for r in results:
        b = r.best
        if b is None:
            out(fmt.format(r.server.title, f"<{args.start_rate}", "-", "-", "-", "-", "-", "-"))
        else:
            out(
                fmt.format(
                    r.server.title,
                    f"{b.rate:.0f}",
                    f"{2 * b.rate:.0f}",
                    f"{b.server_pct:.0f}",
                    f"{b.cpu_ms_per_reg:.3f}",
                    f"{b.sipp_pct:.0f}",
                    _ms(b.response_ms),
                    b.p99,
                )
            )
    out("  limited by (the first failing step above the result):")
    for r in results:
        out(f"    {r.server.key:<16} {r.limited_by}")
    for line in skipped:
        out(f"  skipped {line}")
    ours = next((r for r in results if r.server.key == "softswitch"), None)
    if ours and ours.best:
        b = ours.best
        if b.threads:
            total = sum(b.threads.values()) or 1.0
            out(
                f"  softswitch CPU at its result: event-loop thread "
                f"{100 * b.threads['event loop'] / total:.0f}%, other threads (the aiosqlite "
                f"writer) {100 * b.threads['other threads'] / total:.0f}%"
            )
        if b.gc_seconds is not None:
            out(
                f"  softswitch garbage collector at its result: {b.gc_pct}% of the step's wall "
                f"time, {b.gc_full} full collection(s)"
                + (f", longest {b.gc_max_ms} ms" if b.gc_full else "")
            )
    refs = [r for r in results if r.server.key != "softswitch"]
    if ours and ours.best and refs:
        out()
        out("== softswitch / reference (same run, same scenario, same users, same steps)")
        for r in refs:
            if r.best is None:
                out(f"  vs {r.server.key}: no passing step, no ratio")
                continue
            rate_ratio = ours.best.rate / r.best.rate
            cpu_ratio = ours.best.cpu_ms_per_reg / r.best.cpu_ms_per_reg
            out(f"  vs {r.server.title}:")
            out(
                f"     rate {ours.best.rate:.0f} / {r.best.rate:.0f} REG/s = {rate_ratio:.3f}"
                f"  (1 : {1 / rate_ratio:.1f})"
            )
            out(
                f"     CPU per registration {ours.best.cpu_ms_per_reg:.3f} / "
                f"{r.best.cpu_ms_per_reg:.3f} ms = {cpu_ratio:.1f}x"
            )
            if r.first_fail and r.first_fail.sipp_pct >= 90:
                out(
                    "     the reference was limited by sipp: its own limit is higher, so the rate "
                    "ratio flatters softswitch"
                )
    counted = [s for r in results for s in r.steps]
    busy = [s for s in counted if s.other_pct >= BUSY_OTHER_PERCENT]
    if busy:
        out()
        out(
            f"  ** {len(busy)} of {len(counted)} steps ran while other work on the machine used "
            f">= {BUSY_OTHER_PERCENT:.0f}% of a core (column 'other'): those figures are "
            "perturbed; rerun on a quiet machine (--wait-quiet 300) **"
        )
    out()
    out("== Caveats")
    caveats = [
        "Durability differs. softswitch commits every binding to SQLite before its 200 OK (group "
        "commit: one transaction for all REGISTERs that arrived during the previous commit; WAL, "
        "synchronous=NORMAL). Kamailio with db_mode=0 keeps bindings in memory only: a restart "
        "loses them.",
        "kamailio-sqlite (usrloc db_mode=1, write-through) is the like-for-like reference: each "
        "binding is in SQLite before the reply, one transaction per REGISTER, synchronous=FULL "
        "(an fsync per commit; db_sqlite cannot lower it), no group commit.",
        "Kamailio answers REGISTER statelessly (sl, as its default config does); softswitch keeps "
        "an RFC 3261 server transaction per request (answering retransmissions for 32 s) and, at "
        f"log.level={args.log_level}, writes a JSON log line per registration"
        + ("" if args.log_level == "info" else " only at info")
        + "; Kamailio logs nothing per "
        "REGISTER.",
        "One shared password: Kamailio checks no user list (pv_auth_check against a constant); "
        "softswitch looks the user up in its configuration. Both check digest, nonce age, "
        "nonce-count and that the auth username is the To user.",
        "softswitch's CPU per registration falls as the rate rises (more REGISTERs per event-loop "
        "wake-up and per group commit), so compare CPU/REG at similar rates, not only at each "
        "server's maximum.",
        "sipp and the server share the machine; a server limited by sipp (its CPU near 100%) is "
        "faster than shown.",
    ]
    for caveat in caveats:
        out(_wrap(caveat))


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(text, width, initial_indent="  * ", subsequent_indent="    ")


def wait_quiet(limit: float) -> float:
    """Other CPU use on the machine, in % of one core, waiting up to `limit` s for it to drop."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = 100.0 * (machine_busy_seconds() - before)
        if busy < BUSY_OTHER_PERCENT or time.monotonic() >= deadline:
            return busy
        out(f"  waiting for the machine to be quiet (other work: {busy:.0f}% of a core)")
        time.sleep(4.0)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "   (no log)"
    return "\n".join("   | " + line for line in text[-lines:])


if __name__ == "__main__":
    sys.exit(main())
