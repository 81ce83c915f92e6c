"""Voice prompts and music on hold: where the files are, and which to play to say a phrase.

The packaged set lives beside this module (package data, made by `scripts/make-prompts` from
`media/prompts/texts.yaml`; nothing is synthesised at run time):

    media/prompts/<language>/<name>.wav   speech, one folder per language (en, ru)
    media/prompts/common/<name>.wav       sounds of no language (the voicemail beep); every
                                          language falls back to these
    media/prompts/moh/<name>.wav          music on hold (default: a 24 s seamless loop)

An installation can point `Prompts(root=...)` at its own folder of the same layout (a company's
recorded greeting, another language); any WAV `media.audio.load_wav` reads will do.

A phrase with a number in it is a list of prompt names to play in order: `queue_position("ru",
21)` is `["queue-position", "n20", "n1"]` ("Ваш номер в очереди: двадцать один"), and
`wait_minutes("ru", 21)` is `["wait-about", "n20", "n1f", "minute-1"]` ("Ожидание займёт
примерно двадцать одну минуту"). Russian needs the noun's plural form after a number (1, 21:
минуту; 2-4, 22-24: минуты; 0, 5-20, 25-30: минут) and the feminine accusative of 1 and 2 before
"минуту/минуты" (одну, две); the queue position avoids ordinals ("вы двадцать первый") by saying
"your number in the queue is N", where N is a plain masculine cardinal.

Not done here: numbers past 99 (a queue that long should overflow, not count), other languages'
grammar (a new language needs its rules in `_RULES`), playing anything (the media engine plays).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from media.audio import AudioCache

PACKAGED: Final = Path(__file__).resolve().parent / "prompts"
"""The prompts shipped with softswitch."""

COMMON: Final = "common"
MOH: Final = "moh"


class PromptNotFound(KeyError):
    """A language or prompt that is not in the prompt folder; the message says which."""

    def __str__(self) -> str:
        return str(self.args[0])


def _check_range(what: str, n: int, low: int) -> None:
    if not low <= n <= 99:
        raise ValueError(f"{what} {n} cannot be said: prompts cover {low}..99")


def _number(n: int, gender: str, *, feminine: bool) -> list[str]:
    """Names for 0..99 from n0..n19 and the tens; `feminine` uses n1f/n2f for 1 and 2."""
    _check_range("number", n, 0)
    if gender not in ("m", "f"):
        raise ValueError(f"gender must be 'm' or 'f', not {gender!r}")
    tens, unit = (0, n) if n < 20 else (n // 10 * 10, n % 10)
    names = [f"n{tens}"] if tens else []
    if unit or not tens:
        female = feminine and gender == "f" and unit in (1, 2)
        names.append(f"n{unit}f" if female else f"n{unit}")
    return names


def _en_number(n: int, gender: str) -> list[str]:
    return _number(n, gender, feminine=False)


def _ru_number(n: int, gender: str) -> list[str]:
    return _number(n, gender, feminine=True)


def _en_queue_position(n: int) -> list[str]:
    return ["queue-you-are", *_en_number(n, "m"), "queue-in-queue"]


def _ru_queue_position(n: int) -> list[str]:
    return ["queue-position", *_ru_number(n, "m")]


def _en_wait(m: int) -> list[str]:
    return ["wait-about", *_en_number(m, "m"), "minute" if m == 1 else "minutes"]


def ru_plural(n: int) -> str:
    """The Russian plural form after `n`: "1" (минуту), "2" (минуты) or "5" (минут)."""
    if n % 10 == 1 and n % 100 != 11:
        return "1"
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return "2"
    return "5"


def _ru_wait(m: int) -> list[str]:
    return ["wait-about", *_ru_number(m, "f"), f"minute-{ru_plural(m)}"]


@dataclass(frozen=True, slots=True)
class _Rules:
    number: Callable[[int, str], list[str]]
    queue_position: Callable[[int], list[str]]
    wait: Callable[[int], list[str]]


_RULES: Final = {
    "en": _Rules(_en_number, _en_queue_position, _en_wait),
    "ru": _Rules(_ru_number, _ru_queue_position, _ru_wait),
}


class Prompts:
    """A folder of prompts by language and name, loaded through an `AudioCache`."""

    def __init__(self, root: Path | None = None, cache: AudioCache | None = None) -> None:
        self.root = PACKAGED if root is None else Path(root)
        self.cache = AudioCache() if cache is None else cache

    def languages(self) -> list[str]:
        """The languages that have a folder of prompts."""
        if not self.root.is_dir():
            return []
        skip = {COMMON, MOH}
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name not in skip)

    def _folder(self, lang: str) -> Path:
        if lang in (COMMON, MOH) or not (self.root / lang).is_dir():
            known = ", ".join(self.languages()) or "none"
            raise PromptNotFound(f"no prompts in language {lang!r} in {self.root} (known: {known})")
        return self.root / lang

    def names(self, lang: str) -> list[str]:
        """The prompts that can be played in `lang` (its own and the common ones)."""
        folders = [self._folder(lang), self.root / COMMON]
        return sorted({p.stem for folder in folders for p in folder.glob("*.wav")})

    def path(self, lang: str, name: str) -> Path:
        """The file of prompt `name` in `lang` (or the common one)."""
        for folder in (self._folder(lang), self.root / COMMON):
            path = folder / f"{name}.wav"
            if path.is_file():
                return path
        raise PromptNotFound(f"no prompt {name!r} in language {lang!r} in {self.root}")

    def load(self, lang: str, name: str) -> npt.NDArray[np.int16]:
        """Prompt `name` in `lang` as 8 kHz mono int16 (shared and read-only: do not modify)."""
        return self.cache.get(self.path(lang, name))

    def moh(self, name: str = "default") -> Path:
        """The file of music on hold `name`."""
        path = self.root / MOH / f"{name}.wav"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (self.root / MOH).glob("*.wav"))) or "none"
            raise PromptNotFound(f"no music on hold {name!r} in {self.root} (known: {known})")
        return path

    def load_moh(self, name: str = "default") -> npt.NDArray[np.int16]:
        """Music on hold `name` as 8 kHz mono int16, to loop (shared and read-only)."""
        return self.cache.get(self.moh(name))

    def _rules(self, lang: str) -> _Rules:
        try:
            return _RULES[lang]
        except KeyError:
            known = ", ".join(_RULES)
            raise PromptNotFound(
                f"no number rules for language {lang!r} (known: {known})"
            ) from None

    def number(self, lang: str, n: int, *, gender: str = "m") -> list[str]:
        """Prompt names that say `n` (0..99); `gender="f"` is Russian одну/две (accusative)."""
        return self._rules(lang).number(n, gender)

    def queue_position(self, lang: str, n: int) -> list[str]:
        """Prompt names for "you are number `n` (1..99) in the queue"."""
        _check_range("queue position", n, 1)
        return self._rules(lang).queue_position(n)

    def wait_minutes(self, lang: str, m: int) -> list[str]:
        """Prompt names for "the wait is about `m` minutes" (0: "less than a minute"; up to 99)."""
        _check_range("wait of minutes", m, 0)
        rules = self._rules(lang)
        return ["wait-under-minute"] if m == 0 else rules.wait(m)
