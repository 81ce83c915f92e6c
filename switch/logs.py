"""structlog set-up: one event per line, JSON in production, readable on a terminal.

JSON lines are rendered by orjson and stamped by `_utc_stamp`: at a few hundred calls a
second, five lines a call, structlog's stdlib-json renderer and datetime-based stamper were
a tenth of the daemon's CPU (bench/call_rate.py --profile).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

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


def configure(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor
    factory: structlog.BytesLoggerFactory | structlog.WriteLoggerFactory
    if as_json:
        # orjson writes bytes; a value it cannot serialise is written as its repr.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
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
        # One write (and flush) per line; print() writes the line and its newline apart, two
        # system calls when stdout is unbuffered (PYTHONUNBUFFERED, as under many supervisors).
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
