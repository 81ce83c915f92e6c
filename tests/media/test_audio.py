"""Loading WAV files (checked by spectrum) and the cache; files written by the stdlib `wave`."""

from __future__ import annotations

import os
import struct
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.audio import AudioCache, AudioError, fade_in, fade_out, load_wav


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> npt.NDArray[np.float64]:
    t = np.arange(round(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def write_pcm(path: Path, samples: npt.NDArray[np.float64], rate: int, width: int = 2) -> Path:
    """`samples` (frames,) or (frames, channels) in [-1, 1) as integer PCM, by `wave`."""
    frames = samples.reshape(len(samples), -1)
    if width == 1:
        raw = np.rint(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.rint(frames * (2**23 - 1)).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        ints = np.rint(frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}")
        raw = ints.tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def write_raw_wav(path: Path, tag: int, channels: int, rate: int, bits: int, data: bytes) -> Path:
    """A WAV whose 'fmt ' chunk says anything (float, A-law, …): the cases `wave` cannot write."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def spectrum_peak(samples: npt.NDArray[np.int16], rate: int = 8000) -> tuple[float, float]:
    """The strongest frequency and the share of energy within 50 Hz of it."""
    window = np.hanning(len(samples))
    power = np.abs(np.fft.rfft(samples * window)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    peak = float(freqs[np.argmax(power)])
    near = power[np.abs(freqs - peak) <= 50].sum()
    return peak, float(near / power.sum())


def rms(samples: npt.NDArray[np.integer]) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_a_1khz_tone_at_48khz_stereo_becomes_8khz_mono_with_its_peak_at_1khz(
    tmp_path: Path,
) -> None:
    left = tone(1000, 48000, 1.0)
    path = write_pcm(tmp_path / "t.wav", np.stack([left, left], axis=1), 48000)
    samples = load_wav(path)
    assert samples.dtype == np.int16 and samples.shape == (8000,)
    peak, share = spectrum_peak(samples)
    assert peak == pytest.approx(1000, abs=2)
    assert share > 0.999
    assert rms(samples) == pytest.approx(0.5 * 32768 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 11025])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_common_pcm_layout_loads_to_the_same_tone(
    tmp_path: Path, rate: int, width: int, channels: int
) -> None:
    mono = tone(700, rate, 0.5)
    path = write_pcm(tmp_path / "t.wav", np.repeat(mono[:, None], channels, axis=1), rate, width)
    samples = load_wav(path)
    assert len(samples) == 4000
    peak, share = spectrum_peak(samples)
    assert peak == pytest.approx(700, abs=4)
    assert share > (0.99 if width == 1 else 0.999)  # 8-bit adds its quantisation noise
    assert rms(samples) == pytest.approx(0.5 * 32768 / np.sqrt(2), rel=0.02)


def test_8khz_16bit_mono_loads_bit_exact(tmp_path: Path) -> None:
    ints = np.random.default_rng(3).integers(-32768, 32768, 1234, dtype=np.int16)
    path = tmp_path / "exact.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ints.tobytes())
    np.testing.assert_array_equal(load_wav(path), ints)


def test_content_above_4khz_is_filtered_out_not_folded_back(tmp_path: Path) -> None:
    # A 6 kHz tone at 48 kHz would alias to 2 kHz in a naive decimation to 8 kHz.
    path = write_pcm(tmp_path / "hi.wav", tone(6000, 48000, 1.0), 48000)
    steady = load_wav(path)[400:-400]  # the tone's abrupt start and end are broadband clicks
    assert rms(steady) < 0.001 * 32768


def test_stereo_channels_are_averaged(tmp_path: Path) -> None:
    left = tone(500, 8000, 0.5)
    opposite = write_pcm(tmp_path / "o.wav", np.stack([left, -left], axis=1), 8000)
    assert np.abs(load_wav(opposite)).max() <= 1
    one_side = write_pcm(tmp_path / "l.wav", np.stack([left, 0 * left], axis=1), 8000)
    assert rms(load_wav(one_side)) == pytest.approx(rms(load_wav(write_pcm(
        tmp_path / "m.wav", left / 2, 8000))), rel=0.001)  # fmt: skip


@pytest.mark.parametrize(("tag", "bits"), [(3, 32), (3, 64)])
def test_float_wav_loads(tmp_path: Path, tag: int, bits: int) -> None:
    data = tone(1000, 16000, 0.5).astype(f"<f{bits // 8}").tobytes()
    samples = load_wav(write_raw_wav(tmp_path / "f.wav", tag, 1, 16000, bits, data))
    assert spectrum_peak(samples)[0] == pytest.approx(1000, abs=4)
    assert rms(samples) == pytest.approx(0.5 * 32768 / np.sqrt(2), rel=0.01)


def test_wave_format_extensible_pcm_loads(tmp_path: Path) -> None:
    ints = (tone(1000, 8000, 0.25) * 32767).astype("<i2")
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 16000, 2, 16)
    # cbSize, valid bits, channel mask, SubFormat GUID (KSDATAFORMAT_SUBTYPE_PCM).
    fmt += struct.pack("<HHI", 22, 16, 4) + bytes.fromhex("0100000000001000800000aa00389b71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", ints.nbytes) + ints.tobytes()
    path = tmp_path / "ext.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    np.testing.assert_array_equal(load_wav(path), ints)


def test_chunks_before_and_after_the_audio_are_skipped(tmp_path: Path) -> None:
    ints = np.arange(-50, 51, dtype="<i2")
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    junk = b"LIST" + struct.pack("<I", 5) + b"INFOx\x00"  # odd size: padded to even
    body = b"WAVE" + junk + b"fmt " + struct.pack("<I", 16) + fmt
    body += b"data" + struct.pack("<I", ints.nbytes) + ints.tobytes() + junk
    path = tmp_path / "chunks.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    np.testing.assert_array_equal(load_wav(path), ints)


def test_bad_files_are_refused_with_the_file_and_the_reason(tmp_path: Path) -> None:
    def refused(path: Path, reason: str) -> None:
        with pytest.raises(AudioError, match=reason) as info:
            load_wav(path)
        assert str(path) in str(info.value)

    text = tmp_path / "notes.wav"
    text.write_text("hello, this is not audio")
    refused(text, r"not a WAV file \(starts with b'hello, this ")
    refused(tmp_path / "missing.wav", "cannot read: No such file or directory")
    refused(write_raw_wav(tmp_path / "a.wav", 6, 1, 8000, 8, b"\xd5" * 80), "A-law WAV is not")
    refused(write_raw_wav(tmp_path / "m.wav", 0x55, 2, 44100, 0, b"\xff" * 80), "MP3 WAV is not")
    refused(write_raw_wav(tmp_path / "odd.wav", 0x1234, 1, 8000, 16, b""), "format tag 0x1234")
    refused(write_raw_wav(tmp_path / "12.wav", 1, 1, 8000, 12, b"\x00" * 30), "12-bit integer")
    refused(write_raw_wav(tmp_path / "empty.wav", 1, 1, 8000, 16, b""), "has no audio")
    whole = write_pcm(tmp_path / "cut.wav", tone(440, 8000, 1.0), 8000).read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    refused(tmp_path / "cut.wav", r"truncated: header says 16000 bytes of audio, file has 7978")
    (tmp_path / "nofmt.wav").write_bytes(b"RIFF\x0c\x00\x00\x00WAVEdata\x00\x00\x00\x00")
    refused(tmp_path / "nofmt.wav", "'data' chunk before the 'fmt ' chunk")


def test_cache_converts_once_and_reloads_a_changed_file(tmp_path: Path) -> None:
    path = write_pcm(tmp_path / "greeting.wav", tone(500, 16000, 0.5), 16000)
    cache = AudioCache()
    first = cache.get(path)
    assert cache.get(str(path)) is first
    assert cache.get(tmp_path / "." / "greeting.wav") is first  # keyed by the resolved path
    assert not first.flags.writeable
    write_pcm(path, tone(900, 16000, 0.25), 16000)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = cache.get(path)
    assert second is not first and len(second) == 2000
    assert spectrum_peak(second)[0] == pytest.approx(900, abs=4)
    assert len(cache) == 1 and cache.nbytes == second.nbytes


def test_cache_is_bounded_and_drops_the_least_recently_used(tmp_path: Path) -> None:
    paths = [write_pcm(tmp_path / f"{i}.wav", tone(300 + i, 8000, 0.5), 8000) for i in range(4)]
    cache = AudioCache(max_bytes=3 * 8000)  # room for three 0.5 s files (8000 bytes each)
    a, _, _ = (cache.get(p) for p in paths[:3])
    assert cache.get(paths[0]) is a  # 0 is now the most recent; 1 is the oldest
    cache.get(paths[3])
    assert len(cache) == 3 and cache.nbytes == 3 * 8000
    assert cache.get(paths[0]) is a
    assert cache.get(paths[3]) is cache.get(paths[3])
    big = write_pcm(tmp_path / "big.wav", tone(300, 8000, 2.0), 8000)
    assert cache.get(big) is not cache.get(big)  # larger than the cache: not kept
    assert cache.nbytes <= cache.max_bytes


def test_cache_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"gone\.wav: cannot read"):
        AudioCache().get(tmp_path / "gone.wav")


def test_fades_start_and_end_in_silence_and_leave_the_middle(tmp_path: Path) -> None:
    loud = np.full(8000, 10000, dtype=np.int16)
    rising = fade_in(loud, 100)
    assert rising[0] < 10 and rising[799] > 9990 and (rising[800:] == 10000).all()
    assert (np.diff(rising[:800].astype(np.int32)) >= 0).all()
    falling = fade_out(loud, 100)
    assert falling[-1] < 10 and falling[-800] > 9990 and (falling[:-800] == 10000).all()
    np.testing.assert_array_equal(falling, rising[::-1])
    assert (loud == 10000).all()  # a copy: the (cached, shared) input is untouched
    stereo = np.stack([loud, -loud], axis=1)
    np.testing.assert_array_equal(fade_in(stereo, 100)[:, 1], -rising)
    short = fade_out(loud[:10], 1000)  # longer than the sound: the whole sound is the fade
    assert short[0] < 10000 and short[-1] < 1000 and (np.diff(short) < 0).all()
