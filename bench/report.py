"""Printing a sipp-driven benchmark: the step table, the machine line, wrapped caveats.

- `out(text)`: print and flush (a bench's output is read while it runs);
- `StepTable`: the table of `sipp_steps.Step`s, one line per step, in the bench's own words
  ("REG/s" or "calls/s"), with the SIP requests per second when a scenario has several;
- `busy_warning(steps)`: the lines that flag steps run while the machine was busy;
- `machine()`, `cpu_model()`, `tail(log)`, `wrap(caveat)`.
"""

from __future__ import annotations

import os
import platform
import textwrap
import time
from pathlib import Path

from procstat import BUSY_OTHER_PERCENT
from sipp_steps import Step


def out(text: str = "") -> None:
    print(text, flush=True)


def ms(value: float) -> str:
    """A sipp duration in ms: sipp measures whole milliseconds, so a mean of 0 is under one."""
    return "<1" if value < 1 else f"{value:.0f}"


class StepTable:
    """One line per step: `unit` names what sipp counts as a call ("REG", "call"), `rate`
    the heading of the achieved-rate column, `latency` that of the timed exchange."""

    def __init__(
        self, unit: str, rate: tuple[str, str], latency: str, requests_per_call: int
    ) -> None:
        self.unit = unit
        self.rate = rate
        self.latency = latency
        self.requests_per_call = requests_per_call
        widths = [8, 8] + ([9] if requests_per_call > 1 else []) + [6, 6, 7, 6, 5, 6, 7, 7, 5]
        widths += [5, 4, 5]
        self.row = "  " + " ".join(f"{{:>{w}}}" for w in widths) + "  {}"

    def _req(self, *cells: str) -> list[str]:
        return list(cells) if self.requests_per_call > 1 else []

    def header(self) -> None:
        first = [
            "target/s", self.rate[0], *self._req("SIP req/s"), "ok", "failed", "retrans",
            f"{self.latency} ms", "p99", "worst", "srv CPU", "ms CPU/", "sipp", "other", "GC",
            "GC", "verdict",
        ]  # fmt: skip
        second = [
            "", self.rate[1], *self._req(f"({self.requests_per_call}x)"), "", "", "", "mean",
            "ms", "ms", "% core", self.unit, "CPU%", "CPU%", "%", "max", "",
        ]  # fmt: skip
        out(self.row.format(*first))
        out(self.row.format(*second))

    def line(self, step: Step, verdict: str | None = None) -> None:
        if verdict is None:
            verdict = "pass" if step.passed else f"FAIL: {step.problem}"
        out(
            self.row.format(
                step.target,
                f"{step.rate:.0f}",
                *self._req(f"{self.requests_per_call * step.rate:.0f}"),
                step.ok,
                step.failed,
                step.retrans,
                ms(step.response_ms),
                step.p99,
                step.worst,
                f"{step.server_pct:.0f}",
                f"{step.cpu_ms_per_call:.3f}",
                f"{step.sipp_pct:.0f}",
                f"{step.other_pct:.0f}",
                step.gc_pct,
                step.gc_max_ms,
                verdict,
            )
        )


def busy_warning(steps: list[Step]) -> list[str]:
    busy = [s for s in steps if s.other_pct >= BUSY_OTHER_PERCENT]
    if not busy:
        return []
    return [
        "",
        f"  ** {len(busy)} of {len(steps)} steps ran while other work on the machine used "
        f">= {BUSY_OTHER_PERCENT:.0f}% of a core (column 'other'): those figures are "
        "perturbed; rerun on a quiet machine (--wait-quiet 300) **",
    ]


def machine() -> str:
    return (
        f"  machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"Linux {platform.release()}"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "   (no log)"
    return "\n".join("   | " + line for line in text[-lines:])


def wrap(text: str, width: int = 100) -> str:
    return textwrap.fill(text, width, initial_indent="  * ", subsequent_indent="    ")


def finish(profiles: list[str | None], work: Path, kept: bool, began: float, command: str) -> None:
    """The end of a bench's output: profiles taken, time, work folder, how to reproduce."""
    for profile in profiles:
        if profile:
            out()
            out(profile)
    out()
    out(
        f"  total bench time {time.monotonic() - began:.0f} s; work directory {work}"
        + ("" if kept else " (removed)")
    )
    out(f"  reproduce: cd {Path(__file__).resolve().parents[1]} && {command}")
