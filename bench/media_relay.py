"""Media relay benchmark: softswitch's RTP relay vs rtpengine, in calls per relay process.

Offers N bidirectional G.711 calls (50 packets/s each way, 172-byte RTP packets) through a
relay and finds the largest N it carries with < 0.1 % packet loss; reports packets/s, the
relay's CPU, and the latency it adds. The same load runs through rtpengine (userspace, one
worker thread, driven over its ng control protocol) in the same run, and so does the "floor"
relay (one recv and one send per packet from Python and nothing else: the ceiling of our
relay's design); the generator's own ceiling (generator -> echo -> generator, no relay) is
shown beside them. README.md, section "media_relay.py", explains the method and the columns.

    python bench/media_relay.py            # about 8 minutes on an idle machine
    python bench/media_relay.py --quick    # about 1 minute, short steps: not the final figure
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import media_relay_load as load
from media_relay_load import Point
from media_relay_targets import (
    HOSTS,
    Echo,
    Floor,
    Rtpengine,
    Softswitch,
    SoftswitchUser,
    SoftswitchWorkers,
    Target,
    receive_on,
    two_hosts,
)

LATENCY_CALLS = 500  # the latency target is stated at 500 calls
LOSS_LIMIT = 0.001


def _busy_now(seconds: float) -> float:
    """% of one core the machine spent busy over `seconds` (before a step: should be ~0)."""
    busy0 = load._machine_busy()
    time.sleep(seconds)
    return 100 * (load._machine_busy() - busy0) / load.CLK_TCK / seconds


def _wait_quiet(limit: float, verbose: bool) -> None:
    deadline = time.monotonic() + limit
    while (busy := _busy_now(1.0)) > 10 and time.monotonic() < deadline:
        if verbose:
            print(f"  (machine busy: {busy:.0f}% of a core; waiting)", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log: list[str] = []

    def measure(self, target: Target, calls: int, seconds: float, note: str = "") -> Point:
        args = self.args
        for attempt in range(args.busy_retries + 1):
            _wait_quiet(args.wait_quiet, args.verbose)
            point = load.run(target, calls, seconds)
            if point.other_cpu < 20 or attempt == args.busy_retries:
                break
            print(f"  (other work used {point.other_cpu:.0f}% of a core: repeating)", flush=True)
        self.row(target, point, note)
        return point

    def row(self, target: Target, p: Point, note: str) -> None:
        verdict = "pass"
        if not p.passed:
            verdict = (
                "misrouted" if p.misrouted else "loss" if p.loss >= LOSS_LIMIT else "gen behind"
            )
        if p.other_cpu >= 20:
            verdict += " (busy)"
        p50, p99, worst = p.latency_us
        cpu_us = p.relay_cpu / 100 * 1e6 / p.pps if p.pps else 0.0
        print(
            f"  {p.calls:>6} {p.seconds:>4.0f}s {p.pps:>9.0f} {100 * p.loss:>8.3f} "
            f"{100 * p.worst_call_loss:>7.2f} {p50 / 1000:>7.2f} {p99 / 1000:>7.2f} "
            f"{worst / 1000:>7.1f} {p.relay_cpu:>6.0f} {cpu_us:>6.1f} {p.gen_cpu:>5.0f} "
            f"{p.late_ms[1]:>6.1f} {p.other_cpu:>5.0f}  {verdict} {note}",
            flush=True,
        )
        if self.args.verbose and p.counters:
            print(f"         {p.counters}")

    def header(self, target: Target) -> None:
        print(f"\n{target.name}: {target.label}", flush=True)
        print(
            "   calls time     pkt/s   loss %  worst%  p50 ms  p99 ms  max ms  CPU%  "
            "us/pkt  gen%  late  other  verdict"
        )

    def search(self, target: Target, first: Point) -> tuple[Point | None, Point | None]:
        """Largest passing N (and the smallest failing one), doubling then bisecting."""
        args = self.args
        lo, hi = (first, None) if first.passed else (None, first)
        while lo is not None and hi is None and lo.calls < args.max_calls:
            p = self.measure(target, min(2 * lo.calls, args.max_calls), args.step)
            lo, hi = (p, hi) if p.passed else (lo, p)
        while lo is None and hi is not None and hi.calls > 20:
            p = self.measure(target, _round(hi.calls / 2), args.step)
            lo, hi = (p, hi) if p.passed else (lo, p)
        for _ in range(args.refine):
            if lo is None or hi is None or hi.calls - lo.calls <= max(20, lo.calls // 20):
                break
            p = self.measure(target, _round((lo.calls + hi.calls) / 2), args.step)
            lo, hi = (p, hi) if p.passed else (lo, p)
        return lo, hi

    def relay(self, target: Target, direct500: Point) -> dict[str, object]:
        args = self.args
        self.header(target)
        at500 = self.measure(target, LATENCY_CALLS, args.duration, "(latency figure)")
        lo, hi = self.search(target, at500)
        final = None
        calls = lo.calls if lo is not None else 0
        for _ in range(3):  # confirm at full duration; step down 5 % if it does not hold
            if calls <= 0:
                break
            if lo is not None and calls == lo.calls and lo.seconds >= args.duration - 1:
                final = lo
                break
            p = self.measure(target, calls, args.duration, "(final)")
            if p.passed:
                final = p
                break
            calls = _round(calls * 0.95)
        if final is not None and args.profile and target.name == "softswitch":
            self.profile(target, final.calls)
        return {
            "target": target,
            "final": final,
            "fail": hi,
            "at500": at500,
            "added": (
                at500.latency_us[0] - direct500.latency_us[0],
                at500.latency_us[1] - direct500.latency_us[1],
            ),
        }

    def profile(self, target: Target, calls: int) -> None:
        out = Path(self.args.profile)
        seconds = self.args.step

        def attach(pid: int) -> None:
            cmd = ["py-spy", "record", "--pid", str(pid), "--native", "-r", "250"]
            cmd += ["-d", str(max(1, int(seconds) - 1)), "-f", "raw", "-o", str(out)]
            threading.Thread(
                target=subprocess.run, args=(cmd,), kwargs={"capture_output": True}, daemon=True
            ).start()

        print(f"  profiling {calls} calls with py-spy -> {out}", flush=True)
        load.run(target, calls, seconds, during=attach)
        time.sleep(1)
        if out.exists():
            _print_profile(out)


def _round(calls: float) -> int:
    return max(10, round(calls / 10) * 10)


def _print_profile(path: Path) -> None:
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        leaf[frames[-1].split(" (")[0] + " (" + frames[-1].rsplit("/", 1)[-1]] += int(count)
    print(f"  py-spy, {total} samples, leaf frames:")
    for frame, count in leaf.most_common(12):
        print(f"    {100 * count / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps (~1 minute)")
    parser.add_argument(
        "--relays",
        default="softswitch,softswitch-user,rtpengine,floor",
        help="relays to measure, in order (softswitch, softswitch-user, softswitch-workers, "
        "rtpengine, floor)",
    )
    parser.add_argument("--duration", type=float, help="seconds of the figures (default 20)")
    parser.add_argument("--step", type=float, help="seconds per search step (default 4)")
    parser.add_argument("--refine", type=int, help="bisection steps (default 3)")
    parser.add_argument("--max-calls", type=int, default=5000)
    parser.add_argument("--wait-quiet", type=float, default=60, help="max seconds per step")
    parser.add_argument("--busy-retries", type=int, default=2)
    parser.add_argument("--profile", help="py-spy raw profile of softswitch at its figure")
    parser.add_argument(
        "--hosts",
        choices=["one", "one-rps", "two"],
        default="one",
        help="one: relays and phones on loopback; one-rps: the same with loopback's receive "
        "work on the relay's core; two: relays in a network namespace behind a veth pair, each "
        "side's receive work on its own core (both need root)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    args.duration = args.duration or (5.0 if quick else 20.0)
    args.step = args.step or (2.0 if quick else 4.0)
    args.refine = args.refine if args.refine is not None else (1 if quick else 3)
    started = time.monotonic()

    cores = sorted(os.sched_getaffinity(0))
    gen_core, relay_core = (cores[0], cores[1]) if len(cores) > 1 else (None, None)
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    loop = _our_loop()
    print(
        f"media relay bench: {len(cores)} cores; generator on core {gen_core}, each relay "
        f"pinned to core {relay_core}; {load.WARMUP:g} s warm-up, then {args.step:g} s search "
        f"steps and {args.duration:g} s figures; pass = loss < {100 * LOSS_LIMIT:g} %"
    )
    print(
        f"load: N calls x 2 directions x 50 packets/s of 172 bytes (G.711/20 ms), calls "
        f"spread over each 20 ms (a batch every {1000 * load.TICK / load.SLICES:g} ms); "
        f"softswitch relay on {loop}"
    )
    with contextlib.ExitStack() as hosts:
        if args.hosts == "two":
            if relay_core is None or gen_core is None:
                raise SystemExit("--hosts two needs two cores")
            hosts.enter_context(two_hosts(relay_core, gen_core))
            print(
                f"two hosts: relays in network namespace {HOSTS.netns} at {HOSTS.relay}, phones "
                f"at {HOSTS.phones} (veth; RPS: each side's receive work on its own core)"
            )
        elif args.hosts == "one-rps":
            if relay_core is None:
                raise SystemExit("--hosts one-rps needs two cores")
            hosts.enter_context(receive_on(relay_core))
            print(f"one host, loopback's receive work on core {relay_core} (RPS), the relay's")
        else:
            print("one host: relays and phones on 127.0.0.1 (a packet's receive path runs in "
                  "its sender's system call)")  # fmt: skip
        results, ceiling, ceiling_fail = _run(args, relay_core)

    print("\nsummary")
    if ceiling is not None:
        more = "" if ceiling_fail is not None else f" (not reached: --max-calls {args.max_calls})"
        print(
            f"  generator ceiling, no relay: {ceiling.calls} calls, {ceiling.pps:.0f} pkt/s "
            f"with < 0.1 % loss{more}; generator CPU {ceiling.gen_cpu:.0f}%"
        )
    figures = {}
    for r in results:
        t, final, fail = r["target"], r["final"], r["fail"]
        assert isinstance(t, Target)
        at500 = r["at500"]
        assert isinstance(at500, Point)
        added = r["added"]
        assert isinstance(added, tuple)
        if isinstance(final, Point):
            figures[t.name] = final
            limit = ""
            if isinstance(fail, Point):
                limit = (
                    f"; at {fail.calls}: {100 * fail.loss:.2f} % loss, CPU {fail.relay_cpu:.0f}%"
                )
            print(
                f"  {t.name}: {final.calls} calls ({final.pps:.0f} pkt/s, CPU "
                f"{final.relay_cpu:.0f}%, p99 {final.latency_us[1] / 1000:.2f} ms){limit}"
            )
        else:
            print(f"  {t.name}: no passing step")
        print(
            f"    at {LATENCY_CALLS} calls: latency added over the direct path p50 "
            f"{added[0] / 1000:.3f} ms, p99 {added[1] / 1000:.3f} ms; CPU {at500.relay_cpu:.0f}%"
        )
    for mine, other, note in (
        ("softswitch", "rtpengine", "(target >= 1.3x)"),
        ("softswitch-user", "rtpengine", "(both in userspace)"),
        ("softswitch-user", "floor", "(the floor: one recv + one send from Python, no more)"),
    ):
        if mine in figures and other in figures:
            ours, theirs = figures[mine], figures[other]
            print(
                f"  {mine} / {other}: {ours.calls / theirs.calls:.2f}x calls at < 0.1 % loss "
                f"{note}; CPU per packet: relay process {_cpu_per_packet(ours):.1f} vs "
                f"{_cpu_per_packet(theirs):.1f} us, whole machine {_machine_per_packet(ours):.1f}"
                f" vs {_machine_per_packet(theirs):.1f} us"
            )
    print(f"\n({time.monotonic() - started:.0f} s) reproduce: cd {Path.cwd()} && {_command()}")


def _cpu_per_packet(p: Point) -> float:
    return p.relay_cpu / 100 * 1e6 / p.pps if p.pps else 0.0


def _run(
    args: argparse.Namespace, relay_core: int | None
) -> tuple[list[dict[str, object]], Point | None, Point | None]:
    bench = Bench(args)
    direct = Echo(relay_core, args.verbose)
    bench.header(direct)
    direct500 = bench.measure(direct, LATENCY_CALLS, args.duration, "(latency baseline)")
    ceiling, ceiling_fail = bench.search(direct, direct500)

    results = []
    for name in args.relays.split(","):
        if name == "softswitch":
            target: Target = Softswitch(relay_core, args.verbose)
        elif name == "softswitch-user":
            target = SoftswitchUser(relay_core, args.verbose)
        elif name == "softswitch-workers":
            target = SoftswitchWorkers(relay_core, args.verbose)
        elif name == "floor":
            target = Floor(relay_core, args.verbose)
        elif name == "rtpengine":
            if not Rtpengine.available():
                print("\nrtpengine: not installed (apt-get install rtpengine-daemon); skipped")
                continue
            target = Rtpengine(relay_core, args.verbose)
        else:
            raise SystemExit(
                f"unknown relay {name!r} "
                "(softswitch, softswitch-user, softswitch-workers, rtpengine, floor)"
            )
        results.append(bench.relay(target, direct500))
    return results, ceiling, ceiling_fail


def _machine_per_packet(p: Point) -> float:
    """CPU of everything (relay, generator, the kernel's softirq work wherever it ran) per
    relayed packet: the fair figure when the kernel forwards (its work is charged to the
    sender's send call on loopback, not to the relay process)."""
    busy = p.relay_cpu + p.gen_cpu + p.other_cpu
    return busy / 100 * 1e6 / p.pps if p.pps else 0.0


def _our_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio (uvloop not installed)"
    return f"uvloop {uvloop.__version__}"


def _command() -> str:
    return shlex.join(["python", *sys.argv])


if __name__ == "__main__":
    main()
