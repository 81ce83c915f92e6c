"""Supervisor tools with three real phones: listen, whisper and barge into a bridged call.

101 (the caller, 600 Hz) calls 531, which rings 102 (the agent, 1500 Hz, answering by
itself) and bridges them; 103 (the supervisor, 2200 Hz) then calls 54x, keys ``102#`` by
RFC 4733 and is put into that bridge (switch/b2bua/supervise.py). Every phone is a baresip
that records what it hears (tests/daemon/baresip_phone.py); the FFT of those recordings says
who heard whom:

=========  ======================  ====================  ====================
mode       the supervisor hears    the agent hears       the caller hears
=========  ======================  ====================  ====================
listen     caller and agent        the caller            the agent
whisper    caller and agent        caller, supervisor    the agent
barge      caller and agent        caller, supervisor    agent, supervisor
=========  ======================  ====================  ====================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.daemon.baresip_phone import Phones
from tests.daemon.harness import Daemon, wait_until
from tests.daemon.test_phone_audio import tone_file, with_phone_routes

CALLER, AGENT, SUPERVISOR = 600, 1500, 2200  # Hz each phone sends
JOINED = 2.0  # seconds the supervisor stays
MODES = {"listen": "541", "whisper": "542", "barge": "543"}


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    def edit(config: dict[str, Any]) -> None:
        with_phone_routes(config)
        routes = config["tenants"][0]["routes"]
        for mode, number in MODES.items():
            routes[number] = {"handler": "supervise", "mode": mode, "timeout": 5}
        config["security"].pop("auth_algorithms", None)

    return make_daemon(edit)


def tones(samples: npt.NDArray[np.int16]) -> set[int]:
    """Which of the three phones' tones ``samples`` hold, each at a tenth of the loudest."""
    window = samples.astype(np.float64) * np.hanning(len(samples))
    power = np.abs(np.fft.rfft(window))
    freqs = np.fft.rfftfreq(len(samples), 1 / 8000)
    level = {f: float(power[np.abs(freqs - f) <= 20].max()) for f in (CALLER, AGENT, SUPERVISOR)}
    loudest = max(level.values())
    return {f for f, v in level.items() if v > loudest / 10 and v > 1e5}


def tones_over_time(samples: npt.NDArray[np.int16], seconds: float = 0.5) -> set[int]:
    """Every tone heard in any ``seconds`` of ``samples``."""
    step = int(8000 * seconds)
    found: set[int] = set()
    for start in range(0, len(samples) - step + 1, step):
        found |= tones(samples[start : start + step])
    return found


# Every test here runs with the media in the daemon and in two media workers.
pytestmark = pytest.mark.both_media_ways


@pytest.mark.parametrize("mode", list(MODES))
def test_supervisor_modes(
    daemon: Daemon, baresip: Phones, tmp_path: Path, mode: str, media_workers: int
) -> None:
    agent = baresip.start(daemon, "102", source=tone_file(tmp_path, AGENT), answer=True)
    agent.registered()
    caller = baresip.start(daemon, "101", source=tone_file(tmp_path, CALLER),
                           dial="sip:531@acme.example")  # fmt: skip
    caller.established()
    agent.established()
    wait_until(lambda: daemon.events_named("bridged"), 5, what="the bridge")

    supervisor = baresip.start(daemon, "103", source=tone_file(tmp_path, SUPERVISOR),
                               dial=f"sip:{MODES[mode]}@acme.example", keys=True)  # fmt: skip
    supervisor.established()
    time.sleep(0.6)  # the beep
    supervisor.press("102#")
    (joined,) = wait_until(lambda: daemon.events_named("supervising"), 5, what="the supervisor")
    assert (joined["extension"], joined["mode"]) == ("102", mode), joined
    if media_workers:  # the supervisor's call is on the other worker: its endpoint moved
        assert daemon.events_named("media endpoint moved"), "the mix is in another worker"
    time.sleep(JOINED)
    assert supervisor.stop() == 0, supervisor.said
    time.sleep(0.5)
    assert caller.stop() == 0, caller.said
    agent.call_ended()
    assert agent.stop() == 0, agent.said

    heard = {p: tones_over_time(p.heard()) for p in (caller, agent, supervisor)}
    assert heard[supervisor] >= {CALLER, AGENT}, heard
    expected_agent = {CALLER} if mode == "listen" else {CALLER, SUPERVISOR}
    expected_caller = {AGENT, SUPERVISOR} if mode == "barge" else {AGENT}
    assert heard[agent] == expected_agent, heard
    assert heard[caller] == expected_caller, heard
