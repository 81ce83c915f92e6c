"""The media engine in the daemon, with real phones: prompts, DTMF in every form, recording.

Numbers of the tenant's ``routes`` (switch/b2bua/handlers.py):

- 520 ``menu``: the greeting, then one key: 2 rings extension 102 and connects it. The key
  comes from pjsua (``dialDtmf``: RFC 4733), sipp replaying sipp's own RFC 4733 capture,
  sipp's SIP INFO (application/dtmf-relay), and DTMF tones inside sipp's PCMU audio (a
  caller that offered no telephone-event, so the engine listens for tones). Each time the
  daemon logs the choice and 102 is rung: the key was read, once, right.
"""

from __future__ import annotations

import shutil
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.dtmf import tone
from media.g711 import ENCODE
from tests.daemon.harness import Daemon, free_port, wait_until
from tests.daemon.test_calls import (
    call,
    callee,
    ok,
    pjsua,
    register_callee,
    require_module,
    states,
)

PCAP_2 = Path("/usr/share/sip-tester/dtmf_2833_2.pcap")  # RFC 4733 "2", from sipp's package


def with_media_routes(config: dict[str, Any]) -> None:
    config["tenants"][0]["routes"] = {
        "510": {"handler": "prompt", "play": ["greeting"], "language": "en"},
        "520": {"handler": "menu", "prompt": "greeting", "choices": {"2": "102"},
                "timeout": 6, "tries": 1},
        "530": {"handler": "follow-me", "extension": "102", "record": True},
    }  # fmt: skip
    folder = Path(config["store"]["url"].removeprefix("sqlite:///")).parent
    config.setdefault("media", {})["recordings"] = str(folder / "recordings")


# Every test here runs with the media in the daemon and in two media workers.
pytestmark = pytest.mark.both_media_ways


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(with_media_routes)


def spectrum_peak(samples: np.ndarray) -> float:
    x = samples.astype(np.float64) * np.hanning(len(samples))
    power = np.abs(np.fft.rfft(x))
    power[:10] = 0
    return float(np.fft.rfftfreq(len(samples), 1 / 8000)[int(power.argmax())])


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.astype(np.int16).tobytes())
    return path


def sine(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def best_correlation(heard: np.ndarray, prompt: np.ndarray) -> float:
    """The normalised correlation of ``prompt`` with ``heard`` at the best alignment."""
    a = heard.astype(np.float64) - heard.mean()
    b = prompt.astype(np.float64) - prompt.mean()
    n = len(a) + len(b)
    lag = int(np.argmax(np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)))
    part = a[lag : lag + len(b)]
    b = b[: len(part)]
    return float(np.dot(part, b) / (np.linalg.norm(part) * np.linalg.norm(b)))


def chose(daemon: Daemon) -> list[str]:
    return [e["choice"] for e in daemon.events_named("menu choice")]


def menu_call(daemon: Daemon, work: Path, scenario: str, **kw: Any) -> None:
    """sipp 101 calls the menu with ``scenario``; sipp 102 must be rung, and answer."""
    port = register_callee(daemon, work)
    with callee(daemon, work, "call_uas_answer_bye.xml", port) as uas:
        caller = call(daemon, work, scenario, "520", media_port=free_port(both=True), **kw)
    assert ok(caller), caller
    assert ok(uas[0]), uas[0]
    assert chose(daemon) == ["2"]


def test_menu_takes_a_key_by_rfc4733_from_sipps_capture(daemon: Daemon, work: Path) -> None:
    shutil.copy(PCAP_2, work / "dtmf.pcap")
    menu_call(daemon, work, "call_uac_rfc4733_wait_bye.xml")


def test_menu_takes_a_key_by_sip_info(daemon: Daemon, work: Path) -> None:
    menu_call(daemon, work, "call_uac_info_wait_bye.xml", keys={"digit": "2"})


def test_menu_hears_a_key_as_tones_in_the_audio(daemon: Daemon, work: Path) -> None:
    silence = np.zeros(8000, np.int16)
    audio = np.concatenate([silence, tone("2", 120), silence, silence])
    (work / "tone.pcmu").write_bytes(ENCODE["PCMU"][audio.view(np.uint16)].tobytes())
    menu_call(daemon, work, "call_uac_rtp_wait_bye.xml")


def test_pjsua_presses_a_key_and_the_menu_connects_102(daemon: Daemon, work: Path) -> None:
    require_module("pjsua2")
    agent = pjsua(daemon, work, "102")
    try:
        wait_until(lambda: daemon.registrations() == 1, 10, what="102 to register")
        caller = pjsua(daemon, work, "101", "--call", "sip:520@acme.example", "--talk", "6",
                       "--dtmf", "2", "--dtmf-after", "0.5")  # fmt: skip
        caller_out, _ = caller.communicate(timeout=40)
        agent_out, _ = agent.communicate(timeout=40)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert states(agent_out) == ["registered", "confirmed", "disconnected"], agent_out
    assert "confirmed" in states(caller_out), caller_out
    assert chose(daemon) == ["2"]
