"""G.711 table coding (media.g711) vs CPython's audioop, on the media clock's unit of work.

One tick of the media engine codes one 20 ms frame (160 samples) of every session at once. This
times that for a (sessions, 160) block: media.g711 codes the block in one fancy-index, the
reference (audioop, C) codes it a row at a time as a per-session loop would. Both sides run in
this process, interleaved, and the best of --repeat runs is kept (noise on a shared machine only
ever adds time).

    python bench/g711.py [--sessions 1000] [--repeat 20]

audioop is gone from Python 3.13; there the script prints the table figures alone.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:
        audioop = None  # type: ignore[assignment]


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    block = (rng.normal(0, 4000, (args.sessions, 160))).clip(-32768, 32767).astype(np.int16)
    rows = [row.tobytes() for row in block]
    print(f"G.711, a ({args.sessions}, 160) block = one 20 ms tick of {args.sessions} sessions")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(f"{'operation':<18}{'media.g711':>14}{'audioop/row':>14}{'ratio':>8}")
    for law, lin2, to_lin in (("PCMU", "lin2ulaw", "ulaw2lin"), ("PCMA", "lin2alaw", "alaw2lin")):
        codes = g711.encode(law, block)
        code_rows = [row.tobytes() for row in codes]
        cases = [
            (
                f"encode {law}",
                lambda law=law: g711.encode(law, block),
                lin2,
                rows,
            ),
            (
                f"decode {law}",
                lambda law=law, codes=codes: g711.decode(law, codes),
                to_lin,
                code_rows,
            ),
        ]
        for name, ours, ref_name, ref_rows in cases:
            t_ours = best(ours, args.repeat)
            if audioop is None:
                print(f"{name:<18}{t_ours * 1e6:>11.0f} µs{'-':>14}{'-':>8}")
                continue
            ref = getattr(audioop, ref_name)
            t_ref = best(
                lambda ref=ref, ref_rows=ref_rows: [ref(r, 2) for r in ref_rows], args.repeat
            )
            print(
                f"{name:<18}{t_ours * 1e6:>11.0f} µs{t_ref * 1e6:>11.0f} µs{t_ref / t_ours:>7.1f}x"
            )
    t_tc = best(lambda: [g711.transcode("PCMU", "PCMA", r) for r in code_rows], args.repeat)
    print(f"{'transcode/row':<18}{t_tc * 1e6:>11.0f} µs (PCMU->PCMA, a packet at a time)")
    print("budget: one tick is 20000 µs")


if __name__ == "__main__":
    main()
