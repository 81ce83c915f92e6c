"""A DTMF digit as the rest of the switch sees it, whatever carried it.

RFC 4733 telephone-events, SIP INFO bodies and in-band tones all end as a `Digit`: the key
(one of `DIGITS`), how long it was held, and its level when the carrier says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DIGITS: Final = "0123456789*#ABCD"
"""The sixteen DTMF keys in RFC 4733 event-code order (§3.2: codes 0-15)."""


@dataclass(frozen=True, slots=True)
class Digit:
    """One key press.

    ``duration_ms`` is 0 when the carrier did not say (an INFO body without ``Duration``).
    ``volume`` is the RFC 4733 power level, in -dBm0 (0 is loudest, 63 quietest); 0 when the
    carrier has no level (SIP INFO).
    """

    digit: str
    duration_ms: int
    volume: int = 0


def check_digit(digit: str) -> int:
    """The RFC 4733 event code of ``digit``; ValueError for anything but one DTMF key."""
    code = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise ValueError(f"not a DTMF key: {digit!r} (expected one of {DIGITS})")
    return code
