"""Telephone numbers: what a dialled or configured string is in E.164 (ITU-T E.164).

Numbering plans are national and change every month (trunk prefixes, the
international prefix, number lengths, emergency short codes), so the rules
come from Google's libphonenumber metadata through the ``phonenumbers``
package, never from a table of our own. A national number needs the
country it is dialled in (ISO 3166 alpha-2: ``RU``, ``US``): in Russia
``8 495 123-45-67`` is ``+74951234567`` and ``8 10 1 212 555 0100`` is
``+12125550100``; in the USA ``011 44 20 7946 0958`` is ``+442079460958``.

Beyond the metadata one habit is accepted: ``00`` as the international
prefix where the country's own is another (Russia's is 8-10, yet phones and
people there dial 00 as in most of the world), when the number is valid
only read that way.

A number is accepted when its length is possible for its country; a
stricter validity check would refuse new ranges before the metadata knows
them, and the carrier has the last word anyway.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat

COUNTRIES = frozenset(phonenumbers.SUPPORTED_REGIONS)


def to_e164(text: str, country: str | None) -> str | None:
    """``text`` as '+' and digits, read in ``country``; None when it is no phone number.

    Without a country only international forms ('+', or '00') are understood.
    """
    text = text.strip()
    candidates = [_parse(text, country)]
    if text.startswith("00"):
        candidates.append(_parse("+" + text[2:], None))
    numbers = [number for number in candidates if number is not None]
    for check in (phonenumbers.is_valid_number, phonenumbers.is_possible_number):
        for number in numbers:
            if check(number):
                return phonenumbers.format_number(number, PhoneNumberFormat.E164)
    return None


def is_emergency(text: str, country: str | None) -> bool:
    """True for the emergency short codes of ``country`` (112, 911, 01, ...)."""
    return country is not None and phonenumbers.is_emergency_number(text, country)


def _parse(text: str, country: str | None) -> PhoneNumber | None:
    if not text.startswith("+") and country is None:
        return None
    try:
        return phonenumbers.parse(text, country)
    except NumberParseException:
        return None
