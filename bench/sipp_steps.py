"""Load steps driven by sipp: one step at a target rate, the pass/fail rule, and the search for
the highest rate a server sustains.

- `Sipp.run(server, rate, seconds)`: one sipp run of a scenario at `rate` calls/s, paced every
  millisecond, returning a `Step` with sipp's counts and latency buckets (its -trace_stat CSV),
  the CPU of the server, of sipp and of everything else on the machine over the step, and the
  server's garbage-collection time when it runs under bench/softswitch_gc_probe.py;
- `judge(...)`: the pass/fail rule (no failed call, at least 95% of the target rate, at most 1%
  of requests retransmitted, finished within 3 s of the last call being due);
- `search(...)`: rates doubling from --start-rate until a step fails, then --refine bisection
  steps; a step that ran while the machine was busy is repeated (--busy-retries);
  `limited_by(...)` says what stopped the server.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procstat import (
    BUSY_OTHER_PERCENT,
    cpu_seconds,
    machine_busy_seconds,
    main_and_other_threads,
    thread_cpu,
    wait_quiet,
)
from servers import DOMAIN, HOST, Processes, Server, free_port

PASS_RATE_FRACTION = 0.95  # of the target rate, reached over the whole step
MAX_RETRANS_FRACTION = 0.01  # of the requests sent
GRACE_SECONDS = 3.0  # a step still running this long after its last call was due is overloaded
SIPP_BUFFER = 4 * 1024 * 1024


@dataclass
class Step:
    target: int
    calls: int
    ok: int = 0
    failed: int = 0
    retrans: int = 0
    elapsed: float = 0.0
    hold: float = 0.0  # seconds each call spends in the scenario's pauses (talk time)
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
        # The last call started `hold` seconds before it could end: not time the server was
        # slow, so not counted against its rate.
        span = self.elapsed - self.hold
        return self.ok / span if span > 0 else 0.0

    @property
    def server_pct(self) -> float:
        return self._pct(self.server_cpu)

    @property
    def sipp_pct(self) -> float:
        return self._pct(self.sipp_cpu)

    @property
    def other_pct(self) -> float:
        return self._pct(self.other_cpu)

    def _pct(self, seconds: float) -> float:
        """CPU seconds over the step in % of one core."""
        return 100.0 * seconds / self.elapsed if self.elapsed else 0.0

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
    def cpu_ms_per_call(self) -> float:
        """Server CPU milliseconds per completed sipp call (a registration, a phone call)."""
        return 1000.0 * self.server_cpu / self.ok if self.ok else float("nan")


# -- sipp's statistics -------------------------------------------------------------------------


def _sipp_duration(text: str) -> float:
    """sipp's HH:MM:SS:micro (or HH:MM:SS) as seconds."""
    parts = [float(p) for p in text.split(":")]
    seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds + (parts[3] / 1e6 if len(parts) > 3 else 0.0)


def read_sipp_stats(path: Path) -> dict[str, str]:
    """The last row of sipp's -trace_stat CSV (cumulative counters), by column name."""
    try:
        rows = list(csv.reader(path.open(newline=""), delimiter=";"))
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def stat_count(stats: dict[str, str], column: str) -> int:
    return int(stats.get(column, 0) or 0)


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


def sipp_version(binary: str) -> str:
    try:
        result = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    except OSError:
        return "sipp (version unknown)"
    match = re.search(r"SIPp (v[^\s-]+)", result.stdout + result.stderr)
    return f"sipp {match.group(1)}" if match else "sipp"


# -- the GC probe's file (bench/softswitch_gc_probe.py) ----------------------------------------


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


# -- one step ----------------------------------------------------------------------------------


def judge(step: Step, requests_per_call: int, killed: bool, created: int, rc: int) -> str | None:
    """Why a finished step failed, or None when it passed: the pass/fail rule."""
    if killed:
        return (
            f"overloaded: {created - step.ok - step.failed} calls still open "
            f"{GRACE_SECONDS:.0f} s after the last was due (sipp stopped)"
        )
    if step.failed:
        return f"{step.failed} failed calls"
    if step.ok < step.calls:
        return f"sipp exited with {step.ok}/{step.calls} calls done (rc {rc})"
    if step.rate < PASS_RATE_FRACTION * step.target:
        return f"reached only {step.rate:.0f}/s"
    if step.retrans > MAX_RETRANS_FRACTION * requests_per_call * step.calls:
        return f"{step.retrans} retransmissions (server answers > 500 ms late)"
    return None


