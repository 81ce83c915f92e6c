#!/usr/bin/env python3
"""Call rate through the softswitch B2BUA, against sippy's B2BUA measured in the same run.

Between the same two sipp instances (a UAC placing calls, a UAS answering them), each B2BUA
carries short calls: INVITE -> (100) 180 200 -> ACK, a few hundred ms of "talk", BYE -> 200,
i.e. two dialogs per call through the B2BUA. Rates step up (doubling from --start-rate, then
--refine bisection steps) until a step fails; the result is the highest rate with zero failed
calls, with the server's CPU milliseconds per call.

Servers (--servers):
  softswitch          this repository's daemon as in production: the caller is challenged
                      (407, digest) and the media relay rewrites SDP and holds two RTP/RTCP
                      port pairs per call; a call record in SQLite per call
  softswitch-norelay  the same with `media.relay: false` (SDP end to end, as sippy does)
  softswitch-workers  the same as softswitch with the relay in one media worker process
                      (`media.workers: 1`) on the same core; the CPU counted is both
                      processes': what the control protocol costs a call
  sippy               sippy's B2BUA (PyPI `sippy`, `python -m sippy.b2bua`) with
                      --auth_enable=off --acct_enable=off --static_route=<the UAS>

Each server runs alone on one core (sched_setaffinity, like `taskset -c`); both sipps share the
other core(s). The callee is extension 200000: for softswitch the UAS first REGISTERs it from
its own port (so the daemon routes by its registrar, as for a phone); sippy routes every INVITE
to the UAS statically. A step passes with no failed call at either sipp, >= 95% of the target
rate, <= 1% of requests retransmitted, and every call ended within 3 s of the last being due.

Run from the repository root:  python bench/call_rate.py            (about 6 minutes)
                               python bench/call_rate.py --quick    (about 2 minutes)
sippy must be importable by --sippy-python (default: this Python): pip install sippy==2.5.0
(this bench installs nothing). Without it the bench says so and measures softswitch alone.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The modules beside this script, however it is started (see register_rate.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import BUSY_OTHER_PERCENT, wait_quiet
from pyspy_profile import profile_step
from report import StepTable, busy_warning, finish, machine, ms, out, tail, wrap
from servers import (
    DOMAIN,
    HOST,
    ROOT,
    Processes,
    Server,
    bench_users,
    exit_on_signals,
    free_port,
    options_probe,
    sippy_missing,
    split_cores,
    start_sippy,
    start_softswitch,
)
from sipp_steps import (
    MAX_RETRANS_FRACTION,
    PASS_RATE_FRACTION,
    SIPP_BUFFER,
    Result,
    Sipp,
    Step,
    read_sipp_stats,
    search,
    sipp_version,
    stat_count,
)

SCENARIOS = ROOT / "bench" / "scenarios"
UAC_AUTH = SCENARIOS / "call_uac_auth.xml"  # INVITE, 407, ACK, INVITE+auth, 200, ACK, BYE
UAC_PLAIN = SCENARIOS / "call_uac.xml"  # INVITE, 200, ACK, BYE
UAS = SCENARIOS / "call_uas.xml"
REGISTER = SCENARIOS / "register.xml"
CALLEE = "200000"

SERVERS = {
    "softswitch": "softswitch, media relay on (production)",
    "softswitch-norelay": "softswitch, media.relay: false",
    "softswitch-workers": "softswitch, media in 1 media worker (same core)",
    "sippy": "sippy B2BUA (PyPI sippy)",
}
# Requests the UAC sends per call: what the retransmission limit is a fraction of.
REQUESTS = {UAC_AUTH: 5, UAC_PLAIN: 3}
TABLE_UNIT = ("calls/s", "(0 fail)")


def table(uac: Path) -> StepTable:
    return StepTable("call", TABLE_UNIT, "setup", REQUESTS[uac])


# How long the UAS may take to end the calls a failed step left: its 200 is retransmitted
# until sipp gives up (-max_retrans 5 by default: 0.5+1+2+4+4 s, then a little).
UAS_DRAIN_SECONDS = 20.0


@dataclass
class Uas:
    """The callee: a sipp UAS running for all the steps of one server."""

    proc: subprocess.Popen[bytes]
    stats: Path
    seen_failed: int = 0

    def drain(self) -> None:
        """Before a step: let the calls an earlier (overloaded) step left at the UAS end or
        fail, and count from there. Otherwise their failures, seconds later, were charged to
        the next step: after one overloaded step, a rate both servers pass fresh failed by
        "1 calls failed at the UAS" (seen for sippy at 125 and 150/s, for softswitch at 275/s)."""
        deadline = time.monotonic() + UAS_DRAIN_SECONDS
        stats = read_sipp_stats(self.stats)
        while stat_count(stats, "CurrentCall") > 0 and time.monotonic() < deadline:
            time.sleep(1.0)  # the file is rewritten every second
            stats = read_sipp_stats(self.stats)
        self.seen_failed = stat_count(stats, "FailedCall(C)")

    def check(self, step: Step) -> str | None:
        """Fail a step in which the UAS saw calls fail (its statistics file is cumulative,
        rewritten every second)."""
        time.sleep(1.2)
        failed = stat_count(read_sipp_stats(self.stats), "FailedCall(C)")
        new, self.seen_failed = failed - self.seen_failed, failed
        return f"{new} calls failed at the UAS" if new > 0 else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1000, help="callers (default 1000)")
    parser.add_argument("--password", default="bench-Secret-42", help="every user's password")
    parser.add_argument("--duration", type=float, default=8.0, help="s per step (default 8)")
    parser.add_argument("--start-rate", type=int, default=50, help="first step, calls/s")
    parser.add_argument("--max-rate", type=int, default=3200, help="highest step, calls/s")
    parser.add_argument("--refine", type=int, default=3, help="bisection steps (default 3)")
    parser.add_argument("--talk-ms", type=int, default=300, help="ACK to BYE (default 300 ms)")
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma list of: " + ", ".join(SERVERS) + " (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="--duration 4 --refine 1 (about 2 minutes)"
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="softswitch log.level (default info: its default, a line per call event)",
    )
    parser.add_argument("--sippy-python", default=sys.executable, help="a Python with sippy")
    parser.add_argument(
        "--sippy-log", action="store_true", help="keep sippy's SIP message log (to a file)"
    )
    parser.add_argument(
        "--media-ports",
        default="10000-31999",
        help="softswitch's RTP port range (default 10000-31999: below the ephemeral ports, "
        "where sipp's sockets are; 11000 pairs, which 10 s of quarantine and 2 pairs a call "
        "turn into 550 calls/s)",
    )
    parser.add_argument(
        "--server-core", type=int, help="the core each server runs on (default: the last)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="after the search, profile softswitch (py-spy) for one more step at its best "
        "rate; collapsed stacks go to FILE (FILE.norelay, FILE.workers for the others)",
    )
    parser.add_argument("--no-gc-probe", dest="gc_probe", action="store_false")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--busy-retries", type=int, default=1, metavar="N")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    parser.add_argument("-v", "--verbose", action="store_true", help="print command lines")
    args = parser.parse_args(argv)
    if args.quick:
        if "--duration" not in argv:
            args.duration = 4.0
        if "--refine" not in argv:
            args.refine = 1
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.server_list if s not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; expected some of {list(SERVERS)}")
    low, _, high = args.media_ports.partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) < int(high)):
        parser.error("--media-ports: expected LOW-HIGH, e.g. 10000-31999")
    args.media_range = (int(low), int(high))
    args.user_list = bench_users(args.users)
    return args


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parse_args(given)
    command = shlex.join(["python", "bench/call_rate.py", *given])
    if shutil.which(args.sipp) is None:
        out(f"error: {args.sipp} not found (sipp 3.x is the load generator)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="call-rate-"))
    procs = Processes()
    exit_on_signals()
    began = time.monotonic()
    failed = False
    try:
        server_cpus, load_cpus = split_cores(args.server_core)
        print_preamble(args, server_cpus, load_cpus)
        busy = wait_quiet(args.wait_quiet)
        out(
            f"  other work on the machine before start: {busy:.0f}% of a core"
            + ("  ** busy: figures will be perturbed **" if busy >= BUSY_OTHER_PERCENT else "")
        )
        results: list[Result] = []
        skipped: list[str] = []
        for key in args.server_list:
            why = sippy_missing(args.sippy_python) if key == "sippy" else None
            if why:
                skipped.append(f"{key}: {why}")
                out()
                out(f"== {SERVERS[key]}: not run: {why}")
                continue
            result = bench_server(key, args, work, procs, server_cpus, load_cpus)
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


def print_preamble(
    args: argparse.Namespace, server_cpus: set[int] | None, load_cpus: set[int] | None
) -> None:
    out("Calls through a B2BUA: softswitch vs sippy, same sipp UAC and UAS, same run")
    out(machine())
    out(
        f"  load: {sipp_version(args.sipp)} over UDP on {HOST}: UAC -> B2BUA -> UAS; a call is "
        f"INVITE -> 180 200 -> ACK, {args.talk_ms} ms, BYE -> 200 "
        f"({UAS.relative_to(ROOT)}, {UAC_PLAIN.name}; {UAC_AUTH.name} adds the 407 round)"
    )
    if server_cpus:
        out(
            f"  cores: each server alone on core {min(server_cpus)}; both sipps on "
            f"{','.join(map(str, sorted(load_cpus or ())))}"
        )
    else:
        out("  cores: one core: server and sipp share it (no pinning)")
    out(
        f"  steps: {args.duration:g} s each, from {args.start_rate}/s doubling to at most "
        f"{args.max_rate}/s, then {args.refine} bisection step(s); callers {args.users} "
        f"extensions @{DOMAIN} in turn, one callee ({CALLEE})"
    )
    out(
        f"  a step passes with 0 failed calls (UAC and UAS), >= {PASS_RATE_FRACTION:.0%} of the "
        f"target rate, <= {MAX_RETRANS_FRACTION:.0%} of requests retransmitted"
    )
    out(
        "  CPU: server = utime+stime of all its threads from /proc over the step, in % of one "
        "core; sipp = UAC + UAS; other = the rest of the machine"
    )


def bench_server(
    key: str,
    args: argparse.Namespace,
    work: Path,
    procs: Processes,
    server_cpus: set[int] | None,
    load_cpus: set[int] | None,
) -> Result | None:
    """Start one server and its UAS, check a call goes through, search its rate."""
    out()
    uas_port = free_port(socket.SOCK_DGRAM)
    if key == "sippy":
        server = start_sippy(args, work, procs, uas_port, server_cpus)
        uac = UAC_PLAIN
    else:
        server = start_softswitch(
            args,
            work,
            procs,
            key=key,
            title=SERVERS[key],
            users=[*args.user_list, CALLEE],
            overrides=softswitch_overrides(
                args, relay=key != "softswitch-norelay", workers=key == "softswitch-workers"
            ),
            cpus=server_cpus,
        )
        server.notes.append(
            "every INVITE challenged (407, MD5 digest) and routed to the callee's registered "
            "contact; call limits off; a call record (SQLite) per call"
            + (
                "; media.relay false: SDP end to end"
                if key == "softswitch-norelay"
                else "; media relay: 2 RTP/RTCP port pairs per call, SDP rewritten both ways"
            )
            + (
                "; the relay in a media worker process (CPU counted with the switch's)"
                if key == "softswitch-workers"
                else ""
            )
        )
        uac = UAC_AUTH
    out(f"== {server.title}")
    for note in server.notes:
        out(f"   {note}")
    if args.verbose:
        out(f"   server: {shlex.join(server.argv)}")
    if not wait_ready(server):
        out(f"   {server.key} did not start answering within 20 s; {server.log}:")
        out(tail(server.log))
        procs.stop(server.proc)
        return None
    if key != "sippy" and not register_callee(server, args, work, procs, uas_port, load_cpus):
        procs.stop(server.proc)
        return None
    uas = start_uas(args, work, procs, server, uas_port, load_cpus)
    sipp = Sipp(
        args,
        work,
        procs,
        uac,
        REQUESTS[uac],
        extra=["-key", "callee", CALLEE, "-d", str(args.talk_ms)],
        name=f"callers-{key}",
    )
    sipp.cpus = load_cpus
    sipp.hold = args.talk_ms / 1000
    sipp.helpers.append(lambda: [uas.proc.pid])
    sipp.before.append(uas.drain)
    sipp.checks.append(uas.check)
    if args.verbose:
        example = sipp.argv(server.port, 100, 800, work / "STEP.csv", work / "STEP.errors")
        out(f"   sipp UAC (a 100/s step): {shlex.join(example)}")
    warm_rate = min(20, args.start_rate)
    warm = sipp.run(server, warm_rate, 2.0)
    if warm.failed or warm.ok < warm.calls:
        out(f"   warm-up (2 s at {warm_rate}/s, not counted) failed: {warm.problem}")
        out(tail(server.log))
        procs.stop(server.proc)
        return None
    tab = table(uac)
    tab.header()
    result = search(server, sipp, args, tab.line)
    if args.profile and key.startswith("softswitch") and server.alive():
        best = result.best.target if result.best else args.start_rate
        profile_args = argparse.Namespace(**vars(args))
        if key != "softswitch":
            profile_args.profile = f"{args.profile}.{key.removeprefix('softswitch-')}"
        result.profile = profile_step(server, sipp, best, profile_args, unit="calls/s")
    if not server.alive():
        out(f"   server exited (rc {server.proc.returncode}); {server.log}:")
        out(tail(server.log))
    procs.stop(uas.proc)
    return result


def softswitch_overrides(
    args: argparse.Namespace, *, relay: bool, workers: bool = False
) -> dict[str, object]:
    low, high = args.media_range
    media: dict[str, object] = {"relay": relay, "address": HOST, "port_min": low, "port_max": high}
    if workers:
        media["workers"] = 1
    return {
        # one callee takes every call: no per-user or per-tenant limit
        "calls": {"max_per_user": 0, "max_per_tenant": 0},
        "media": media,
    }


def wait_ready(server: Server) -> bool:
    """softswitch answers OPTIONS itself; sippy's B2BUA would route it, so for sippy wait
    until its UDP port is bound."""
    if server.key != "sippy":
        return options_probe(server.port, 20.0)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and server.alive():
        if udp_bound(server.port):
            return True
        time.sleep(0.2)
    return False


def udp_bound(port: int) -> bool:
    needle = f":{port:04X} "
    try:
        return any(needle in line.split()[1] + " " for line in open("/proc/net/udp"))
    except OSError:
        return False


def register_callee(
    server: Server,
    args: argparse.Namespace,
    work: Path,
    procs: Processes,
    uas_port: int,
    load_cpus: set[int] | None,
) -> bool:
    """REGISTER the callee from the UAS's port: the daemon routes to the source address."""
    sipp = Sipp(args, work, procs, REGISTER, 2, users=[CALLEE], local_port=uas_port, name="callee")
    sipp.cpus = load_cpus
    step = sipp.run(server, 10, 0.1)
    registered = step.ok == 1 and not step.failed  # one call: the rate rule means nothing
    if not registered:
        out(f"   registering the callee from port {uas_port} failed: {step.problem}")
        out(tail(server.log))
    return registered


