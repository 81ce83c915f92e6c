"""The media engine with test phones on 127.0.0.1: playback, bridging, recording, mixing.

Each test phone is a UDP socket that sends real-time RTP (20 ms apart) to an endpoint and
reads what the endpoint sends back; audio is checked by what it is (the dominant frequency,
correlation with the file played), never by timing.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from media import RelayConfig
from media.api import EndpointLike, EngineLike
from media.audio import read_wav
from media.dtmf import tone
from media.engine import MediaEngine
from media.mixer import Mode
from media.worker_engine import EngineSettings
from media.workers import RelayPool
from tests.media.conftest import Phone, port_range
from tests.media.rtp_audio import (
    FRAME,
    dominant,
    gather,
    level_at,
    packets,
    send_stream,
    sine,
)


@pytest.fixture
async def local_engine(tmp_path: Path) -> AsyncIterator[MediaEngine]:
    engine = MediaEngine(recordings=tmp_path, capacity=4)
    yield engine
    engine.close()


@pytest.fixture(params=["in-process", "in-a-worker"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EngineLike]:
    """The engine in this process, and the same operations on the engine of a media worker
    (`media.remote`): every test of the engine's operations runs both ways."""
    if request.param == "in-process":
        local = MediaEngine(recordings=tmp_path, capacity=4)
        yield local
        local.close()
        return
    pool = RelayPool(RelayConfig(**port_range()), 1,
                     engine=EngineSettings(recordings=str(tmp_path)))  # fmt: skip
    await pool.started()
    assert pool.engine is not None
    yield pool.engine
    pool.engine.close()
    pool.close()
    await pool.wait_closed()


Connect = Callable[..., tuple[EndpointLike, Phone]]


@pytest.fixture
def connect(engine: EngineLike, phones: Callable[[], Phone]) -> Connect:
    """An endpoint and the phone it talks to, with the codec agreed."""

    def make(codec: str = "PCMU", events_pt: int | None = 101) -> tuple[EndpointLike, Phone]:
        endpoint = engine.endpoint()
        phone = phones()
        endpoint.attach(phone.addr)
        endpoint.set_format(codec, {"PCMU": 0, "PCMA": 8}[codec], events_pt)
        return endpoint, phone

    return make


def bridged(
    engine: EngineLike, connect: Connect, codec_a: str, codec_b: str
) -> tuple[tuple[EndpointLike, Phone], tuple[EndpointLike, Phone]]:
    """Two endpoints and their phones, bridged in the engine's mixer."""
    a, b = connect(codec_a), connect(codec_b)
    bridge = engine.conference()
    bridge.add(a[0].row)
    bridge.add(b[0].row)
    return a, b


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype(np.int16).tobytes())
    return path


