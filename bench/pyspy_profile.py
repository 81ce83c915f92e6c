"""Where a Python server spends its CPU under load: py-spy sampling it during one more step.

- `profile_step(server, sipp, rate, args)`: a step at `rate` with `py-spy record` attached,
  collapsed stacks written to --profile FILE, and a text summary;
- `summarize_collapsed(path)`: that summary from any collapsed-stack file (py-spy raw format):
  share of samples per thread, self time by area of the code (the leaf frame's module), top
  functions by self and inclusive time, and the heaviest single stacks.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from servers import ROOT, Server
from sipp_steps import Sipp

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

AREAS = [
    ("switch/sip/", "switch.sip (parse, headers, transactions, digest)"),
    ("switch/", "switch (endpoint, registrar, location, transport)"),
    ("structlog", "structlog (logging)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("concurrent/futures", "concurrent.futures (the store thread's executor)"),
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


def profile_step(
    server: Server, sipp: Sipp, rate: int, args: argparse.Namespace, unit: str = "REGISTER/s"
) -> str:
    """One more step at `rate` (`unit`) with py-spy sampling the daemon; returns a summary."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "py-spy not found (pip install py-spy); no profile"
    raw = Path(args.profile).resolve()
    seconds = max(3, int(args.duration))
    server.settle()
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
    sipp.procs.adopt(spy)
    time.sleep(0.5)  # py-spy attaches
    step = sipp.run(server, rate, seconds)
    with contextlib.suppress(subprocess.TimeoutExpired):
        spy.wait(timeout=seconds + 30)
    sipp.procs.stop(spy)
    lines = [
        f"py-spy profile of {server.key} at {rate} {unit} for {seconds} s "
        f"(achieved {step.rate:.0f}/s, server {step.server_pct:.0f}% CPU; "
        f"{'pass' if step.passed else 'FAIL: ' + str(step.problem)}), 200 samples/s, "
        f"idle time not sampled. Collapsed stacks: {raw}",
    ]
    lines += summarize_collapsed(raw)
    return "\n".join(lines)


def _area(file: str) -> str:
    for needle, name in AREAS:
        if needle in file:
            return name
    return "other: " + (Path(file).name or "?")


def _python_frames(stack: str) -> list[str]:
    """The frames of a collapsed stack, without py-spy's thread/process pseudo-frames."""
    return [f for f in stack.split(";") if not f.startswith(("thread", "process"))]


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
        first = stack.split(";", 1)[0]
        thread = first if first.startswith(("thread", "process")) else ""
        frames = _python_frames(stack)
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
        "C code, e.g. the idle store thread waiting for work in concurrent.futures or uvloop's "
        "poll, also collects samples here):"
    )
    for stack, count in stacks.most_common(3):
        frames = _python_frames(stack)
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
