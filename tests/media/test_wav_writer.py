"""Recordings: WavWriter files read back by the stdlib `wave` and by read_wav, after a crash too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.audio import AudioError, WavWriter, read_wav

ROOT = Path(__file__).resolve().parents[2]


def call_audio(seconds: float, rate: int = 8000) -> npt.NDArray[np.int16]:
    """Stereo noise a recording might hold: caller left, callee right."""
    rng = np.random.default_rng(11)
    return rng.integers(-20000, 20000, (round(seconds * rate), 2), dtype=np.int16)


def write_in_frames(writer: WavWriter, samples: npt.NDArray[np.int16], frame: int = 160) -> None:
    for start in range(0, len(samples), frame):
        writer.write(samples[start : start + frame])


def test_a_closed_recording_is_a_plain_wav_file(tmp_path: Path) -> None:
    audio = call_audio(2.5)
    path = tmp_path / "call.wav"
    with WavWriter(path, channels=2) as writer:
        write_in_frames(writer, audio)
        assert writer.frames == 20000 and writer.duration == 2.5
    with wave.open(str(path)) as w:  # an independent reader agrees on every field
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        assert w.getnframes() == 20000
        np.testing.assert_array_equal(np.frombuffer(w.readframes(20000), "<i2"), audio.ravel())
    samples, rate = read_wav(path)
    assert rate == 8000
    np.testing.assert_array_equal(samples, audio)
    assert path.stat().st_size == 44 + audio.nbytes


def test_mono_takes_one_dimensional_frames(tmp_path: Path) -> None:
    mono = call_audio(0.1)[:, 0].copy()
    with WavWriter(tmp_path / "vm.wav", channels=1, rate=16000) as writer:
        writer.write(mono)
        writer.write(mono.reshape(-1, 1))
    samples, rate = read_wav(tmp_path / "vm.wav")
    assert rate == 16000
    np.testing.assert_array_equal(samples[:, 0], np.concatenate([mono, mono]))


def test_the_header_on_disk_is_current_after_each_second(tmp_path: Path) -> None:
    path = tmp_path / "live.wav"
    writer = WavWriter(path, channels=2)
    write_in_frames(writer, call_audio(1.0))  # 50 frames of 20 ms: one second
    with wave.open(str(path)) as w:
        assert w.getnframes() == 8000
    write_in_frames(writer, call_audio(0.5))
    with wave.open(str(path)) as w:
        assert w.getnframes() == 8000  # the next update is due at 2 s
    writer.flush()
    with wave.open(str(path)) as w:
        assert w.getnframes() == 12000
    writer.close()
    writer.close()


def test_a_writer_killed_mid_call_loses_at_most_the_last_second(tmp_path: Path) -> None:
    path = tmp_path / "crash.wav"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from media.audio import WavWriter
        from tests.media.test_wav_writer import call_audio, write_in_frames
        writer = WavWriter({str(path)!r}, channels=2)
        write_in_frames(writer, call_audio(2.7))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    with wave.open(str(path)) as w:
        assert w.getnframes() == 16000  # the header was last rewritten at 2 s
    samples, rate = read_wav(path)
    assert rate == 8000
    assert 16000 <= len(samples) <= 21600  # whole frames that reached the OS
    np.testing.assert_array_equal(samples, call_audio(2.7)[: len(samples)])


def test_read_wav_trusts_the_file_length_over_a_stale_header(tmp_path: Path) -> None:
    audio = call_audio(1.5)
    path = tmp_path / "stale.wav"
    with WavWriter(path, channels=2) as writer:
        writer.write(audio)
    data = bytearray(path.read_bytes())
    data[40:44] = (0).to_bytes(4, "little")  # died before the first header update
    data[4:8] = (36).to_bytes(4, "little")
    path.write_bytes(bytes(data[:-3]))  # and in the middle of a frame
    samples, _ = read_wav(path)
    np.testing.assert_array_equal(samples, audio[:-1])


def test_read_wav_honours_the_header_when_a_chunk_follows_the_audio(tmp_path: Path) -> None:
    audio = call_audio(0.2)
    path = tmp_path / "tagged.wav"
    with WavWriter(path, channels=2) as writer:
        writer.write(audio)
    with path.open("ab") as f:
        f.write(b"LIST" + (4).to_bytes(4, "little") + b"INFO")
    samples, _ = read_wav(path)
    np.testing.assert_array_equal(samples, audio)


def test_an_existing_recording_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keep.wav"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        WavWriter(path, channels=2)
    assert path.read_bytes() == b"precious"


def test_wrong_samples_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "w.wav"
    with WavWriter(path, channels=2) as writer:
        with pytest.raises(TypeError, match=r"w\.wav: WavWriter takes int16 samples, not float64"):
            writer.write(np.zeros((160, 2)))
        with pytest.raises(ValueError, match=r"shape \(160,\) for a 2-channel file"):
            writer.write(np.zeros(160, dtype=np.int16))
        with pytest.raises(ValueError, match=r"shape \(160, 3\) for a 2-channel"):
            writer.write(np.zeros((160, 3), dtype=np.int16))
        assert writer.frames == 0
    with pytest.raises(ValueError, match="write after close"):
        writer.write(np.zeros((160, 2), dtype=np.int16))
    assert read_wav(path)[0].shape == (0, 2)
    with pytest.raises(ValueError, match="channels >= 1"):
        WavWriter(tmp_path / "none.wav", channels=0)


def test_read_wav_refuses_what_is_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(os.urandom(100))
    with pytest.raises(AudioError, match=r"x\.wav: not a WAV file"):
        read_wav(path)
