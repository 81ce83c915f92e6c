"""The daemon with its relay in media worker processes (`media.workers: N`).

Two sipps stream PCMU at each other through the daemon while the test kills the worker that
carries the call: the switch hands the call's sockets to a new worker and the call goes on
to its end, with its counters in the call record. Other modules (test_media_paths,
test_transfer, test_phone_audio) run their calls with workers too (`media_workers` fixture).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon.harness import Daemon, wait_until
from tests.daemon.sipp import SippResult
from tests.daemon.test_calls import call_legs, ok, records
from tests.daemon.test_media_paths import TALK_PACKETS, talk


def workers(daemon: Daemon) -> list[int]:
    """The pids of the media workers the daemon started, in order."""
    return [int(e["pid"]) for e in daemon.events_named("media worker started")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def with_workers(n: int) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config.setdefault("media", {})["workers"] = n

    return edit


def test_a_call_outlives_the_media_worker_that_carried_it(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    daemon = make_daemon(with_workers(1))
    (victim,) = workers(daemon)
    result: list[tuple[SippResult, SippResult, int]] = []
    caller = threading.Thread(target=lambda: result.append(talk(daemon, work, "127.0.0.1")))
    caller.start()
    daemon.wait_events("CCEventConnect", timeout=10)
    time.sleep(1.0)  # a second of audio on the first worker
    os.kill(victim, signal.SIGKILL)
    caller.join(timeout=30)
    assert result, "the call did not finish"
    (uac, uas, _) = result[0]
    assert ok(uac), uac
    assert ok(uas), uas
    assert daemon.wait_events("media worker died")[0]["pid"] == victim
    (handed,) = daemon.wait_events("media sessions handed to a new worker")
    assert handed["sessions"] == 1
    (row,) = records(daemon)
    assert (row["disposition"], row["hangup_by"]) == ("answered", "caller")
    a, b = call_legs(daemon, row["call_id"])
    # Both phones streamed all along; the counters the dead worker had not reported yet (it
    # reports every 5 s: here, all it had) are missing, the rest are counted.
    assert TALK_PACKETS * 0.4 <= a["packets_in"] <= TALK_PACKETS * 1.2, a
    assert b["packets_in"] >= TALK_PACKETS * 0.4, b
    assert a["packets_out"] > 0 and b["packets_out"] > 0
    assert a["latched"] and b["latched"]
    assert daemon.metric("softswitch_media_worker_restarts_total") == 1
    assert daemon.metric("softswitch_media_workers") == 1
    daemon.stop()
    assert not any(alive(pid) for pid in workers(daemon)), "a media worker outlived the daemon"


def test_two_workers_relay_a_call_and_stop_with_the_daemon(
    make_daemon: Callable[..., Daemon], work: Path
) -> None:
    daemon = make_daemon(with_workers(2))
    pids = workers(daemon)
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    assert daemon.metric("softswitch_media_workers") == 2
    uac, uas, _ = talk(daemon, work, "127.0.0.1")
    assert ok(uac) and ok(uas), (uac, uas)
    (row,) = records(daemon)
    a, b = call_legs(daemon, row["call_id"])
    # The final counters came from the worker before the record was written.
    assert b["packets_out"] == a["packets_in"] and a["packets_out"] == b["packets_in"], (a, b)
    # /metrics follows within a second: workers send their totals every second.
    relayed = a["packets_in"] + b["packets_in"]
    daemon.wait_metric("softswitch_rtp_packets_total", relayed, direction="in")
    daemon.stop()
    wait_until(lambda: not any(alive(pid) for pid in pids), 5, what="the workers to exit")
