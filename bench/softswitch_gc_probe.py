"""Run the softswitch daemon with a probe on Python's cyclic garbage collector.

    SOFTSWITCH_GC_PROBE=/tmp/gc.json python bench/softswitch_gc_probe.py run -c FILE

is `softswitch run -c FILE` plus one `gc.callbacks` entry that times every collection. A
full (generation 2) collection stops the event loop for as long as it takes to walk every
tracked object, so its pauses show up as late answers and retransmissions. The probe keeps
per-generation totals and the time of every full collection in the JSON file named by
SOFTSWITCH_GC_PROBE (rewritten at most once a second, and after each full collection);
bench/sipp_steps.py reads it around each step. Its own cost is two clock reads per
collection. It changes nothing else: no thresholds, no freeze.

With SOFTSWITCH_GC_TYPES=N as well, after each full collection (outside the timed window) it
also records the N most common types among the objects the collector tracks, and their total,
under "types" in the same file: what full collections spend their time walking. Counting walks
the whole heap, so leave it off when measuring pauses or CPU.

With SOFTSWITCH_GC_GARBAGE=N, each full collection keeps what it found unreachable aside
(gc.DEBUG_SAVEALL) long enough to record its N most common types under "garbage": the reference
cycles that only a full collection frees, i.e. what to break so reference counting frees them.
The kept objects are let go right after and freed by a later collection: a diagnostic only.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections import Counter

_PATH = os.environ.get("SOFTSWITCH_GC_PROBE", "")
_TYPES = int(os.environ.get("SOFTSWITCH_GC_TYPES", "0") or 0)
_GARBAGE = int(os.environ.get("SOFTSWITCH_GC_GARBAGE", "0") or 0)
_totals = {str(g): {"count": 0, "seconds": 0.0, "max": 0.0} for g in range(3)}
_full: list[tuple[float, float, int]] = []  # (wall time at end, seconds, objects collected)
_started = 0.0
_written = 0.0
_types: list[tuple[float, int, list[tuple[str, int]]]] = []  # (wall time, tracked, top types)
_garbage: list[tuple[float, int, list[tuple[str, int]]]] = []  # (wall time, found, top types)


def _write(now: float) -> None:
    global _written
    _written = now
    tmp = _PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"totals": _totals, "full": _full, "types": _types, "garbage": _garbage}, f)
    os.replace(tmp, _PATH)


def _callback(phase: str, info: dict[str, int]) -> None:
    global _started
    if phase == "start":
        if _GARBAGE and info["generation"] == 2:
            gc.set_debug(gc.DEBUG_SAVEALL)
        _started = time.perf_counter()
        return
    took = time.perf_counter() - _started
    generation = info["generation"]
    slot = _totals[str(generation)]
    slot["count"] += 1
    slot["seconds"] += took
    slot["max"] = max(slot["max"], took)
    now = time.time()
    if generation == 2:
        _full.append((now, took, info["collected"]))
        if _TYPES:
            _types.append((now, *_census(_TYPES)))
        if _GARBAGE:
            gc.set_debug(0)
            found = Counter(type(o).__qualname__ for o in gc.garbage)
            _garbage.append((now, len(gc.garbage), found.most_common(_GARBAGE)))
            gc.garbage.clear()
    if generation == 2 or now - _written >= 1.0:
        _write(now)


def _census(top: int) -> tuple[int, list[tuple[str, int]]]:
    """How many objects the collector tracks (frozen ones left out), and the commonest types."""
    objects = gc.get_objects()
    counts = Counter(type(o).__qualname__ for o in objects)
    return len(objects), counts.most_common(top)


def main() -> int:
    if _PATH:
        gc.callbacks.append(_callback)
        _write(time.time())
    from switch.cli import main as softswitch

    return softswitch(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
