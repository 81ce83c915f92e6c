"""The process `bench/media_engine.py` measures (not run by hand).

    media_engine_server.py engine    sessions on one media.engine.MediaEngine
    media_engine_server.py naive     the same sessions done per session (media_engine_naive)

One asyncio loop (uvloop when installed), driven by JSON lines on stdin, one answer line
each on stdout:

    {"op": "open", "kind": K, "n": N, "phone": [host, port], "dir": D, "events": E}
        -> {"send_to": [[host, port], ...], "hear_from": [port, ...]}
       N sessions of kind K (playback, recording, conference) whose phones are all at
       ``phone``; ``send_to``: where the phones send RTP (one address per endpoint fed),
       ``hear_from``: the ports of the endpoints that send back. E: the phones offered
       telephone-event (without it the engine listens for DTMF tones in their audio).
    {"op": "stats"} -> {"ticks", "late_ticks", "packets_in", "packets_out", "tick_us"}
       (tick_us: µs spent in the engine's ticks; 0 for the reference)
    {"op": "close"} -> {"files", "frames", "seconds"}: the WAV files written, their frames
       (8 kHz) in all, and how long the sessions lasted; every session is closed
    end of input -> exit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sys
import time
import wave
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from media_relay_server import read_requests

KINDS = ("playback", "recording", "conference")
ENDPOINTS = {"playback": 1, "recording": 2, "conference": 3}


def _reply(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


class EngineSessions:
    """Sessions on one `MediaEngine`, made as call control makes them."""

    def __init__(self) -> None:
        from media.engine import MediaEngine

        self._engine_class = MediaEngine
        self.engine: Any = None
        self.recordings: list[Any] = []
        self.tick_max = 0.0

    async def open(self, kind: str, n: int, phone: tuple[str, int], folder: str, events: bool):
        from media.mixer import Conference

        engine = self.engine = self._engine_class(recordings=folder, capacity=64)
        self.tick_max = 0.0
        tick = engine.tick

        def timed_tick() -> None:  # the longest tick: what stalls reading the sockets
            started = time.perf_counter()
            tick()
            self.tick_max = max(self.tick_max, time.perf_counter() - started)

        engine.tick = timed_tick
        events_pt = 101 if events else None
        send_to, hear_from = [], []
        for i in range(n):
            endpoints = [engine.endpoint() for _ in range(ENDPOINTS[kind])]
            for endpoint in endpoints:
                endpoint.set_format("PCMU", 0, events_pt)
                send_to.append(list(endpoint.address))
                if kind != "recording":
                    endpoint.attach(phone)
                    hear_from.append(endpoint.address[1])
            if kind == "playback":
                endpoints[0].start_music()
            elif kind == "recording":
                rows = [e.row for e in endpoints]
                self.recordings.append(engine.record(f"session-{i}.wav", rows))
            else:
                conference: Conference = engine.conference()
                for endpoint in endpoints:
                    conference.add(endpoint.row)
        return send_to, hear_from

    def stats(self) -> dict[str, int]:
        s = self.engine.stats
        return {
            "ticks": s.ticks,
            "late_ticks": s.late_ticks,
            "packets_in": s.packets_in,
            "packets_out": s.packets_out,
            "tick_us": round(s.tick_seconds * 1e6),
            "too_late": sum(self.engine.jitter.late),
            "tick_max_us": round(self.tick_max * 1e6),
        }

    def close(self) -> tuple[int, int]:
        frames = 0
        for recording in self.recordings:
            recording.stop()
            frames += recording.writer.frames
        files = len(self.recordings)
        self.recordings = []
        self.engine.close()
        return files, frames


class NaiveSessions:
    """The same sessions in `media_engine_naive`: a timer and protocols per session."""

    def __init__(self) -> None:
        import media_engine_naive as naive

        self.naive = naive
        self.totals = naive.Totals()
        self.sessions: list[Any] = []
        self._music: bytes | None = None

    def music(self) -> bytes:
        if self._music is None:
            from media.audio import AudioCache
            from media.prompts import Prompts

            self._music = AudioCache().get(Prompts().moh()).astype("<i2").tobytes()
        return self._music

    async def open(self, kind: str, n: int, phone: tuple[str, int], folder: str, events: bool):
        naive = self.naive
        loop = asyncio.get_running_loop()
        send_to, hear_from = [], []
        for i in range(n):
            if kind == "playback":
                session = naive.Playback(loop, self.totals, self.music())
            elif kind == "recording":
                session = naive.Recording(loop, self.totals, Path(folder) / f"session-{i}.wav")
            else:
                session = naive.Conference(loop, self.totals)
            for _ in range(ENDPOINTS[kind]):
                peer = None if kind == "recording" else phone
                address = await session.endpoint("127.0.0.1", peer)
                send_to.append(list(address))
                if peer is not None:
                    hear_from.append(address[1])
            self.sessions.append(session)
        for session in self.sessions:
            session.start()
        return send_to, hear_from

    def stats(self) -> dict[str, int]:
        t = self.totals
        return {
            "ticks": t.ticks,
            "late_ticks": t.late_ticks,
            "packets_in": t.packets_in,
            "packets_out": t.packets_out,
            "tick_us": 0,  # the work is spread over the sessions' timers
            "too_late": self.totals.too_late,
        }

    def close(self) -> tuple[int, int]:
        files = frames = 0
        for session in self.sessions:
            session.close()
            if isinstance(session, self.naive.Recording):
                files += 1
                frames += session.frames
        self.sessions = []
        return files, frames


async def serve(impl: str) -> None:
    loop = asyncio.get_running_loop()
    sessions: EngineSessions | NaiveSessions = (
        EngineSessions() if impl == "engine" else NaiveSessions()
    )
    requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle() -> None:
        opened = 0.0
        while True:
            request = await requests.get()
            op = request["op"]
            if op == "open":
                kind, folder = request["kind"], request["dir"]
                phone = (request["phone"][0], request["phone"][1])
                send_to, hear_from = await sessions.open(
                    kind, request["n"], phone, folder, request["events"]
                )
                opened = time.monotonic()
                _reply({"send_to": send_to, "hear_from": hear_from})
            elif op == "stats":
                _reply(sessions.stats())
            elif op == "close":
                seconds = time.monotonic() - opened
                files, frames = sessions.close()
                _reply({"files": files, "frames": frames, "seconds": seconds})
            else:
                _reply({"error": f"unknown op {op!r}"})

    done = read_requests(loop, requests.put_nowait)
    handler = asyncio.ensure_future(handle())
    _reply({"ready": True, "loop": type(loop).__module__})
    await done
    handler.cancel()


def check_wav(path: Path) -> tuple[int, int]:
    """Channels and frames of a WAV file (the bench's check of one recording)."""
    with wave.open(str(path)) as wav:
        return wav.getnchannels(), wav.getnframes()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["engine", "naive"])
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import structlog

    # Warnings only, and never on stdout: that is the control channel.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.impl))
    else:
        uvloop.run(serve(args.impl))


if __name__ == "__main__":
    main()
