"""Running sipp (Debian sip-tester 3.6.1) against the daemon, bounded and in its own folder.

sipp exits 0 when every call succeeded and 1 when some failed; the counts
come from its -trace_stat CSV (cumulative columns of the last line), and
unexpected messages from its -trace_err file, so a failure says what sipp saw.
"""

from __future__ import annotations

import csv
import itertools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.daemon.harness import free_port

SCENARIOS = Path(__file__).parent / "scenarios"
SIPP = shutil.which("sipp")

_runs = itertools.count()


@dataclass(frozen=True)
class SippResult:
    returncode: int
    successful: int
    failed: int
    local_port: int
    output: str
    errors: str

    def __str__(self) -> str:
        return (
            f"sipp exit {self.returncode}, {self.successful} ok, {self.failed} failed\n"
            f"--- errors ---\n{self.errors[-4000:]}\n--- output ---\n{self.output[-2000:]}"
        )


def users_file(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    """An injection file: USER;DOMAIN;PASSWORD per call, used in order."""
    path = folder / f"users-{next(_runs)}.csv"
    lines = [f"{u};{d};[authentication username={u} password={p}]" for u, d, p in rows]
    path.write_text("SEQUENTIAL\n" + "\n".join(lines) + "\n")
    return path


def run_sipp(
    scenario: str,
    port: int,
    folder: Path,
    *,
    users: list[tuple[str, str, str]] | None = None,
    calls: int = 1,
    transport: str = "u1",
    local_ip: str = "127.0.0.1",
    local_port: int | None = None,
    keys: dict[str, str] | None = None,
    rate: int = 10,
    timeout: float = 15.0,
    recv_timeout_ms: int | None = None,
    media_port: int | None = None,
    messages: Path | None = None,
) -> SippResult:
    """Run one scenario from tests/daemon/scenarios for `calls` calls and wait for it."""
    assert SIPP is not None, "sipp is not installed"
    run = next(_runs)
    local_port = local_port or free_port(local_ip, both=True)
    stats = folder / f"sipp-{run}-stats.csv"
    errors = folder / f"sipp-{run}-errors.log"
    command = [
        SIPP, f"127.0.0.1:{port}",
        "-sf", str(SCENARIOS / scenario),
        "-m", str(calls),
        "-r", str(rate),
        "-t", transport,
        "-i", local_ip, "-bind_local",
        "-p", str(local_port),
        "-nostdin",
        "-trace_err", "-error_file", str(errors),
        "-trace_stat", "-stf", str(stats),
        "-timeout", f"{int(timeout)}s", "-timeout_error",
        "-max_retrans", "3",
    ]  # fmt: skip
    if users is not None:
        command += ["-inf", str(users_file(folder, users))]
    for name, value in (keys or {}).items():
        command += ["-key", name, value]
    if media_port is not None:  # where its RTP (rtp_stream) leaves from and [media_port]
        command += ["-mi", local_ip, "-mp", str(media_port)]
    if recv_timeout_ms is not None:
        command += ["-recv_timeout", str(recv_timeout_ms)]
    if messages is not None:  # every message sipp sent and received, for the test to read
        command += ["-trace_msg", "-message_file", str(messages)]
    try:
        done = subprocess.run(
            command, cwd=folder, capture_output=True, timeout=timeout + 10, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"sipp did not finish: {command}") from exc
    successful, failed = _counts(stats)
    return SippResult(
        returncode=done.returncode,
        successful=successful,
        failed=failed,
        local_port=local_port,
        output=(done.stdout + done.stderr).decode(errors="replace"),
        errors=errors.read_text(errors="replace") if errors.exists() else "",
    )


def _counts(stats: Path) -> tuple[int, int]:
    if not stats.exists():
        return 0, 0
    rows = list(csv.reader(stats.open(newline=""), delimiter=";"))
    if len(rows) < 2:
        return 0, 0
    header, last = rows[0], rows[-1]
    column = dict(zip(header, last, strict=False))
    return int(column["SuccessfulCall(C)"]), int(column["FailedCall(C)"])
