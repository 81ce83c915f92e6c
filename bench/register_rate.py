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

This file is the command line and the report; the pieces other benchmarks reuse are beside it:
procstat.py (CPU from /proc), servers.py (softswitch and Kamailio), sipp_steps.py (sipp steps,
pass/fail rule, rate search), pyspy_profile.py (--profile).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The modules beside this script, however it is started (python bench/register_rate.py puts
# bench/ first on sys.path already, unless -P or PYTHONSAFEPATH is in effect).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import BUSY_OTHER_PERCENT, wait_quiet
from pyspy_profile import profile_step
from report import StepTable, busy_warning, finish, machine, ms, out, tail, wrap
from servers import (
    DOMAIN,
    HOST,
    ROOT,
    SERVERS,
    Processes,
    bench_users,
    exit_on_signals,
    options_probe,
    start_server,
    unavailable,
)
from sipp_steps import (
    MAX_RETRANS_FRACTION,
    PASS_RATE_FRACTION,
    Result,
    Sipp,
    search,
    sipp_version,
)

SCENARIO = ROOT / "bench" / "scenarios" / "register.xml"
REQUESTS_PER_CALL = 2  # a registration: REGISTER -> 401, REGISTER with Authorization -> 200


TABLE = StepTable("REG", ("REG/s", "(auth'd)"), "reg", REQUESTS_PER_CALL)


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
    exit_on_signals()  # SIGTERM, SIGHUP, Ctrl-C: unwind through the finally below
    began = time.monotonic()
    failed = False
    try:
        print_preamble(args)
        busy = wait_quiet(args.wait_quiet)
        out(
            f"  other work on the machine before start: {busy:.0f}% of a core"
            + ("  ** busy: figures will be perturbed **" if busy >= BUSY_OTHER_PERCENT else "")
        )
        sipp = Sipp(args, work, procs, SCENARIO, REQUESTS_PER_CALL)
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
        finish([r.profile for r in results], work, args.keep or failed, began, command)
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
    out(machine())
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


def bench_server(
    key: str, args: argparse.Namespace, work: Path, procs: Processes, sipp: Sipp
) -> Result | None:
    """Start one server, warm it up, search its rate; None if it never got going."""
    out()
    server = start_server(key, args, work, procs)
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
    TABLE.header()
    result = search(server, sipp, args, TABLE.line)
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
                    f"{REQUESTS_PER_CALL * b.rate:.0f}",
                    f"{b.server_pct:.0f}",
                    f"{b.cpu_ms_per_call:.3f}",
                    f"{b.sipp_pct:.0f}",
                    ms(b.response_ms),
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
                f"{100 * b.threads['event loop'] / total:.0f}%, other threads (the store "
                f"thread) {100 * b.threads['other threads'] / total:.0f}%"
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
            cpu_ratio = ours.best.cpu_ms_per_call / r.best.cpu_ms_per_call
            out(f"  vs {r.server.title}:")
            out(
                f"     rate {ours.best.rate:.0f} / {r.best.rate:.0f} REG/s = {rate_ratio:.3f}"
                f"  (1 : {1 / rate_ratio:.1f})"
            )
            out(
                f"     CPU per registration {ours.best.cpu_ms_per_call:.3f} / "
                f"{r.best.cpu_ms_per_call:.3f} ms = {cpu_ratio:.1f}x"
            )
            if r.first_fail and r.first_fail.sipp_pct >= 90:
                out(
                    "     the reference was limited by sipp: its own limit is higher, so the rate "
                    "ratio flatters softswitch"
                )
    for line in busy_warning([s for r in results for s in r.steps]):
        out(line)
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
        out(wrap(caveat))


if __name__ == "__main__":
    sys.exit(main())
