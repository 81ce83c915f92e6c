"""Audio files: WAV in (prompts, music on hold), WAV out (call recordings), and click-free fades.

Everything the media engine plays is mono int16 at 8000 Hz, the G.711 rate. `load_wav` takes
any common PCM WAV an operator uploads (8/16/22.05/44.1/48 kHz and others, mono or stereo,
8-bit unsigned, 16/24/32-bit integer or 32/64-bit float) and converts it to that: channels are
averaged, the rate is converted by libsoxr (PyPI `soxr`, band-limited, no aliasing from a 48 kHz
file), and the result is rounded and clipped to int16. `AudioCache` does that once per file.

Recordings are written by `WavWriter` progressively: samples go to the file as they arrive,
and at least once per second of audio the header's RIFF and data sizes are rewritten and the
Python buffer is handed to the OS, so a daemon that dies loses at most the last second (the
kernel still has everything flushed; `fsync=True` also survives a power cut, at one disk
sync per second per recording). `read_wav` reads a recording back, and trusts the file's
length over a header left stale by a crash.

The RIFF container is read and written here (a fixed 44-byte header, a chunk walk) rather than
with the standard `wave` module: `wave` knows integer PCM only, trusts the header's sizes (so
it reads a crashed recording as empty) and rewrites the header on every write.

Not done here: compressed WAV (G.711-in-WAV, ADPCM, MP3), other containers, RF64 (a recording
stops at the 4 GiB a RIFF header can count: 37 hours of 8 kHz stereo), metadata chunks.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt
import soxr

RATE: Final = 8000
"""The media engine's sample rate (G.711)."""

_PCM: Final = 0x0001
_IEEE_FLOAT: Final = 0x0003
_EXTENSIBLE: Final = 0xFFFE
_FORMAT_NAMES: Final = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "µ-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")  # RIFF, size, WAVE, fmt, 16, PCM…, data, size
_MAX_DATA: Final = 0xFFFFFFFF - (_HEADER.size - 8)


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class _Format:
    channels: int
    rate: int
    bits: int
    is_float: bool

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8


def _parse_fmt(path: Path, body: bytes) -> _Format:
    if len(body) < 16:
        raise AudioError(f"{path}: 'fmt ' chunk is {len(body)} bytes, needs at least 16")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of the SubFormat GUID
    if tag not in (_PCM, _IEEE_FLOAT):
        name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise AudioError(f"{path}: {name} WAV is not supported, only PCM (convert it to 16-bit)")
    is_float = tag == _IEEE_FLOAT
    if (bits not in (32, 64)) if is_float else (bits not in (8, 16, 24, 32)):
        kind = "float" if is_float else "integer PCM"
        raise AudioError(f"{path}: {bits}-bit {kind} is not supported")
    if channels < 1 or rate < 1:
        raise AudioError(f"{path}: header says {channels} channels at {rate} Hz")
    return _Format(channels, rate, bits, is_float)


def _looks_like_chunk(header: bytes, room: int) -> bool:
    """Whether 8 bytes after a data chunk are another chunk's header rather than more audio."""
    if len(header) < 8:
        return False
    ident, size = struct.unpack("<4sI", header)
    return all(32 <= c < 127 for c in ident) and size <= room - 8


