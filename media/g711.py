"""G.711 µ-law (PCMU) and A-law (PCMA) as NumPy lookup tables.

The media engine decodes, mixes and encodes every 20 ms frame of every session of a worker at
once, so a codec here is a table, and coding any number of frames is one fancy-index:

    linear = ULAW_DECODE[payload]                 # uint8 codes  -> int16 samples
    codes = ULAW_ENCODE[linear.view(np.uint16)]   # int16 samples -> uint8 codes

The tables are built once at import from the ITU-T G.711 segment rules (§2-3 of the
Recommendation, in the form of Sun's reference `g711.c` that CPython's `audioop` also uses), so
they agree bit for bit with `audioop.lin2ulaw` / `ulaw2lin` / `lin2alaw` / `alaw2lin`; the tests
check every one of the 65536 inputs and 256 codes.

Transcoding between the two laws goes through linear (decode, then encode) in one 256-entry
table; it is not the G.711 Appendix direct-conversion table, which differs on a few codes.

Not done here: packet loss concealment (G.711 Appendix I), VAD/comfort noise, other codecs.
"""

from __future__ import annotations

from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T", bound=np.generic)

_ALL_SAMPLES: Final = np.arange(-32768, 32768, dtype=np.int32)
_ALL_CODES: Final = np.arange(256, dtype=np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    # µ-law works on 14-bit magnitudes with a bias of 33 (132 >> 2); segment ends per G.711.
    pcm = _ALL_SAMPLES >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), 8159) + 33
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_end, magnitude, side="left")
    # A clipped magnitude plus the bias lands one past the last segment: the code for "max".
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((magnitude >> (seg + 1)) & 0xF))
    table = (code ^ mask).astype(np.uint8)
    # Index by the uint16 view of an int16 sample: 0..32767 then -32768..-1.
    return np.roll(table, -32768)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    # A-law works on 13-bit values; negative ones are one's-complemented, even bits inverted.
    pcm = _ALL_SAMPLES >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    seg = np.searchsorted(seg_end, magnitude, side="left")
    shift = np.where(seg < 2, 1, seg)
    code = (seg << 4) | ((magnitude >> shift) & 0xF)
    table = (code ^ mask).astype(np.uint8)
    return np.roll(table, -32768)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    u = ~_ALL_CODES & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    a = _ALL_CODES ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _frozen(table: npt.NDArray[T]) -> npt.NDArray[T]:
    table.setflags(write=False)
    return table


ULAW_DECODE: Final = _frozen(_ulaw_decode_table())
ALAW_DECODE: Final = _frozen(_alaw_decode_table())
ULAW_ENCODE: Final = _frozen(_ulaw_encode_table())
ALAW_ENCODE: Final = _frozen(_alaw_encode_table())
ULAW_TO_ALAW: Final = _frozen(ALAW_ENCODE[ULAW_DECODE.view(np.uint16)])
ALAW_TO_ULAW: Final = _frozen(ULAW_ENCODE[ALAW_DECODE.view(np.uint16)])

DECODE: Final[dict[str, npt.NDArray[np.int16]]] = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
ENCODE: Final[dict[str, npt.NDArray[np.uint8]]] = {"PCMU": ULAW_ENCODE, "PCMA": ALAW_ENCODE}
# A single packet is re-coded by `bytes.translate` (C, no array round trip): ~8x faster than
# going through NumPy for 160 bytes.
_TRANSCODE: Final[dict[tuple[str, str], bytes]] = {
    ("PCMU", "PCMA"): ULAW_TO_ALAW.tobytes(),
    ("PCMA", "PCMU"): ALAW_TO_ULAW.tobytes(),
}


def _table(tables: dict[str, npt.NDArray[T]], codec: str) -> npt.NDArray[T]:
    try:
        return tables[codec]
    except KeyError:
        raise ValueError(f"unknown G.711 codec {codec!r} (known: PCMU, PCMA)") from None


def decode(codec: str, payload: bytes | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Linear int16 samples of a PCMU/PCMA payload (bytes, or a uint8 array of any shape)."""
    codes = np.frombuffer(payload, dtype=np.uint8) if isinstance(payload, bytes) else payload
    if codes.dtype != np.uint8:
        raise TypeError(f"G.711 codes must be uint8, not {codes.dtype}")
    return np.take(_table(DECODE, codec), codes)


def encode(codec: str, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """PCMU/PCMA codes (uint8, same shape) of linear int16 samples."""
    if samples.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 samples, not {samples.dtype}")
    return np.take(_table(ENCODE, codec), samples.view(np.uint16))


def transcode(src: str, dst: str, payload: bytes) -> bytes:
    """`payload` coded in `src` re-coded in `dst` (the same bytes when the two are equal)."""
    _table(DECODE, src)
    _table(DECODE, dst)
    if src == dst:
        return payload
    return payload.translate(_TRANSCODE[src, dst])
