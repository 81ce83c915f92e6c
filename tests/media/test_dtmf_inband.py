"""In-band DTMF: key tones found in audio, many session slots per call, as the media clock does.

Each test builds the audio of every slot first, then feeds it 20 ms at a time for all slots
at once, and checks the keys found per slot: each press exactly once, nothing else.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from media import g711
from media.dtmf import DIGITS, InbandDetector, tone
from media.dtmf.inband import DBM0_AMPLITUDE, FRAME, RATE
from tests.media.captures import CAPTURES, rtp_payloads

Audio = npt.NDArray[np.int16]
rng = np.random.default_rng(4733)


def silence(ms: int) -> Audio:
    return np.zeros(ms * RATE // 1000, np.int16)


def keys(sequence: str, gap_ms: int = 50, ms: int = 60) -> Audio:
    """A key sequence as a phone dials it, with silence around and between."""
    parts = [silence(40)]
    for key in sequence:
        parts += [tone(key, ms), silence(gap_ms)]
    return np.concatenate([*parts, silence(60)])


def mix(*parts: Audio) -> Audio:
    """Sounds played together (same length), clipped as a codec would."""
    total = np.sum([p.astype(np.int32) for p in parts], axis=0)
    return np.clip(total, -32768, 32767).astype(np.int16)


def sine(hz: float, ms: int, level_dbm0: float = -10) -> Audio:
    t = np.arange(ms * RATE // 1000) / RATE
    return np.rint(DBM0_AMPLITUDE * 10 ** (level_dbm0 / 20) * np.sin(2 * np.pi * hz * t)).astype(
        np.int16
    )


def detect(
    signals: list[Audio], detector: InbandDetector | None = None, rows: list[int] | None = None
) -> list[str]:
    """The keys found in each signal, fed together frame by frame (shorter ones padded)."""
    frames = -(-max(len(s) for s in signals) // FRAME)
    block = np.zeros((len(signals), frames * FRAME), np.int16)
    for i, s in enumerate(signals):
        block[i, : len(s)] = s
    slots = np.array(rows if rows is not None else range(len(signals)))
    detector = detector or InbandDetector(int(slots.max()) + 1)
    found = {int(row): "" for row in slots}
    for f in range(frames):
        for row, key in detector.feed(slots, block[:, f * FRAME : (f + 1) * FRAME]):
            found[row] += key
    return [found[int(row)] for row in slots]


def mulaw(audio: Audio) -> Audio:
    return g711.decode("PCMU", g711.encode("PCMU", audio))


def alaw(audio: Audio) -> Audio:
    return g711.decode("PCMA", g711.encode("PCMA", audio))


def alaw_decode(data: bytes) -> Audio:
    return g711.decode("PCMA", data)


def noise(ms: int, level_dbm0: float) -> Audio:
    """White noise of that power (a sine of the same level has the same power)."""
    rms = DBM0_AMPLITUDE / np.sqrt(2) * 10 ** (level_dbm0 / 20)
    return np.clip(rng.normal(0, rms, ms * RATE // 1000), -32768, 32767).astype(np.int16)


def speech_like(ms: int, level_dbm0: float = -15) -> Audio:
    """Voiced speech, roughly: harmonics of a pitch that moves every 20 ms, shaped by formants."""
    out = []
    for _ in range(ms // 20):
        f0 = rng.uniform(90, 260)
        formants = rng.uniform((300, 900, 2000), (900, 2200, 3200))
        harmonics = np.arange(f0, 3800, f0)
        gains = sum(np.exp(-(((harmonics - f) / 150) ** 2)) for f in formants) + 0.05
        t = np.arange(160) / RATE
        phases = rng.uniform(0, 2 * np.pi, len(harmonics))
        out.append((gains * np.sin(2 * np.pi * np.outer(t, harmonics) + phases)).sum(1))
    wave = np.concatenate(out)
    wave *= DBM0_AMPLITUDE / np.sqrt(2) * 10 ** (level_dbm0 / 20) / wave.std()
    return np.clip(wave, -32768, 32767).astype(np.int16)


def test_every_key_every_level_and_twist_once() -> None:
    cases = [
        (key, level, twist)
        for key in DIGITS
        for level in (-3, -10, -20, -25)
        for twist in (-7, -3, 0, 3.5)
    ]
    signals = [
        np.concatenate([silence(30), tone(k, 60, level_dbm0=lv, twist_db=tw), silence(60)])
        for k, lv, tw in cases
    ]
    assert detect(signals) == [k for k, _, _ in cases]


@pytest.mark.parametrize("offset_ms", [0, 3, 5, 10, 13, 17])
def test_40_ms_found_20_ms_not_at_any_alignment(offset_ms: int) -> None:
    short = [np.concatenate([silence(40 + offset_ms), tone(k, 20), silence(60)]) for k in "19#"]
    enough = [np.concatenate([silence(40 + offset_ms), tone(k, 40), silence(60)]) for k in "19#"]
    assert detect(short + enough) == ["", "", "", "1", "9", "#"]


def test_dialled_sequences() -> None:
    sequences = ["1234#", "*0#", "9876543210", "ABCD"]
    assert detect([keys(s) for s in sequences]) == sequences
    assert detect([keys("1234#", gap_ms=40, ms=40)]) == ["1234#"]


def test_same_key_again_after_a_pause_not_after_a_break() -> None:
    press = tone("5", 80)
    signals = [
        np.concatenate([silence(40), press, silence(gap), press, silence(60)])
        for gap in (40, 30, 10, 5)
    ]
    assert detect(signals) == ["55", "55", "5", "5"]


def test_long_press_and_key_change_without_pause() -> None:
    held = np.concatenate([silence(20), tone("8", 2000), silence(40)])
    change = np.concatenate([silence(20), tone("1", 60), tone("2", 60), tone("1", 60)])
    assert detect([held, change]) == ["8", "121"]


def test_off_frequency_within_tolerance() -> None:
    def pair(row_hz: float, column_hz: float, deviation: float) -> Audio:
        both = mix(sine(row_hz * (1 + deviation), 80), sine(column_hz * (1 + deviation), 80))
        return np.concatenate([silence(40), both, silence(40)])

    signals = [pair(770, 1336, d) for d in (-0.015, 0.015, -0.035, 0.035)]
    assert detect(signals) == ["5", "5", "", ""]


def test_not_keys() -> None:
    signals = [
        silence(500),
        noise(500, -10),
        noise(500, -30),
        sine(1000, 500),
        mix(sine(350, 500), sine(440, 500)),  # dial tone
        mix(sine(440, 500), sine(554, 500), sine(659, 500)),  # a chord
        sine(697, 500),  # a row tone alone
        sine(1336, 500),  # a column tone alone
        speech_like(3000),
        speech_like(3000, -25),
        tone("5", 100, level_dbm0=-40),  # too quiet
        tone("5", 100, twist_db=6),  # column tone too loud
        tone("5", 100, twist_db=-10),  # row tone too loud
        mix(tone("5", 100), tone("9", 100)),  # two keys at once
    ]
    assert detect(signals) == [""] * len(signals)


@pytest.mark.skipif(not CAPTURES.is_dir(), reason="sip-tester is not installed (scripts/test)")
def test_recorded_audio_is_not_keys_but_keys_over_it_are() -> None:
    """sipp's g711a.pcap: 7 s of real recorded audio as phones send it."""
    recording = alaw_decode(b"".join(p for _, p in rtp_payloads(CAPTURES / "g711a.pcap")))
    assert len(recording) > 7 * RATE
    louder = np.clip(recording.astype(np.int32) * 2, -32768, 32767).astype(np.int16)
    sequence = keys("2580#*14", gap_ms=60, ms=70)
    dialled = np.zeros_like(recording)
    dialled[RATE : RATE + len(sequence)] = sequence
    over = alaw(mix(recording // 4, dialled))  # talking, 12 dB lower, while dialling
    assert detect([recording, louder, over]) == ["", "", "2580#*14"]


def test_key_in_noise_and_over_speech() -> None:
    signals = [
        mix(tone("6", 100, level_dbm0=-10), noise(100, -30)),
        mix(tone("6", 100, level_dbm0=-10), speech_like(100, -22)),
    ]
    assert detect([np.concatenate([silence(40), s, silence(40)]) for s in signals]) == ["6", "6"]


def test_through_g711() -> None:
    sequence = keys("159#D", gap_ms=40, ms=50)
    quiet = keys("26*", ms=60) // 10  # about -30 dBm0 per tone
    assert detect([mulaw(sequence), alaw(sequence), mulaw(quiet)]) == ["159#D", "159#D", "26*"]


def test_many_rows_only_those_with_keys() -> None:
    rows = 500
    base = silence(300)
    signals = [mix(base, noise(300, -45)) for _ in range(rows)]
    pressed = {3: "1", 77: "#", 250: "0", 499: "D"}
    for row, key in pressed.items():
        signals[row] = np.concatenate([silence(100), tone(key, 60), silence(140)])
    for row in range(10, 20):
        signals[row] = speech_like(300)
    assert detect(signals) == [pressed.get(row, "") for row in range(rows)]


def test_rows_are_slots_fed_in_any_order_and_subset() -> None:
    detector = InbandDetector(64)
    first = [keys("12"), keys("34")]
    assert detect(first, detector, rows=[40, 7]) == ["12", "34"]
    assert detect([keys("5")], detector, rows=[63]) == ["5"]


def test_reset_forgets_the_previous_session() -> None:
    detector = InbandDetector(2)
    held = tone("7", 100)
    assert detect([held], detector, rows=[1]) == ["7"]
    assert detect([held], detector, rows=[1]) == [""]  # same press still held
    detector.reset(1)
    assert detect([held], detector, rows=[1]) == ["7"]  # a new session pressing 7


def test_grow_and_bad_input() -> None:
    detector = InbandDetector(2)
    frame = np.zeros((1, FRAME), np.int16)
    with pytest.raises(ValueError, match="grow"):
        detector.feed(np.array([2]), frame)
    with pytest.raises(ValueError, match="shape"):
        detector.feed(np.array([0, 1]), frame)
    with pytest.raises(ValueError, match="shape"):
        detector.feed(np.array([0]), np.zeros((1, 80), np.int16))
    assert detector.feed(np.array([], int), np.zeros((0, FRAME), np.int16)) == []
    detector.grow(1)
    assert detector.capacity == 2
    detector.grow(10)
    signal = [np.concatenate([silence(20), tone("3", 60)])]
    assert detect(signal, detector, rows=[9]) == ["3"]


def test_tone_refuses_non_keys() -> None:
    with pytest.raises(ValueError, match="not a DTMF key"):
        tone("E", 100)
    assert len(tone("1", 100)) == 800
    assert len(tone("1", 100, rate=16000)) == 1600
    # Two sines at -6 dBm0 each: together the power of one sine at -3 dBm0.
    expected_rms = DBM0_AMPLITUDE / np.sqrt(2) * 10 ** (-3 / 20)
    assert tone("1", 1000, level_dbm0=-6).std() == pytest.approx(expected_rms, rel=0.01)
