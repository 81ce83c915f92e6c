"""DTMF in SIP INFO bodies: read what phones and gateways send, write what they accept.

Two bodies are in use (neither is an RFC; both are vendor conventions everyone copied):

- ``application/dtmf-relay`` (Cisco): ``Signal=5\\r\\nDuration=160\\r\\n``, the duration in
  ms. Read leniently: keys in any case, spaces around ``=``, ``\\n`` or ``\\r`` line ends,
  the signal as the key itself or as its RFC 4733 event code (``10`` for ``*``).
- ``application/dtmf``: the body is the key (``5``, ``*``) or its event code (``10``, ``11``).

A body that says no valid key gives None, never an exception: the B2BUA answers the INFO
200 OK either way and the call goes on. It does not know the INFO method or its transaction;
the B2BUA hands over the Content-Type and the body.
"""

from __future__ import annotations

import re
from typing import Final

from media.dtmf.digit import DIGITS, Digit, check_digit

RELAY: Final = "application/dtmf-relay"
PLAIN: Final = "application/dtmf"
_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_NUMBER: Final = re.compile(r"[0-9]{1,6}")
MAX_BODY: Final = 1024
"""Longer bodies are not DTMF and are not read."""


def parse_info(content_type: str, body: bytes) -> Digit | None:
    """The key an INFO body carries, or None when the body is not DTMF or says no valid key."""
    kind = content_type.partition(";")[0].strip().lower()
    if kind not in (RELAY, PLAIN) or len(body) > MAX_BODY:
        return None
    text = body.decode("latin-1")
    if kind == PLAIN:
        key = _key(text.strip())
        return None if key is None else Digit(key, 0)
    fields: dict[str, str] = {}
    for line in _LINE_END.split(text):
        name, _, value = line.partition("=")
        fields.setdefault(name.strip().lower(), value.strip())
    key = _key(fields.get("signal", ""))
    if key is None:
        return None
    duration = fields.get("duration", "")
    return Digit(key, int(duration) if _NUMBER.fullmatch(duration) else 0)


def _key(text: str) -> str | None:
    """``5``, ``*``, ``a`` or an event code ``0``-``15`` as a key of `DIGITS`; else None."""
    if len(text) == 1 and text.upper() in DIGITS:
        return text.upper()
    if _NUMBER.fullmatch(text) and int(text) < len(DIGITS):
        return DIGITS[int(text)]
    return None


def info_body(digit: str, duration_ms: int = 160, content_type: str = RELAY) -> bytes:
    """The INFO body for one key press; ValueError for a non-DTMF key or unknown body type.

    ``application/dtmf`` carries the key itself and no duration.
    """
    key = DIGITS[check_digit(digit)]
    kind = content_type.partition(";")[0].strip().lower()
    if kind == PLAIN:
        return key.encode()
    if kind != RELAY:
        raise ValueError(f"no DTMF body for Content-Type {content_type!r} (use {RELAY} or {PLAIN})")
    if duration_ms < 0:
        raise ValueError(f"duration {duration_ms} ms is negative")
    return f"Signal={key}\r\nDuration={duration_ms}\r\n".encode()
