"""The daemon's log lines: one JSON object per line, stamped in UTC with microseconds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

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