def start_uas(
    args: argparse.Namespace,
    work: Path,
    procs: Processes,
    server: Server,
    port: int,
    cpus: set[int] | None,
) -> Uas:
    stats = work / f"uas-{server.key}.csv"
    # fmt: off
    argv = [
        args.sipp, "-sf", str(UAS), "-t", "u1", "-i", HOST, "-p", str(port),
        "-max_recv_loops", "10000", "-max_sched_loops", "10000",
        "-buff_size", str(SIPP_BUFFER), "-nostdin",
        "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_err", "-error_file", str(work / f"uas-{server.key}.errors"),
    ]
    # fmt: on
    if args.verbose:
        out(f"   sipp UAS: {shlex.join(argv)}")
    proc = procs.start(argv, work / f"uas-{server.key}.out", cpus=cpus)
    time.sleep(0.5)  # it binds its port before the first INVITE
    return Uas(proc, stats)


# -- the summary -------------------------------------------------------------------------------


def summary(results: list[Result], skipped: list[str], args: argparse.Namespace) -> None:
    out()
    out("== Highest call rate with zero failed calls (each server on one core)")
    fmt = "  {:<44} {:>7} {:>7} {:>8} {:>5} {:>6} {:>5}"
    out(fmt.format("server", "calls/s", "srv CPU", "ms CPU/", "sipp", "setup", "p99"))
    out(fmt.format("", "", "% core", "call", "CPU%", "ms", "ms"))
    for r in results:
        b = r.best
        if b is None:
            out(fmt.format(r.server.title, f"<{args.start_rate}", "-", "-", "-", "-", "-"))
            continue
        out(
            fmt.format(
                r.server.title,
                f"{b.rate:.0f}",
                f"{b.server_pct:.0f}",
                f"{b.cpu_ms_per_call:.3f}",
                f"{b.sipp_pct:.0f}",
                ms(b.response_ms),
                b.p99,
            )
        )
    out("  limited by (the first failing step above the result):")
    for r in results:
        out(f"    {r.server.key:<20} {r.limited_by}")
    for line in skipped:
        out(f"  skipped {line}")
    cpu_at_common_rates(results)
    ratios(results)
    for line in busy_warning([s for r in results for s in r.steps]):
        out(line)
    out()
    out("== Caveats")
    caveats = [
        "Authentication differs. softswitch challenges every new INVITE as it does a phone's "
        "(407, then the INVITE again with an MD5 digest it checks: 2 more requests and 1 more "
        "response per call, in the per-call CPU); it has no trusted-source setting yet. sippy "
        "runs with --auth_enable=off (its authentication is RADIUS only).",
        "Media. 'softswitch' relays media as in production (two RTP/RTCP port pairs opened, "
        "registered with the relay and closed per call, SDP parsed and rewritten both ways). "
        "sippy is run without rtpproxy: SDP goes end to end. 'softswitch-norelay' is the "
        "like-for-like row (media.relay: false).",
        "Records. softswitch writes a call record to SQLite per call (an insert when the call "
        "starts, the final row when it ends); sippy runs with --acct_enable=off.",
        logging_caveat(args),
        "Routing. softswitch looks the callee up in its registrar (the UAS registered from its "
        "port); sippy sends every call to one static route.",
        "Both keep RFC 3261 transactions for every request; each runs alone on one core, both "
        "sipps on the other. A B2BUA limited by sipp (sipp CPU near 100%) is faster than shown.",
        "sippy may send the 180 after the 200 (it sends from several threads): the UAC accepts "
        "a late 180 anywhere, so that is not counted as a failure.",
    ]  # fmt: skip
    for caveat in caveats:
        out(wrap(caveat))