class Sipp:
    """sipp driving `scenario` (`requests_per_call` requests each) from one UDP socket and port,
    cycling in order through an injection file of `users` (default: the bench's --users):
    USER;DOMAIN;[authentication username=USER password=PASS].

    `extra` is added to every command line (e.g. ``-key callee 200000``); `helpers` are
    long-running processes of the load generator (a sipp UAS) whose CPU counts as sipp's;
    `before` run before each step starts (a UAS finishing what an earlier step left);
    `checks` see each finished step and may fail it (a problem the UAS saw)."""

    def __init__(
        self,
        args: argparse.Namespace,
        work: Path,
        procs: Processes,
        scenario: Path,
        requests_per_call: int,
        *,
        users: list[str] | None = None,
        extra: list[str] | None = None,
        local_port: int | None = None,
        name: str = "users",
    ) -> None:
        self.args = args
        self.work = work
        self.procs = procs
        self.scenario = scenario
        self.requests_per_call = requests_per_call
        self.extra = extra or []
        self.helpers: list[Callable[[], list[int]]] = []
        self.before: list[Callable[[], None]] = []
        self.checks: list[Callable[[Step], str | None]] = []
        self.cpus: set[int] | None = None  # the cores sipp runs on (the server has its own)
        self.hold = 0.0  # seconds of pauses in each call of the scenario
        # fixed: each user keeps one Contact
        self.local_port = local_port or free_port(socket.SOCK_DGRAM)
        self.control_port = free_port(socket.SOCK_DGRAM)
        self.users_file = work / f"{name}.csv"
        with self.users_file.open("w") as f:
            f.write("SEQUENTIAL\n")
            for user in args.user_list if users is None else users:
                password = args.password
                f.write(f"{user};{DOMAIN};[authentication username={user} password={password}]\n")
        self.runs = 0

    def argv(self, port: int, rate: int, calls: int, stat: Path, errors: Path) -> list[str]:
        timeout = int(calls / rate + self.hold + GRACE_SECONDS + 30)
        # fmt: off
        return [
            self.args.sipp, f"{HOST}:{port}",
            "-sf", str(self.scenario), "-inf", str(self.users_file),
            "-t", "u1", "-i", HOST, "-p", str(self.local_port), "-cp", str(self.control_port),
            # rate/1000 calls every millisecond: paced evenly, not in per-second bursts that
            # overflow a server's socket buffer while it still has CPU to spare.
            "-r", f"{rate / 1000:g}", "-rp", "1", "-m", str(calls), "-l", str(max(100, rate)),
            "-max_recv_loops", "10000", "-max_sched_loops", "10000",
            "-buff_size", str(SIPP_BUFFER), "-nostdin", "-timeout", f"{timeout}s",
            "-trace_stat", "-stf", str(stat), "-fd", "1", "-trace_err", "-error_file", str(errors),
            *self.extra,
        ]
        # fmt: on

    def run(self, server: Server, rate: int, seconds: float) -> Step:
        for prepare in self.before:
            prepare()
        self.runs += 1
        calls = max(1, round(rate * seconds))
        name = f"{server.key}-{self.runs:03d}-{rate}"
        stat, errors = self.work / f"{name}.csv", self.work / f"{name}.errors"
        argv = self.argv(server.port, rate, calls, stat, errors)
        step = Step(target=rate, calls=calls, hold=self.hold)
        pids = server.pids()
        cpu0 = cpu_seconds(pids)
        helpers = [pid for helper in self.helpers for pid in helper()]
        helpers0 = cpu_seconds(helpers)
        busy0 = machine_busy_seconds()
        gc0, wall0 = read_gc(server.gc_file), time.time()
        threads0 = thread_cpu(server.proc.pid)
        start = time.monotonic()
        proc = self.procs.start(argv, self.work / f"{name}.out", cpus=self.cpus)
        deadline = start + calls / rate + self.hold + GRACE_SECONDS
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
        self.procs.reaped(proc)
        step.server_cpu = cpu_seconds(pids) - cpu0
        step.sipp_cpu = usage.ru_utime + usage.ru_stime + cpu_seconds(helpers) - helpers0
        busy = machine_busy_seconds() - busy0
        step.other_cpu = max(0.0, busy - step.server_cpu - step.sipp_cpu)
        if server.gc_file is not None:
            time.sleep(1.0)  # the probe rewrites its totals at most once a second
            gc_delta(step, gc0, read_gc(server.gc_file), (wall0, wall0 + step.elapsed))
        if threads0:
            main, others = main_and_other_threads(server.proc.pid, threads0)
            step.threads = {"event loop": main, "other threads": others}
        stats = read_sipp_stats(stat)
        step.ok = stat_count(stats, "SuccessfulCall(C)")
        step.failed = stat_count(stats, "FailedCall(C)")
        step.retrans = stat_count(stats, "Retransmissions(C)")
        if stats.get("ResponseTime1(C)"):
            step.response_ms = 1000.0 * _sipp_duration(stats["ResponseTime1(C)"])
        step.p99, step.worst = response_buckets(stats)
        created = stat_count(stats, "OutgoingCall(C)")
        step.problem = judge(step, self.requests_per_call, killed, created, proc.returncode)
        for check in self.checks:
            step.problem = check(step) or step.problem
        if not server.alive():
            step.problem = f"server exited (rc {server.proc.returncode}); see {server.log}"
        return step


# -- search ------------------------------------------------------------------------------------


@dataclass
class Result:
    server: Server
    steps: list[Step]
    best: Step | None
    first_fail: Step | None
    limited_by: str
    profile: str | None = None


def round_rate(value: float) -> int:
    unit = 25 if value < 2000 else 100 if value < 10000 else 500
    return max(unit, round(value / unit) * unit)


def search(
    server: Server,
    sipp: Sipp,
    args: argparse.Namespace,
    show: Callable[[Step, str | None], None],
) -> Result:
    """The highest passing rate; `show(step, verdict)` reports each step as it ends, with a
    verdict for a busy step that is not counted, None for a counted one."""
    steps: list[Step] = []
    best: Step | None = None
    first_fail: Step | None = None

    def measure(rate: int) -> Step:
        for attempt in range(1 + args.busy_retries):
            if attempt:
                wait_quiet(max(args.wait_quiet, 30.0))
            server.settle()
            step = sipp.run(server, rate, args.duration)
            if step.other_pct < BUSY_OTHER_PERCENT or attempt == args.busy_retries:
                break
            show(step, f"(not counted: other work took {step.other_pct:.0f}% of a core; again)")
        steps.append(step)
        show(step, None)
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
