"""The packaged prompts: phrase grammar (Russian table-driven), the files, music on hold's loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import yaml

from media.audio import AudioCache, read_wav
from media.prompts import PACKAGED, PromptNotFound, Prompts, ru_plural

from .test_audio import write_pcm

REQUIRED = [
    "greeting", "menu-invalid", "menu-timeout", "all-busy", "callback-offer", "callback-confirm",
    "voicemail", "beep", "closed", "goodbye", "wait-under-minute",
]  # fmt: skip


@pytest.fixture(scope="module")
def prompts() -> Prompts:
    return Prompts()


# n, "about n minutes" (Ожидание займёт примерно …), "your number in the queue is n"
RUSSIAN = [
    (1, ["n1f", "minute-1"], ["n1"]),  # одну минуту; один
    (2, ["n2f", "minute-2"], ["n2"]),  # две минуты; два
    (4, ["n4", "minute-2"], ["n4"]),  # четыре минуты
    (5, ["n5", "minute-5"], ["n5"]),  # пять минут
    (11, ["n11", "minute-5"], ["n11"]),  # одиннадцать минут
    (12, ["n12", "minute-5"], ["n12"]),  # двенадцать минут
    (14, ["n14", "minute-5"], ["n14"]),  # четырнадцать минут
    (20, ["n20", "minute-5"], ["n20"]),  # двадцать минут
    (21, ["n20", "n1f", "minute-1"], ["n20", "n1"]),  # двадцать одну минуту; двадцать один
    (22, ["n20", "n2f", "minute-2"], ["n20", "n2"]),  # двадцать две минуты; двадцать два
    (25, ["n20", "n5", "minute-5"], ["n20", "n5"]),  # двадцать пять минут
    (99, ["n90", "n9", "minute-5"], ["n90", "n9"]),  # девяносто девять минут
]


@pytest.mark.parametrize(("n", "minutes", "position"), RUSSIAN)
def test_russian_numbers_take_the_right_forms(
    prompts: Prompts, n: int, minutes: list[str], position: list[str]
) -> None:
    assert prompts.wait_minutes("ru", n) == ["wait-about", *minutes]
    assert prompts.queue_position("ru", n) == ["queue-position", *position]


@pytest.mark.parametrize(
    ("n", "form"),
    [(1, "1"), (21, "1"), (101, "1"), (111, "5"), (2, "2"), (3, "2"), (34, "2"), (13, "5"),
     (0, "5"), (10, "5"), (15, "5"), (30, "5"), (112, "5"), (122, "2")],
)  # fmt: skip
def test_russian_plural_rule(n: int, form: str) -> None:
    assert ru_plural(n) == form


@pytest.mark.parametrize(
    ("m", "expected"),
    [(1, ["n1", "minute"]), (2, ["n2", "minutes"]), (13, ["n13", "minutes"]),
     (21, ["n20", "n1", "minutes"]), (40, ["n40", "minutes"]), (99, ["n90", "n9", "minutes"])],
)  # fmt: skip
def test_english_wait_says_one_minute_or_n_minutes(
    prompts: Prompts, m: int, expected: list[str]
) -> None:
    assert prompts.wait_minutes("en", m) == ["wait-about", *expected]


def test_english_queue_position_puts_the_number_inside_the_sentence(prompts: Prompts) -> None:
    assert prompts.queue_position("en", 7) == ["queue-you-are", "n7", "queue-in-queue"]
    assert prompts.queue_position("en", 35) == ["queue-you-are", "n30", "n5", "queue-in-queue"]


def test_numbers_and_gender(prompts: Prompts) -> None:
    assert prompts.number("ru", 0) == ["n0"]
    assert prompts.number("ru", 1) == ["n1"]
    assert prompts.number("ru", 1, gender="f") == ["n1f"]
    assert prompts.number("ru", 12, gender="f") == ["n12"]
    assert prompts.number("ru", 52, gender="f") == ["n50", "n2f"]
    assert prompts.number("en", 1, gender="f") == ["n1"]
    assert prompts.number("en", 19) == ["n19"]
    assert prompts.number("en", 60) == ["n60"]


def test_less_than_a_minute(prompts: Prompts) -> None:
    assert prompts.wait_minutes("en", 0) == prompts.wait_minutes("ru", 0) == ["wait-under-minute"]


def test_what_cannot_be_said_is_refused(prompts: Prompts) -> None:
    with pytest.raises(ValueError, match=r"queue position 0 cannot be said: prompts cover 1\.\.99"):
        prompts.queue_position("en", 0)
    with pytest.raises(ValueError, match="wait of minutes 100 cannot be said"):
        prompts.wait_minutes("ru", 100)
    with pytest.raises(ValueError, match="number -1 cannot be said"):
        prompts.number("ru", -1)
    with pytest.raises(ValueError, match="gender must be 'm' or 'f', not 'n'"):
        prompts.number("ru", 3, gender="n")
    with pytest.raises(PromptNotFound, match=r"no number rules for language 'de' \(known: en, ru"):
        prompts.number("de", 3)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_every_phrase_for_1_to_99_has_its_files(prompts: Prompts, lang: str) -> None:
    names = set(prompts.names(lang))
    for n in range(1, 100):
        for phrase in (prompts.queue_position(lang, n), prompts.wait_minutes(lang, n)):
            assert set(phrase) <= names, (n, phrase)
    assert set(REQUIRED) <= names


def test_files_and_texts_match(prompts: Prompts) -> None:
    texts = yaml.safe_load((PACKAGED / "texts.yaml").read_text(encoding="utf-8"))
    del texts["voices"]
    assert sorted(texts) == prompts.languages() == ["en", "ru"]
    for lang, lines in texts.items():
        assert {p.stem for p in (PACKAGED / lang).glob("*.wav")} == set(lines)


def speech_files() -> list[Path]:
    return sorted(PACKAGED.glob("[!m]*/*.wav"))  # every language and common/, not moh/


@pytest.mark.parametrize("path", speech_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_prompt_is_8khz_mono_16bit_audible_and_starts_and_ends_quietly(path: Path) -> None:
    samples, rate = read_wav(path)
    assert rate == 8000 and samples.shape[1] == 1
    clip = samples[:, 0].astype(np.int32)
    assert 0.2 < len(clip) / rate < 10
    peak = np.abs(clip).max()
    assert 8000 < peak < 32000  # loud enough, with headroom for G.711 and mixing
    # Clips are played back to back: each begins and ends near silence (2 ms), so no seam clicks.
    assert np.abs(clip[:16]).max() < 0.1 * peak and np.abs(clip[-16:]).max() < 0.1 * peak


def test_load_goes_through_the_cache_and_common_sounds_serve_every_language() -> None:
    cache = AudioCache()
    prompts = Prompts(cache=cache)
    greeting = prompts.load("ru", "greeting")
    assert greeting.dtype == np.int16 and greeting.ndim == 1
    assert prompts.load("ru", "greeting") is greeting
    assert prompts.path("en", "beep") == prompts.path("ru", "beep") == PACKAGED / "common/beep.wav"
    assert len(cache) == 1


def test_unknown_language_and_prompt_are_named(prompts: Prompts) -> None:
    with pytest.raises(PromptNotFound) as info:
        prompts.path("de", "greeting")
    assert str(info.value) == f"no prompts in language 'de' in {PACKAGED} (known: en, ru)"
    with pytest.raises(PromptNotFound, match="no prompt 'greting' in language 'en' in"):
        prompts.load("en", "greting")
    with pytest.raises(PromptNotFound, match="language 'moh'"):
        prompts.names("moh")
    with pytest.raises(PromptNotFound, match=r"no music on hold 'jazz' .*\(known: default\)"):
        prompts.moh("jazz")


def test_an_installation_can_bring_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "kk").mkdir()
    (tmp_path / "common").mkdir()
    t = np.arange(4410) / 44100
    write_pcm(tmp_path / "kk" / "greeting.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 44100)
    write_pcm(tmp_path / "common" / "beep.wav", 0.3 * np.sin(2 * np.pi * 1000 * t), 44100)
    own = Prompts(root=tmp_path)
    assert own.languages() == ["kk"]
    assert own.names("kk") == ["beep", "greeting"]
    assert len(own.load("kk", "greeting")) == 800
    assert Prompts(root=tmp_path / "nowhere").languages() == []


def high_band_share(samples: npt.NDArray[np.float64], above: float = 2500) -> float:
    power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    return float(power[np.fft.rfftfreq(len(samples), 1 / 8000) > above].sum() / power.sum())


def test_music_on_hold_loops_without_a_seam(prompts: Prompts) -> None:
    music = prompts.load_moh().astype(np.float64)
    assert 20 <= len(music) / 8000 <= 30
    # The music has no energy above 2.5 kHz; a click at the loop point would spread there.
    seam = np.concatenate([music[-1024:], music[:1024]])
    middle = music[len(music) // 2 - 1024 : len(music) // 2 + 1024]
    assert high_band_share(seam) < 1e-3
    assert high_band_share(seam) < 3 * high_band_share(middle) + 1e-5
    assert abs(music[0] - music[-1]) <= np.percentile(np.abs(np.diff(music)), 99.9)
    # The same check sees a loop cut 3 ms short.
    cut = np.concatenate([music[-1024 - 24 : -24], music[:1024]])
    assert high_band_share(cut) > 10 * high_band_share(seam)


def test_music_on_hold_stays_in_the_telephone_band(prompts: Prompts) -> None:
    music = prompts.load_moh().astype(np.float64)
    power = np.abs(np.fft.rfft(music)) ** 2
    freqs = np.fft.rfftfreq(len(music), 1 / 8000)
    assert power[(freqs >= 300) & (freqs <= 3400)].sum() > 0.99 * power.sum()
    assert 0.1 * 32768 < np.abs(music).max() < 0.5 * 32768  # softer than speech
