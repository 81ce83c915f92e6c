"""CPU accounting from /proc, for benchmarks that measure a server on a shared machine.

- `process_tree(pid)` and `cpu_seconds(pids)`: utime+stime of a process and everything it
  forked, each summed over all its threads (/proc/PID/stat);
- `thread_cpu(pid)` and `main_and_other_threads(pid, before)`: the same per thread
  (/proc/PID/task/TID/stat), to tell a daemon's main thread from its helper threads;
- `machine_busy_seconds()`: CPU time all cores spent not idle (/proc/stat), from which a
  benchmark subtracts what it accounted for to get the "other work" on the machine;
- `wait_quiet(limit)`: wait for that other work to drop (before a run or a repeated step);
  `settle(pids, alive)`: wait until a server has worked off its backlog.

Linux only. Every figure is in seconds of CPU; 100% is one core busy for the whole interval.
"""

from __future__ import annotations

import functools
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

BUSY_OTHER_PERCENT = 20.0  # other CPU use (of one core) above which a step's figures are suspect
SETTLE_CPU_PERCENT = 5.0  # between steps, wait until the server is this idle


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc stat file after comm (field 3 first); None if it is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _cpu_ticks(path: Path) -> int | None:
    """utime+stime, in clock ticks, from a /proc/PID/stat or /proc/PID/task/TID/stat file."""
    fields = _stat_fields(path)
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it."""
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
        ticks += _cpu_ticks(Path(f"/proc/{pid}/stat")) or 0
    return ticks / CLK_TCK


def thread_cpu(pid: int) -> dict[int, float]:
    """utime+stime of each thread of `pid`, in seconds, by thread id."""
    result = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        ticks = _cpu_ticks(task / "stat")
        if ticks is not None:
            result[int(task.name)] = ticks / CLK_TCK
    return result


def main_and_other_threads(pid: int, before: dict[int, float]) -> tuple[float, float]:
    """CPU seconds of `pid`'s main thread, and of all its other threads, since `before`
    (a `thread_cpu(pid)` reading)."""
    after = thread_cpu(pid)
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(v - before.get(t, 0.0) for t, v in after.items() if t != pid)
    return main, others


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle on all cores since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # guest time is already counted in user
    return (sum(fields) - idle - guest) / CLK_TCK


def _busy_percent(read: Callable[[], float], seconds: float) -> float:
    """How much a CPU-seconds counter grows over `seconds`, in % of one core."""
    before = read()
    time.sleep(seconds)
    return 100.0 * (read() - before) / seconds


def _print(text: str) -> None:
    print(text, flush=True)


def wait_quiet(
    limit: float,
    threshold: float = BUSY_OTHER_PERCENT,
    say: Callable[[str], object] = _print,
) -> float:
    """Other CPU use on the machine, in % of one core, waiting up to `limit` s for it to drop."""
    deadline = time.monotonic() + limit
    while True:
        busy = _busy_percent(machine_busy_seconds, 1.0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        say(f"  waiting for the machine to be quiet (other work: {busy:.0f}% of a core)")
        time.sleep(4.0)


def settle(
    pids: Callable[[], list[int]],
    alive: Callable[[], bool],
    limit: float = 15.0,
    idle_percent: float = SETTLE_CPU_PERCENT,
) -> None:
    """Wait until a server has worked off any backlog (its CPU use drops to idle)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and alive():
        tree = pids()
        if _busy_percent(functools.partial(cpu_seconds, tree), 0.5) < idle_percent:
            return
