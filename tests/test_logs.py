"""The daemon's log lines: one JSON object per line, stamped in UTC with microseconds."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from switch.logs import LoopWriter

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import enum, pathlib, structlog
from switch.logs import configure
configure("info", "json")
class Kind(enum.Enum):
    A = "caller"
log = structlog.get_logger()
log.info("call recorded", call_id="c-1@x", duration=3, jitter=1.5, legs=(1, 2), none=None,
         path=pathlib.Path("/r/c.wav"), side=Kind.A, text="caf\\u00e9 \\"quoted\\"\\n")
log.debug("hidden at info")
try:
    raise ValueError("bad value")
except ValueError:
    log.exception("handler failed", method="INVITE")
"""


def test_json_lines_as_operators_read_them() -> None:
    before = datetime.now(UTC)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, timeout=30, check=True
    )
    after = datetime.now(UTC)
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 2  # the debug line filtered out
    first, second = (json.loads(line) for line in lines)
    assert first == {
        "call_id": "c-1@x",
        "duration": 3,
        "jitter": 1.5,
        "legs": [1, 2],
        "none": None,
        "path": "PosixPath('/r/c.wav')",  # what JSON cannot hold is written as its repr
        "side": "caller",
        "text": 'café "quoted"\n',
        "event": "call recorded",
        "level": "info",
        "timestamp": first["timestamp"],
    }
    # ISO 8601 UTC with microseconds and a Z, as structlog's TimeStamper(fmt="iso") writes it
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["timestamp"])
    stamped = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert before <= stamped <= after
    assert second["level"] == "error" and second["method"] == "INVITE"
    assert "ValueError: bad value" in second["exception"]


class Stream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


async def test_lines_of_one_loop_turn_go_out_in_one_write_in_order() -> None:
    stream = Stream()
    writer = LoopWriter(stream)
    for n in range(5):
        writer.msg(b"line %d" % n)
    assert stream.writes == 0  # waiting for the end of this turn
    await asyncio.sleep(0)
    assert stream.getvalue() == b"".join(b"line %d\n" % n for n in range(5))
    assert stream.writes == 1
    # another thread (the store's workers) writes at once, after what waits
    writer.msg(b"from the loop")
    thread = threading.Thread(target=writer.msg, args=(b"from a thread",))
    thread.start()
    thread.join()
    await asyncio.sleep(0)
    assert stream.getvalue().endswith(b"line 4\nfrom the loop\nfrom a thread\n")


def test_outside_a_loop_each_line_is_written_at_once() -> None:
    stream = Stream()
    writer = LoopWriter(stream)
    writer.msg(b"started")
    assert stream.getvalue() == b"started\n"
