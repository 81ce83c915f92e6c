"""Audio over RTP for the media tests: tones, G.711 streams sent at 20 ms, what came back.

A test phone (``conftest.Phone``) sends a real-time stream with `send_stream` (one packet per
20 ms, as a phone does: the engine's jitter buffer is 160 ms deep, so a burst would overflow
it) and gathers what the engine sends with `gather`; `Stream` is what was gathered, decoded.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

import numpy as np

from media.g711 import DECODE, ENCODE
from media.stats import Addr
from tests.media.conftest import Phone

RATE = 8000
FRAME = 160
PT = {"PCMU": 0, "PCMA": 8}


def sine(freq: float, seconds: float, level: int = 8000) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant(samples: np.ndarray) -> float:
    """The frequency (Hz) with the most energy in ``samples``."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[:5] = 0  # not DC
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[int(spectrum.argmax())])


def level_at(samples: np.ndarray, freq: float) -> float:
    """The share of ``samples``' energy within 20 Hz of ``freq`` (0..1)."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    total = power[freqs > 50].sum()
    return float(power[np.abs(freqs - freq) < 20].sum() / total) if total else 0.0


def packets(
    samples: np.ndarray, codec: str = "PCMU", *, ssrc: int = 0x5EED, seq: int = 1000, ts: int = 0
) -> list[bytes]:
    """``samples`` as RTP packets of 20 ms, marker on the first."""
    out = []
    payloads = ENCODE[codec][samples.view(np.uint16)]
    for i in range(len(samples) // FRAME):
        header = struct.pack(
            "!BBHII", 0x80, PT[codec] | (0x80 if i == 0 else 0), (seq + i) & 0xFFFF,
            (ts + i * FRAME) & 0xFFFFFFFF, ssrc,
        )  # fmt: skip
        out.append(header + payloads[i * FRAME : (i + 1) * FRAME].tobytes())
    return out


async def send_stream(phone: Phone, dest: Addr, stream: list[bytes]) -> None:
    """Send ``stream`` one packet per 20 ms (on a fixed grid, like a phone)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, packet in enumerate(stream):
        phone.send(packet, dest)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))


@dataclass
class Stream:
    """RTP packets a phone received, in arrival order."""

    raw: list[bytes] = field(default_factory=list)

    def header(self, i: int) -> tuple[int, int, int, int, int]:
        """(marker, pt, seq, ts, ssrc) of packet ``i``."""
        _, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", self.raw[i])
        return b1 >> 7, b1 & 0x7F, seq, ts, ssrc

    def audio(self, codec: str = "PCMU", pt: int | None = None) -> np.ndarray:
        want = PT[codec] if pt is None else pt
        payload = b"".join(p[12:] for p in self.raw if p[1] & 0x7F == want)
        return DECODE[codec][np.frombuffer(payload, np.uint8)]


async def gather(phone: Phone, seconds: float) -> Stream:
    """Whatever arrives at ``phone`` within ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    got = Stream()
    while (left := end - loop.time()) > 0:
        try:
            data, _ = await phone.recv(left)
        except TimeoutError:
            break
        got.raw.append(data)
    return got
