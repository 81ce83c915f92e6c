"""G.711 tables against CPython's `audioop` (the reference) over every input, and their laws."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from media import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")  # removed in Python 3.13


@pytest.mark.parametrize(
    ("codec", "lin2", "to_lin"),
    [("PCMU", "lin2ulaw", "ulaw2lin"), ("PCMA", "lin2alaw", "alaw2lin")],
)
def test_tables_agree_with_audioop_on_every_input(
    audioop: ModuleType, codec: str, lin2: str, to_lin: str
) -> None:
    expected_codes = np.frombuffer(getattr(audioop, lin2)(ALL_SAMPLES.tobytes(), 2), np.uint8)
    np.testing.assert_array_equal(g711.encode(codec, ALL_SAMPLES), expected_codes)
    expected_lin = np.frombuffer(getattr(audioop, to_lin)(ALL_CODES.tobytes(), 2), np.int16)
    np.testing.assert_array_equal(g711.decode(codec, ALL_CODES.tobytes()), expected_lin)


def test_table_shapes_and_types() -> None:
    for codec in ("PCMU", "PCMA"):
        assert g711.DECODE[codec].shape == (256,) and g711.DECODE[codec].dtype == np.int16
        assert g711.ENCODE[codec].shape == (65536,) and g711.ENCODE[codec].dtype == np.uint8
        assert not g711.ENCODE[codec].flags.writeable
    assert g711.ULAW_TO_ALAW.shape == g711.ALAW_TO_ULAW.shape == (256,)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_decode_then_encode_gives_back_every_code(codec: str) -> None:
    decoded = g711.decode(codec, ALL_CODES)
    round_trip = g711.encode(codec, decoded)
    # µ-law has two zeros (0x7F = -0 and 0xFF = +0); both decode to 0, which encodes to 0xFF.
    expected = np.where(ALL_CODES == 0x7F, 0xFF, ALL_CODES) if codec == "PCMU" else ALL_CODES
    np.testing.assert_array_equal(round_trip, expected)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_encode_then_decode_error_is_within_half_a_step(codec: str) -> None:
    decoded = g711.decode(codec, g711.encode(codec, ALL_SAMPLES)).astype(np.int32)
    error = np.abs(decoded - ALL_SAMPLES.astype(np.int32))
    # Logarithmic quantisation: the error grows with the magnitude, about 1/32 of it at most
    # (a 4-bit mantissa), and small values come back almost exact.
    assert (error <= np.maximum(np.abs(ALL_SAMPLES.astype(np.int32)) / 16, 16)).all()
    # Quantisation is monotonic: a louder sample never decodes quieter.
    assert (np.diff(decoded) >= 0).all()


def test_encoding_keeps_the_shape_of_a_block_of_frames() -> None:
    block = np.random.default_rng(7).integers(-32768, 32768, (50, 160), dtype=np.int16)
    codes = g711.encode("PCMA", block)
    assert codes.shape == (50, 160) and codes.dtype == np.uint8
    np.testing.assert_array_equal(codes[3], g711.encode("PCMA", block[3]))
    np.testing.assert_array_equal(g711.decode("PCMA", codes)[3], g711.decode("PCMA", codes[3]))


@pytest.mark.parametrize(("src", "dst"), [("PCMU", "PCMA"), ("PCMA", "PCMU")])
def test_transcoding_is_decode_then_encode(src: str, dst: str) -> None:
    payload = ALL_CODES.tobytes()
    via_linear = g711.encode(dst, g711.decode(src, payload)).tobytes()
    assert g711.transcode(src, dst, payload) == via_linear


def test_transcoding_to_the_same_law_is_identity() -> None:
    payload = bytes(range(256))
    assert g711.transcode("PCMU", "PCMU", payload) is payload


def test_unknown_codec_and_wrong_types_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown G.711 codec 'G729' \(known: PCMU, PCMA\)"):
        g711.decode("G729", b"\x00")
    with pytest.raises(ValueError, match="'opus'"):
        g711.transcode("PCMU", "opus", b"\x00")
    with pytest.raises(TypeError, match="int16 samples, not float64"):
        g711.encode("PCMU", np.zeros(160))
