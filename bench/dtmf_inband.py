"""In-band DTMF detection cost: µs of CPU per 20 ms frame per session, by block size.

The media clock feeds `media.dtmf.InbandDetector` one frame for every watched session of a
worker in one call. This prints, for blocks of 1, 10, 100 and 1000 sessions, the CPU time
per frame per session, and the same work done the way a per-session detector would do it
(one `feed` call per session per tick, the reference measured in the same run): the ratio
is what vectorising across sessions buys. The last column is the share of one core that
watching that many sessions takes (a tick is 20 ms).

The audio is µ-law-like noise at -35 dBm0 with a key pressed in a few sessions, so most
rows reach the level test and the counters move as in a real call. BLAS is held to one
thread (a media worker owns one core).

    python bench/dtmf_inband.py            # about 25 s
    python bench/dtmf_inband.py --quick    # about 8 s, fewer ticks: not the final figure
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the BLAS thread limit)

from media.dtmf import InbandDetector, tone  # noqa: E402
from media.dtmf.inband import DBM0_AMPLITUDE, FRAME  # noqa: E402

SIZES = (1, 10, 100, 1000)
TICK_S = 0.020


def audio(rows: int, ticks: int, seed: int = 1) -> np.ndarray:
    """(ticks, rows, FRAME) int16: noise everywhere, a key in every 50th session."""
    rng = np.random.default_rng(seed)
    rms = DBM0_AMPLITUDE / np.sqrt(2) * 10 ** (-35 / 20)
    block = rng.normal(0, rms, (ticks, rows, FRAME)).astype(np.int16)
    key = tone("5", 100).reshape(-1, FRAME)
    for row in range(0, rows, 50):
        block[10 : 10 + len(key), row] = key
    return block


def vectorised(rows: int, block: np.ndarray) -> tuple[float, int]:
    """CPU seconds for all ticks, all sessions in one call per tick; and keys found."""
    detector = InbandDetector(rows)
    slots = np.arange(rows)
    found = 0
    start = time.process_time()
    for frames in block:
        found += len(detector.feed(slots, frames))
    return time.process_time() - start, found


def per_session(rows: int, block: np.ndarray) -> tuple[float, int]:
    """CPU seconds for the same work with one `feed` call per session per tick."""
    detector = InbandDetector(rows)
    slots = [np.array([row]) for row in range(rows)]
    found = 0
    start = time.process_time()
    for frames in block:
        for row in range(rows):
            found += len(detector.feed(slots[row], frames[row : row + 1]))
    return time.process_time() - start, found


def best(measure: object, rows: int, block: np.ndarray, repeats: int) -> tuple[float, int]:
    """The least CPU time of `repeats` runs (the machine is shared: noise only adds)."""
    assert callable(measure)
    runs = [measure(rows, block) for _ in range(repeats)]
    return min(t for t, _ in runs), runs[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer ticks (a quick look)")
    args = parser.parse_args()
    budget = 40_000 if args.quick else 200_000  # frames per size for the vectorised run
    ref_budget = 1_000 if args.quick else 5_000  # feed calls per size for the reference
    repeats = 2 if args.quick else 3

    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(f"{'sessions':>8} {'µs/frame/session':>17} {'per-session calls':>18} "
          f"{'speed-up':>9} {'keys':>5} {'% of a core':>12}")  # fmt: skip
    for rows in SIZES:
        ticks = max(20, min(budget // rows, 2000))
        block = audio(rows, ticks)
        fast, keys = best(vectorised, rows, block, repeats)
        ref_ticks = max(10, min(ref_budget // rows, ticks))
        slow, ref_keys = best(per_session, rows, block[:ref_ticks], repeats)
        assert keys == (rows + 49) // 50, f"{keys} keys found in {rows} sessions"
        assert ref_keys == keys if ref_ticks == ticks else ref_keys <= keys
        per_frame = fast / (ticks * rows) * 1e6
        reference = slow / (ref_ticks * rows) * 1e6
        core = 100 * fast / ticks / TICK_S
        print(f"{rows:>8} {per_frame:>17.2f} {reference:>18.2f} "
              f"{reference / per_frame:>8.1f}x {keys:>5} {core:>11.2f}%")  # fmt: skip
    print("CPU time (process_time), best of", repeats, "runs; command: python bench/dtmf_inband.py")


if __name__ == "__main__":
    main()