def logging_caveat(args: argparse.Namespace) -> str:
    ours = (
        "a JSON line per call event (4 per call) to a file"
        if args.log_level in ("debug", "info")
        else "no line per call"
    )
    theirs = (
        "logs every SIP message to a file"
        if args.sippy_log
        else "has its SIP message log off (SIPLOG_BEND=none)"
    )
    return f"Logging. softswitch at log.level={args.log_level} writes {ours}; sippy {theirs}."


def cpu_at_common_rates(results: list[Result]) -> None:
    """CPU per call of every server at each step rate they all passed: CPU per call falls as
    the rate rises (more datagrams per wake-up), so compare it at equal rates too."""
    passed = [{s.target: s for s in r.steps if s.passed} for r in results]
    common = sorted(set.intersection(*(set(p) for p in passed))) if passed else []
    if len(results) < 2 or not common:
        return
    out()
    out("== CPU ms per call at the rates every server passed")
    fmt = "  {:>8}" + " {:>20}" * len(results)
    out(fmt.format("calls/s", *(r.server.key for r in results)))
    for rate in common:
        out(fmt.format(rate, *(f"{p[rate].cpu_ms_per_call:.3f}" for p in passed)))


def ratios(results: list[Result]) -> None:
    ref = next((r for r in results if r.server.key == "sippy"), None)
    if ref is None or ref.best is None:
        return
    out()
    out("== softswitch / sippy (same run, same sipps, same steps)")
    for r in results:
        if r is ref or r.best is None:
            continue
        rate = r.best.rate / ref.best.rate
        cpu = r.best.cpu_ms_per_call / ref.best.cpu_ms_per_call
        out(
            f"  {r.server.key:<20} calls/s {r.best.rate:.0f} / {ref.best.rate:.0f} = {rate:.2f}x"
            f"   CPU per call {r.best.cpu_ms_per_call:.3f} / {ref.best.cpu_ms_per_call:.3f} ms"
            f" = {cpu:.2f}x"
        )
    # sippy's figure swings between runs by a step, and a step it fails by a call or by the
    # rate rule still shows what it can carry: the ratio to the most it carried in any step
    # of this run, failed ones included, is the one a noisy run cannot flatter.
    most = max(ref.steps, key=lambda step: step.rate)
    if most.rate > ref.best.rate:
        out(f"  against the most sippy carried in any step, failed ones too ({most.rate:.0f}/s "
            f"at its {most.target}/s step):")  # fmt: skip
        for r in results:
            if r is not ref and r.best is not None:
                out(f"  {r.server.key:<20} calls/s {r.best.rate:.0f} / {most.rate:.0f} = "
                    f"{r.best.rate / most.rate:.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