def _read(path: Path, *, recover: bool) -> tuple[_Format, bytes]:
    """The format and the raw sample bytes of a WAV file.

    `recover`: the file may be a recording cut short by a crash, whose header sizes are stale;
    its audio runs to the end of the file (whole frames), unless another chunk follows it.
    Otherwise a data chunk longer than the file is an error (a truncated upload).
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AudioError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a WAV file (starts with {data[:12]!r})")
    fmt: _Format | None = None
    pos = 12
    while pos + 8 <= len(data):
        ident, size = struct.unpack_from("<4sI", data, pos)
        body_at = pos + 8
        if ident == b"fmt ":
            fmt = _parse_fmt(path, data[body_at : body_at + size])
        elif ident == b"data":
            if fmt is None:
                raise AudioError(f"{path}: 'data' chunk before the 'fmt ' chunk")
            room = len(data) - body_at
            end = body_at + size + (size & 1)
            if recover and (size > room or not _looks_like_chunk(data[end : end + 8], room)):
                size = room
            elif size > room:
                raise AudioError(
                    f"{path}: truncated: header says {size} bytes of audio, file has {room}"
                )
            size -= size % fmt.frame_bytes
            return fmt, data[body_at : body_at + size]
        pos = body_at + size + (size & 1)
    if fmt is None:
        raise AudioError(f"{path}: no 'fmt ' chunk")
    raise AudioError(f"{path}: no 'data' chunk")


def _as_float(fmt: _Format, raw: bytes) -> npt.NDArray[np.float32]:
    """Samples as float32 in [-1, 1), shape (frames, channels)."""
    if fmt.is_float:
        return (
            np.frombuffer(raw, dtype=f"<f{fmt.bits // 8}")
            .astype(np.float32)
            .reshape(-1, fmt.channels)
        )
    ints: npt.NDArray[np.integer]
    if fmt.bits == 8:
        ints = np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128  # 8-bit WAV is unsigned
    elif fmt.bits == 24:
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | triples[:, 1] << 8 | triples[:, 2] << 16
        ints -= (ints & 0x800000) << 1  # two's complement sign of bit 23
    else:
        ints = np.frombuffer(raw, dtype=f"<i{fmt.bits // 8}")
    samples = ints.astype(np.float32) * np.float32(2.0 ** (1 - fmt.bits))
    return samples.reshape(-1, fmt.channels)


def _to_int16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    scaled: npt.NDArray[np.float32] = np.rint(samples * np.float32(32768))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def load_wav(path: str | os.PathLike[str]) -> npt.NDArray[np.int16]:
    """A WAV file as the engine plays it: mono int16 at 8000 Hz, shape (frames,).

    Raises `AudioError` for a missing, unreadable, truncated, non-WAV, non-PCM or empty file.
    """
    path = Path(path)
    fmt, raw = _read(path, recover=False)
    if not raw:
        raise AudioError(f"{path}: has no audio")
    mono = _as_float(fmt, raw).mean(axis=1, dtype=np.float32)
    if fmt.rate != RATE:
        mono = np.asarray(soxr.resample(mono, fmt.rate, RATE, quality="HQ"), dtype=np.float32)
    return _to_int16(mono)


def read_wav(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.int16], int]:
    """A WAV file's samples as int16 (frames, channels) and its rate, as recorded.

    Made for recordings: a file whose header sizes are stale (the writer died before its last
    flush) is read to its end. Raises `AudioError` as `load_wav` does, except for emptiness.
    """
    path = Path(path)
    fmt, raw = _read(path, recover=True)
    if not fmt.is_float and fmt.bits == 16:
        return np.frombuffer(raw, dtype="<i2").astype(np.int16).reshape(-1, fmt.channels), fmt.rate
    return _to_int16(_as_float(fmt, raw)), fmt.rate


class AudioCache:
    """Converted files kept in memory, so each prompt is read and resampled once.

    Keyed by the resolved path; an entry is used while the file's mtime and size are what they
    were when it was loaded, and reloaded when the file changed (an operator replaced a
    greeting). At most `max_bytes` of samples are kept, the least recently used go first; a file
    larger than that is converted on every `get`. The arrays handed out are read-only: they are
    shared by every call that plays them. One event loop uses a cache; it takes no lock.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Path, tuple[int, int, npt.NDArray[np.int16]]] = OrderedDict()
        self._bytes = 0

    def get(self, path: str | os.PathLike[str]) -> npt.NDArray[np.int16]:
        """`load_wav(path)`, from memory when the file has not changed since the last time."""
        resolved = Path(path).resolve()
        try:
            st = resolved.stat()
        except OSError as e:
            raise AudioError(f"{path}: cannot read: {e.strerror or e}") from None
        entry = self._entries.get(resolved)
        if entry is not None and entry[:2] == (st.st_mtime_ns, st.st_size):
            self._entries.move_to_end(resolved)
            return entry[2]
        self._drop(resolved)
        samples = load_wav(resolved)
        samples.setflags(write=False)
        if samples.nbytes <= self.max_bytes:
            self._entries[resolved] = (st.st_mtime_ns, st.st_size, samples)
            self._bytes += samples.nbytes
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return samples

    def _drop(self, path: Path) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self._bytes -= entry[2].nbytes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of samples held."""
        return self._bytes


class WavWriter:
    """A 16-bit PCM WAV file written as audio arrives (a call recording).

    The file is created new (an existing file is never overwritten: `FileExistsError`). Each
    `write` appends samples; after every `rate` frames (one second) the writer calls `flush`
    itself. `close` flushes and closes; it is also what leaving a `with` block does.
    """

    def __init__(
        self, path: str | os.PathLike[str], channels: int, rate: int = RATE, *, fsync: bool = False
    ) -> None:
        if channels < 1 or rate < 1:
            raise ValueError(
                f"{path}: a WAV needs channels >= 1 and rate >= 1, not {channels}, {rate}"
            )
        self.path = Path(path)
        self.channels = channels
        self.rate = rate
        self.fsync = fsync
        self._frames = 0
        self._unflushed = 0
        self._file: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 (closed by close())
        self._file.write(self._header())

    def _header(self) -> bytes:
        data = self._frames * self.channels * 2
        block = self.channels * 2
        return _HEADER.pack(
            b"RIFF", data + _HEADER.size - 8, b"WAVE", b"fmt ", 16, _PCM, self.channels,
            self.rate, self.rate * block, block, 16, b"data", data,
        )  # fmt: skip

    @property
    def frames(self) -> int:
        """Frames written so far (a frame is one sample of every channel)."""
        return self._frames

    @property
    def duration(self) -> float:
        """Seconds of audio written so far."""
        return self._frames / self.rate

    def write(self, samples: npt.NDArray[np.int16]) -> None:
        """Append int16 samples: shape (frames, channels), or (frames,) for a mono file."""
        file = self._file
        if file is None:
            raise ValueError(f"{self.path}: write after close")
        if samples.dtype != np.int16:
            raise TypeError(f"{self.path}: WavWriter takes int16 samples, not {samples.dtype}")
        if samples.ndim == 1 and self.channels == 1:
            samples = samples.reshape(-1, 1)
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise ValueError(
                f"{self.path}: samples of shape {samples.shape} for a {self.channels}-channel"
                f" file (want (frames, {self.channels}))"
            )
        frames = samples.shape[0]
        if (self._frames + frames) * self.channels * 2 > _MAX_DATA:
            raise AudioError(f"{self.path}: a WAV file cannot hold more than 4 GiB of audio")
        file.write(samples.astype("<i2", copy=False).tobytes())
        self._frames += frames
        self._unflushed += frames
        if self._unflushed >= self.rate:
            self.flush()

    def flush(self) -> None:
        """Make the header's sizes match what is written and hand everything to the OS."""
        file = self._file
        if file is None:
            return
        end = file.tell()
        file.seek(0)
        file.write(self._header())
        file.seek(end)
        file.flush()
        if self.fsync:
            os.fsync(file.fileno())
        self._unflushed = 0

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _ramp(samples: npt.NDArray[np.int16], ms: float, rate: int) -> npt.NDArray[np.float32]:
    n = min(len(samples), round(ms * rate / 1000))
    # Raised cosine: its slope is zero at both ends, so the fade itself adds no click.
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n + 2)[1:-1])).astype(np.float32)
    return ramp.reshape((n,) + (1,) * (samples.ndim - 1))


def fade_in(samples: npt.NDArray[np.int16], ms: float, rate: int = RATE) -> npt.NDArray[np.int16]:
    """A copy of `samples` (frames first) rising from silence over its first `ms` ms."""
    out = samples.copy()
    ramp = _ramp(samples, ms, rate)
    out[: len(ramp)] = np.rint(samples[: len(ramp)] * ramp)
    return out


def fade_out(samples: npt.NDArray[np.int16], ms: float, rate: int = RATE) -> npt.NDArray[np.int16]:
    """A copy of `samples` (frames first) falling to silence over its last `ms` ms."""
    out = samples.copy()
    ramp = _ramp(samples, ms, rate)[::-1]
    if len(ramp):
        out[-len(ramp) :] = np.rint(samples[-len(ramp) :] * ramp)
    return out
