"""structlog set-up: one event per line, JSON in production, readable on a terminal.

JSON lines are rendered by orjson, stamped by `_utc_stamper` and written by `LoopWriter`: at
a few hundred calls a second, five lines a call, structlog's stdlib-json renderer, its
datetime-based stamper and a write system call per line were a tenth of the daemon's CPU
(bench/call_rate.py --profile).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog


def _utc_stamper() -> structlog.typing.Processor:
    """Adds ``timestamp``: ISO 8601 UTC with microseconds and a Z, as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it, the date and time formatted once a second."""
    second = -1
    prefix = ""

    def stamp(
        logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        nonlocal second, prefix
        now = time.time()
        whole = int(now)
        if whole != second:
            second, prefix = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        event["timestamp"] = f"{prefix}.{int((now - whole) * 1e6):06d}Z"
        return event

    return stamp


class LoopWriter:
    """Writes log lines to a binary stream, those of one event-loop turn in one write.

    Inside a running loop a line waits in a list, and the first line of a turn schedules
    the write with ``call_soon``: it runs once the callbacks already due have run, i.e. after
    the datagrams that loop turn read, within the same millisecond. Outside a loop (start-up,
    shutdown, tools, other threads) each line is written at once, after what waits. A
    process killed outright loses at most one loop turn of lines.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._lock = threading.Lock()  # the store's worker threads log too
        atexit.register(self.flush)

    def msg(self, message: bytes) -> None:
        with self._lock:
            self._lines.append(message)
            if len(self._lines) > 1:
                return  # a write is scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop running in this thread
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._lines:
                return
            lines, self._lines = self._lines, []
        lines.append(b"")
        try:
            self._stream.write(b"\n".join(lines))
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stdout: nowhere to log to
            pass

    # what structlog's filtering logger calls for each level
    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor
    factory: Callable[..., Any]
    if as_json:
        # orjson writes bytes; a value it cannot serialise is written as its repr.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        writer = LoopWriter(sys.stdout.buffer)
        factory = lambda *_: writer  # noqa: E731 - one writer for every logger
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.WriteLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _utc_stamper(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # On a terminal one write (and flush) per line: print() writes the line and its newline
        # apart, two system calls when stdout is unbuffered (PYTHONUNBUFFERED).
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