async def test_a_prompt_reaches_the_phone_whole_and_in_order(
    connect: Connect, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    prompt = (rng.standard_normal(8000 * 1) * 3000).astype(np.int16)  # 1 s of noise: unique
    path = write_wav(tmp_path / "noise.wav", prompt)
    endpoint, phone = connect()
    listening = asyncio.ensure_future(gather(phone, 1.6))
    assert await endpoint.play(str(path)) is True
    got = await listening
    assert len(got.raw) == 50
    heads = [got.header(i) for i in range(len(got.raw))]
    assert [h[0] for h in heads] == [1] + [0] * 49  # marker on the talkspurt's first
    assert {h[1] for h in heads} == {0} and len({h[4] for h in heads}) == 1
    seqs = [h[2] for h in heads]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    stamps = [h[3] for h in heads]
    assert all((b - a) & 0xFFFFFFFF == FRAME for a, b in itertools.pairwise(stamps))
    heard = got.audio().astype(np.float64)
    assert np.corrcoef(heard, prompt.astype(np.float64))[0, 1] > 0.99  # G.711 noise only


async def test_two_prompts_are_one_stream(connect: Connect, tmp_path: Path) -> None:
    first = write_wav(tmp_path / "a.wav", sine(500, 0.4))
    second = write_wav(tmp_path / "b.wav", sine(900, 0.4))
    endpoint, phone = connect()
    listening = asyncio.ensure_future(gather(phone, 1.2))
    await endpoint.play([str(first), str(second)])
    await asyncio.sleep(0.1)
    await endpoint.play(str(first))
    got = await listening
    heads = [got.header(i) for i in range(len(got.raw))]
    assert len({h[4] for h in heads}) == 1  # one SSRC across prompts
    seqs = [h[2] for h in heads]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert sum(h[0] for h in heads) == 2  # the pause between plays starts a new talkspurt
    audio = got.audio()
    assert dominant(audio[:3000]) == pytest.approx(500, abs=10)
    assert dominant(audio[3400:6000]) == pytest.approx(900, abs=10)


async def test_music_loops_and_fades_without_a_click(connect: Connect, tmp_path: Path) -> None:
    endpoint, phone = connect()
    loop_file = write_wav(tmp_path / "loop.wav", sine(400, 0.5, level=12000))
    listening = asyncio.ensure_future(gather(phone, 1.6))
    endpoint.start_music(str(loop_file))
    await asyncio.sleep(1.2)
    endpoint.stop_music()
    got = await listening
    audio = got.audio()
    assert len(audio) >= 1.1 * 8000  # more than the 0.5 s file: it looped
    assert np.abs(audio[:8]).max() < 1200  # faded in from silence
    assert np.abs(audio[-8:]).max() < 1200  # and out


async def test_the_packaged_music_on_hold_plays(connect: Connect) -> None:
    endpoint, phone = connect("PCMA")
    listening = asyncio.ensure_future(gather(phone, 0.7))
    endpoint.start_music()
    await asyncio.sleep(0.5)
    endpoint.stop_music()
    got = await listening
    heads = [got.header(i) for i in range(len(got.raw))]
    assert {h[1] for h in heads} == {8} and 20 <= len(heads) <= 30
    assert np.abs(got.audio("PCMA")).max() > 1000  # music, not silence


async def test_pcmu_and_pcma_phones_bridged_hear_each_other(
    engine: EngineLike, connect: Connect
) -> None:
    (a, phone_a), (b, phone_b) = bridged(engine, connect, "PCMU", "PCMA")
    at_a = asyncio.ensure_future(gather(phone_a, 1.4))
    at_b = asyncio.ensure_future(gather(phone_b, 1.4))
    await asyncio.gather(
        send_stream(phone_a, a.address, packets(sine(440, 1.0), "PCMU")),
        send_stream(phone_b, b.address, packets(sine(1250, 1.0), "PCMA")),
    )
    heard_a, heard_b = (await at_a).audio("PCMU"), (await at_b).audio("PCMA")
    assert dominant(heard_a) == pytest.approx(1250, abs=10)
    assert dominant(heard_b) == pytest.approx(440, abs=10)
    assert len(heard_b) >= 0.8 * 8000


async def test_a_bridged_call_is_recorded_caller_left_callee_right(
    engine: EngineLike, connect: Connect, tmp_path: Path
) -> None:
    (a, phone_a), (b, phone_b) = bridged(engine, connect, "PCMU", "PCMA")
    recording = engine.record("call.wav", [a.row, b.row])
    await asyncio.gather(
        send_stream(phone_a, a.address, packets(sine(600, 1.0), "PCMU")),
        send_stream(phone_b, b.address, packets(sine(1500, 1.0), "PCMA")),
    )
    await asyncio.sleep(0.1)
    recording.stop()
    await recording.done  # in a worker, the file and its length are final once it says so
    samples, rate = read_wav(tmp_path / "call.wav")
    assert rate == 8000 and samples.shape[1] == 2
    assert recording.duration == pytest.approx(samples.shape[0] / 8000)
    assert dominant(samples[:, 0]) == pytest.approx(600, abs=10)
    assert dominant(samples[:, 1]) == pytest.approx(1500, abs=10)
    assert level_at(samples[:, 0], 1500) < 0.01 and level_at(samples[:, 1], 600) < 0.01


async def test_a_paused_recording_keeps_its_timeline_in_silence(
    engine: EngineLike, connect: Connect, tmp_path: Path
) -> None:
    a, phone_a = connect()
    recording = engine.record("paused.wav", [a.row], mixed=True)
    sending = asyncio.ensure_future(send_stream(phone_a, a.address, packets(sine(700, 1.5))))
    await asyncio.sleep(0.5)
    recording.paused = True
    await asyncio.sleep(0.5)
    recording.paused = False
    await sending
    recording.stop()
    await recording.done
    samples, _ = read_wav(tmp_path / "paused.wav")
    mono = samples[:, 0]
    quiet = np.abs(mono[int(0.65 * 8000) : int(0.9 * 8000)]).max()
    assert quiet == 0
    assert dominant(mono[int(1.1 * 8000) :]) == pytest.approx(700, abs=10)
    assert len(mono) >= 1.4 * 8000


@pytest.mark.parametrize("mode", ["listen", "whisper", "barge"])
async def test_supervisor_modes_decide_who_hears_whom(
    engine: EngineLike, connect: Connect, mode: str
) -> None:
    tones = {"caller": 500, "agent": 1000, "supervisor": 1700}
    ends = {name: connect() for name in tones}
    call = engine.conference()
    call.add(ends["caller"][0].row)
    call.add(ends["agent"][0].row)
    sup = ends["supervisor"][0].row
    if mode == "listen":
        call.add(sup, Mode.LISTEN)
    elif mode == "whisper":
        call.add(sup, Mode.WHISPER, to=ends["agent"][0].row)
    else:
        call.add(sup, Mode.FULL)
    listening = {n: asyncio.ensure_future(gather(p, 1.4)) for n, (_, p) in ends.items()}
    await asyncio.gather(
        *(send_stream(p, e.address, packets(sine(tones[n], 1.0))) for n, (e, p) in ends.items())
    )
    heard = {n: (await g).audio() for n, g in listening.items()}

    def hears(who: str, whom: str) -> bool:
        return level_at(heard[who], tones[whom]) > 0.1

    expected = {
        "listen": {("caller", "agent"), ("agent", "caller"), ("supervisor", "caller"),
                   ("supervisor", "agent")},
        "whisper": {("caller", "agent"), ("agent", "caller"), ("supervisor", "caller"),
                    ("supervisor", "agent"), ("agent", "supervisor")},
        "barge": {(a, b) for a in tones for b in tones if a != b},
    }[mode]  # fmt: skip
    actual = {(a, b) for a in tones for b in tones if a != b and hears(a, b)}
    assert actual == expected
    for name in tones:
        assert not hears(name, name)  # nobody hears themselves


async def test_a_closed_endpoints_row_leaves_its_conference(local_engine: MediaEngine) -> None:
    engine = local_engine
    # Rows are reused: the next endpoint on a freed row must not be heard in the old mix.
    first, second = engine.endpoint(), engine.endpoint()
    mix = engine.conference()
    mix.add(first.row)
    mix.add(second.row)
    row = second.row
    second.close()
    assert mix.members == [first.row]
    reused = engine.endpoint()
    assert reused.row == row
    third = engine.endpoint()
    mix.add(third.row)  # relinks the conference: the reused row must not come back
    assert sorted(mix.members) == sorted([first.row, third.row])
    assert engine.links.talkers_of(third.row) == [first.row]
    assert engine.links.talkers_of(reused.row) == []
    mix.close()
    assert mix not in engine.links.conferences


def event(digit: int, *, end: bool, duration: int, seq: int, ts: int) -> bytes:
    header = struct.pack("!BBHII", 0x80, 101, seq, ts, 0xD7)
    return header + struct.pack("!BBH", digit, (0x80 if end else 0) | 10, duration)


async def test_collect_takes_rfc4733_digits_once_each(connect: Connect) -> None:
    endpoint, phone = connect()
    seq = 1
    for n, digit in enumerate((1, 2, 2, 11)):  # "1", "2", "2", "#"
        ts = 1000 + n * 4000
        for d in (160, 320, 480):
            phone.send(event(digit, end=False, duration=d, seq=seq, ts=ts), endpoint.address)
            seq += 1
        for _ in range(3):  # the end packet, sent three times (RFC 4733 §2.5.1.4)
            phone.send(event(digit, end=True, duration=640, seq=seq, ts=ts), endpoint.address)
            seq += 1
    assert await endpoint.collect(max_digits=10, timeout=2) == "122"


async def test_collect_stops_at_max_digits_and_times_out(connect: Connect) -> None:
    endpoint, _ = connect()
    for d in "4567":
        endpoint.digit(d)
    assert await endpoint.collect(max_digits=3, timeout=1) == "456"
    assert await endpoint.collect(max_digits=3, timeout=0.2) == "7"  # then nothing in time
    assert await endpoint.collect(max_digits=3, timeout=0.1) == ""


async def test_a_digit_interrupts_an_interruptible_prompt(connect: Connect, tmp_path: Path) -> None:
    endpoint, _ = connect()
    long = write_wav(tmp_path / "long.wav", sine(500, 5.0))
    asyncio.get_running_loop().call_later(0.3, endpoint.digit, "3")
    assert await asyncio.wait_for(endpoint.play(str(long), interrupt=True), 2) is False
    assert await endpoint.collect(1, timeout=0.1) == "3"  # the digit is kept for the menu


async def test_send_digit_is_rfc4733_with_one_timestamp(connect: Connect) -> None:
    endpoint, phone = connect()
    listening = asyncio.ensure_future(gather(phone, 0.5))
    endpoint.send_digit("5", duration_ms=100)
    got = await listening
    events = [p for p in got.raw if p[1] & 0x7F == 101]
    assert len(events) >= 4
    assert {struct.unpack_from("!I", p, 4)[0] for p in events} == {got.header(0)[3]}
    assert all(p[12] == 5 for p in events) and events[-1][13] & 0x80
    assert events[0][1] & 0x80  # marker on the first


async def test_recording_a_phone_ends_at_its_terminator(connect: Connect, tmp_path: Path) -> None:
    endpoint, phone = connect()
    talking = asyncio.ensure_future(send_stream(phone, endpoint.address, packets(sine(800, 3.0))))
    asyncio.get_running_loop().call_later(0.6, endpoint.digit, "#")
    seconds = await endpoint.record(tmp_path / "vm.wav", max_seconds=10)
    assert 0.4 < seconds < 1.5
    samples, _ = read_wav(tmp_path / "vm.wav")
    assert len(samples) == pytest.approx(seconds * 8000)
    assert await endpoint.collect(1, timeout=0.05) == ""  # the "#" that ended it is used
    talking.cancel()


async def test_a_phone_without_telephone_event_ends_a_recording_with_a_tone(
    connect: Connect, tmp_path: Path
) -> None:
    endpoint, phone = connect(events_pt=None)  # so the engine listens for tones
    message = np.concatenate([sine(500, 0.8), tone("#", 120), sine(500, 2.0)])
    talking = asyncio.ensure_future(send_stream(phone, endpoint.address, packets(message)))
    seconds = await asyncio.wait_for(endpoint.record(tmp_path / "vm.wav", max_seconds=10), 5)
    assert 0.7 < seconds < 1.5  # ended by the "#" heard in the audio, not by max_seconds
    assert await endpoint.collect(1, timeout=0.05) == ""  # and the "#" is used up
    talking.cancel()


async def test_reordered_packets_play_in_order(engine: EngineLike, connect: Connect) -> None:
    (a, phone_a), (_, phone_b) = bridged(engine, connect, "PCMU", "PCMU")
    ramp = (np.arange(160 * 30) * 4 - 9600).astype(np.int16)  # rises monotonically
    stream = packets(ramp)
    for i in range(2, len(stream) - 1, 4):  # swap every 4th pair
        stream[i], stream[i + 1] = stream[i + 1], stream[i]
    listening = asyncio.ensure_future(gather(phone_b, 1.0))
    await send_stream(phone_a, a.address, stream)
    heard = (await listening).audio().astype(np.int32).reshape(-1, FRAME)
    talk = heard[np.abs(heard).sum(axis=1) > 0]
    means = talk.mean(axis=1)
    ramp_means = ramp.reshape(-1, FRAME).mean(axis=1)
    # every frame of the ramp came out once, in order (the last may be concealed at half)
    assert len(talk) >= len(ramp_means)
    assert means[: len(ramp_means)] == pytest.approx(ramp_means, abs=150)
