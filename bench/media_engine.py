"""Media engine benchmark: playback, recording and 3-party conference sessions per core.

Runs N sessions of one kind on ``media.engine`` in a process of its own (uvloop, pinned to
one core), feeds them real RTP from a load generator on the other core (50 packets/s per
endpoint that listens, over 127.0.0.1), checks what comes back, and measures the server's
CPU over a steady window. N climbs (1, 10, 50, 100, 200, 400, …) until a step fails: loss
over 0.1 % either way, late ticks over 0.1 %, or CPU over 95 % of the core. The same steps
run through the per-session reference (`media_engine_naive.py`: audioop, a protocol per
endpoint and a timer per session) in the same run, so the report shows the CPU per session
of both as N grows. README.md, section "media_engine.py", explains the method and columns.

    python bench/media_engine.py            # about 8 minutes
    python bench/media_engine.py --quick    # about 2 minutes, short windows: a first look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's own modules
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the repository

import media_engine_load as load
from media_engine_server import KINDS, check_wav
from media_relay_mmsg import udp_socket
from procstat import BUSY_OTHER_PERCENT, wait_quiet
from report import machine

HERE = Path(__file__).resolve().parent
SERVER = HERE / "media_engine_server.py"
IMPLS = {"engine": "media.engine", "naive": "per session (audioop)"}
LOSS_LIMIT = 0.001
LATE_LIMIT = 0.001
CPU_LIMIT = 95.0
STEPS = (1, 10, 50, 100, 200, 400, 800, 1600, 3200, 6400)
QUICK_STEPS = (1, 10, 100, 400, 1600, 6400)


def out(text: str = "") -> None:
    print(text, flush=True)


class Server:
    """`media_engine_server.py` in its own process group, pinned to ``core``."""

    def __init__(self, impl: str, core: int | None, verbose: bool) -> None:
        self.log = tempfile.TemporaryFile(prefix=f"bench-media-{impl}-")  # noqa: SIM115 (lives with the server)
        cmd = [sys.executable, str(SERVER), impl]
        if verbose:
            out(f"  $ {shlex.join(cmd)}")

        def pin() -> None:
            if core is not None:
                os.sched_setaffinity(0, {core})

        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            preexec_fn=pin,
            start_new_session=True,
            env=env,
        )
        self.hello = self._read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, value: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(value).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> Any:
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"the media server exited:\n{tail}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class Step:
    impl: str
    kind: str
    sessions: int
    endpoints: int
    w: load.Window
    wav: float | None  # recorded audio / session time (1.0: nothing missing); None: no files
    problem: str

    @property
    def passed(self) -> bool:
        return not self.problem

    @property
    def us_per_tick(self) -> float:
        """Server CPU per session per 20 ms tick, in µs."""
        return 1e6 * self.w.server_cpu / self.w.seconds / 50 / self.sessions

    @property
    def ms_per_second(self) -> float:
        """Server CPU per session per second, in ms (% of a core per 10 sessions)."""
        return self.us_per_tick * 50 / 1000


def judge(w: load.Window, senders: int, wav: float | None) -> str:
    problems = []
    if w.in_loss >= LOSS_LIMIT:
        problems.append(f"in loss {100 * w.in_loss:.2f}%")
    if w.out_loss >= LOSS_LIMIT:
        problems.append(f"out loss {100 * w.out_loss:.2f}%")
    if senders and w.back_rate < 50 * (1 - 0.01):
        problems.append(f"{w.back_rate:.1f} pkt/s back")
    if w.late_fraction > LATE_LIMIT:
        problems.append(f"late ticks {100 * w.late_fraction:.1f}%")
    if w.cpu_percent > CPU_LIMIT:
        problems.append(f"CPU {w.cpu_percent:.0f}%")
    if w.seconds > 1.03 * w.nominal or w.gen_late > LATE_LIMIT:
        problems.append(f"generator late ({100 * w.gen_late:.1f}% of sends)")
    if wav is not None and wav < 0.99:
        problems.append(f"recorded {100 * wav:.1f}% of the time")
    return ", ".join(problems)


class Bench:
    def __init__(self, args: argparse.Namespace, server_core: int | None) -> None:
        self.args = args
        self.server_core = server_core
        self.steps: list[Step] = []

    def measure(self, server: Server, impl: str, kind: str, n: int) -> Step:
        args = self.args
        for attempt in range(args.busy_retries + 1):
            if args.wait_quiet:
                wait_quiet(args.wait_quiet, say=lambda s: None)
            step = self._once(server, impl, kind, n)
            busy = step.w.other_percent >= BUSY_OTHER_PERCENT
            if step.passed or not busy or attempt == args.busy_retries:
                break
            out(f"    (other work used {step.w.other_percent:.0f}% of a core: repeating)")
        self.row(step)
        self.steps.append(step)
        return step

    def _once(self, server: Server, impl: str, kind: str, n: int) -> Step:
        args = self.args
        folder = Path(tempfile.mkdtemp(prefix="bench-media-rec-"))
        sock = udp_socket()
        try:
            opened = server.request(
                {
                    "op": "open",
                    "kind": kind,
                    "n": n,
                    "phone": list(sock.getsockname()),
                    "dir": str(folder),
                    "events": args.telephone_event,
                }
            )
            send_to = [(h, p) for h, p in opened["send_to"]]
            hear_from = opened["hear_from"]
            w = load.run(
                sock,
                send_to,
                hear_from,
                args.duration,
                args.warmup,
                server.pid,
                lambda: server.request({"op": "stats"}),
            )
            closed = server.request({"op": "close"})
            wav = None
            if closed["files"]:
                wav = closed["frames"] / (closed["files"] * 8000 * closed["seconds"])
                channels, _ = check_wav(folder / "session-0.wav")
                if channels != 2:
                    wav = 0.0
            return Step(impl, kind, n, len(send_to), w, wav, judge(w, len(hear_from), wav))
        finally:
            sock.close()
            shutil.rmtree(folder, ignore_errors=True)

    def header(self, impl: str, kind: str, loop: str) -> None:
        out(f"\n{kind}, {IMPLS[impl]} ({loop}):")
        out(
            "  sessions endpts  CPU%  us/sess/tick  ms/sess/s  late%  in loss%  out loss%  "
            "pkt/s/ep  too late  tick%  gen%  other%  wav  verdict"
        )

    def row(self, s: Step) -> None:
        w = s.w
        wav = f"{s.wav:.2f}" if s.wav is not None else "-"
        back = f"{w.back_rate:.1f}" if w.senders else "-"
        tick = (
            f"{100 * w.tick_seconds / w.server_cpu:.0f}" if w.tick_seconds and w.server_cpu else "-"
        )
        out(
            f"  {s.sessions:>8} {s.endpoints:>6} {w.cpu_percent:>5.1f} {s.us_per_tick:>13.1f} "
            f"{s.ms_per_second:>10.3f} {100 * w.late_fraction:>6.2f} {100 * w.in_loss:>9.3f} "
            f"{100 * w.out_loss:>10.3f} {back:>9} {w.too_late:>9} {tick:>5} "
            f"{100 * w.gen_cpu / w.seconds:>5.0f} {w.other_percent:>7.0f} {wav:>4}  "
            f"{'pass' if s.passed else 'FAIL: ' + s.problem}"
        )

    def ladder(self, impl: str, kind: str) -> None:
        server = Server(impl, self.server_core, self.args.verbose)
        try:
            self.header(impl, kind, server.hello["loop"])
            for n in self.args.steps:
                if n > self.args.max_sessions:
                    break
                if not self.measure(server, impl, kind, n).passed and not self.args.all_steps:
                    break
        finally:
            server.stop()


def summary(steps: list[Step], kinds: list[str], impls: list[str]) -> None:
    out("\nsummary: the largest N per core (the last passing step), and CPU per session")
    for kind in kinds:
        best: dict[str, Step] = {}
        for impl in impls:
            ran = [s for s in steps if s.kind == kind and s.impl == impl]
            passed = [s for s in ran if s.passed]
            if not passed:
                out(f"  {kind}, {IMPLS[impl]}: no passing step")
                continue
            top = best[impl] = passed[-1]
            failed = [s for s in ran if not s.passed]
            limit = f"; at {failed[0].sessions}: {failed[0].problem}" if failed else ""
            out(
                f"  {kind}, {IMPLS[impl]}: {top.sessions} sessions at {top.w.cpu_percent:.0f}% "
                f"CPU, {top.us_per_tick:.1f} us per session per tick "
                f"(~{100 * top.sessions / top.w.cpu_percent:.0f} at 100% by that cost){limit}"
            )
        if len(best) == 2:
            ours, ref = best["engine"], best["naive"]
            out(f"    engine / per-session: {ours.sessions / ref.sessions:.1f}x the sessions")
        common = sorted(
            {s.sessions for s in steps if s.kind == kind and s.impl == impls[0]}.intersection(
                *({s.sessions for s in steps if s.kind == kind and s.impl == i} for i in impls)
            )
        )
        if len(impls) == 2 and common:
            cells = []
            for n in common:
                a, b = (
                    next(s for s in steps if s.kind == kind and s.impl == i and s.sessions == n)
                    for i in impls
                )
                cells.append(f"{n}: {a.us_per_tick:.0f} vs {b.us_per_tick:.0f}")
            out(f"    us per session per tick, engine vs per-session, by N: {'; '.join(cells)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short windows (~2 minutes)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="playback,recording,conference")
    parser.add_argument("--impls", default="engine,naive", help="engine,naive")
    parser.add_argument("--duration", type=float, help="seconds of each window (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds before it (default 1)")
    parser.add_argument("--steps", help="session counts, comma-separated")
    parser.add_argument("--max-sessions", type=int, default=6400)
    parser.add_argument(
        "--all-steps", action="store_true", help="run every step, also after one fails"
    )
    parser.add_argument(
        "--telephone-event",
        action="store_true",
        help="the phones offer telephone-event (the engine then runs no in-band DTMF detector)",
    )
    parser.add_argument("--wait-quiet", type=float, default=0, help="max seconds per step")
    parser.add_argument("--busy-retries", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.steps = (
        [int(n) for n in args.steps.split(",")]
        if args.steps
        else list(QUICK_STEPS if args.quick else STEPS)
    )
    kinds = args.kinds.split(",")
    impls = args.impls.split(",")
    for name, given, known in (("kind", kinds, KINDS), ("impl", impls, tuple(IMPLS))):
        for value in given:
            if value not in known:
                raise SystemExit(f"unknown {name} {value!r} (known: {', '.join(known)})")
    began = time.monotonic()
    cores = sorted(os.sched_getaffinity(0))
    gen_core, server_core = (cores[0], cores[-1]) if len(cores) > 1 else (None, None)
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    out(
        f"media engine bench: server pinned to core {server_core}, generator on core "
        f"{gen_core}; {args.warmup:g} s warm-up then a {args.duration:g} s window per step"
    )
    out(machine())
    out(
        "  sessions: playback = 1 endpoint playing music on hold to its phone; recording = 2 "
        "endpoints into one stereo WAV; conference = 3 endpoints, each hearing the other two. "
        "Every phone sends 50 PCMU packets/s"
        + (" and offers telephone-event." if args.telephone_event else ", no telephone-event.")
    )
    out(
        f"  pass: loss < {100 * LOSS_LIMIT:g}% both ways, late ticks <= "
        f"{100 * LATE_LIMIT:g}%, CPU <= {CPU_LIMIT:g}% of the core, every packet back on time"
    )
    bench = Bench(args, server_core)
    for kind in kinds:
        for impl in impls:
            bench.ladder(impl, kind)
    summary(bench.steps, kinds, impls)
    out(
        f"\n({time.monotonic() - began:.0f} s) reproduce: cd {Path.cwd()} && "
        f"{shlex.join(['python', *sys.argv])}"
    )


if __name__ == "__main__":
    main()
