"""Low-level RFC 3261 §25 grammar helpers shared by the header and URI parsers.

These work on already-unfolded header values (str). They split lists and
parameters while respecting quoted strings and angle brackets, and they are
liberal about linear white space where §25 allows it (RFC 4475 §3.1.1.1).
"""

from __future__ import annotations

import re

from switch.sip.errors import ParseError

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_QUOTED_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)

Params = tuple[tuple[str, str | None], ...]


def is_token(text: str) -> bool:
    return TOKEN_RE.fullmatch(text) is not None


def unquote(text: str) -> str:
    """The content of a quoted-string (§25.1), with quoted-pairs resolved."""
    return _QUOTED_ESCAPE_RE.sub(r"\1", text[1:-1])


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def end_of_quoted(text: str, start: int) -> int:
    """Index just past the quoted-string that opens at ``text[start] == '"'``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError(f"unterminated quoted string: {text[start : start + 40]!r}")


def split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not inside a quoted string or <...>."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = end_of_quoted(text, i)
            continue
        if c == "<":
            close = text.find(">", i)
            if close < 0:
                raise ParseError(f"unterminated '<' in {text[:60]!r}")
            i = close + 1
            continue
        if c == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def split_list(value: str, what: str) -> list[str]:
    """Elements of a comma-separated header (§7.3.1); an empty element is an error."""
    items = [item.strip() for item in split_outside(value, ",")]
    if any(not item for item in items):
        raise ParseError(f"{what}: empty element in list {value[:80]!r}")
    return items


def parse_params(text: str, what: str) -> Params:
    """Parse ``;name[=value]`` pairs (the text starts after the first ';').

    Names are lowercased (parameter names are case-insensitive, §7.3.1);
    quoted values keep their quotes so serialization is faithful.
    """
    if not text.strip():
        raise ParseError(f"{what}: empty parameter")
    params: list[tuple[str, str | None]] = []
    for raw in split_outside(text, ";"):
        name, eq, value = raw.partition("=")
        name = name.strip()
        if not is_token(name):
            raise ParseError(f"{what}: bad parameter {raw.strip()!r}")
        if not eq:
            params.append((name.lower(), None))
            continue
        value = value.strip()
        if value.startswith('"'):
            if end_of_quoted(value, 0) != len(value):
                raise ParseError(f"{what}: bad quoted parameter value {value!r}")
        elif not value or not _is_param_value(value):
            raise ParseError(f"{what}: bad value for parameter {name!r}: {value!r}")
        params.append((name.lower(), value))
    return tuple(params)


# gen-value = token / host / quoted-string; hosts add ':' '[' ']' for IPv6.
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]/]+")


def _is_param_value(value: str) -> bool:
    return _PARAM_VALUE_RE.fullmatch(value) is not None


def param(params: Params, name: str) -> str | None:
    """Value of parameter ``name`` (lowercase), unquoted; '' for a flag; None if absent."""
    for key, value in params:
        if key == name:
            if value is None:
                return ""
            return unquote(value) if value.startswith('"') else value
    return None


def has_param(params: Params, name: str) -> bool:
    return any(key == name for key, _ in params)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def replace_param(params: Params, name: str, value: str | None) -> Params:
    """Params with ``name`` set to ``value`` (added at the end if absent)."""
    out = [(k, value if k == name else v) for k, v in params]
    if not has_param(params, name):
        out.append((name, value))
    return tuple(out)


def parse_uint(text: str, what: str, limit: int = 2**32 - 1) -> int:
    """A non-negative decimal within ``limit`` (§25: CSeq, Expires are 32-bit)."""
    text = text.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 12 or int(text) > limit:
        raise ParseError(f"{what}: expected a number from 0 to {limit}, got {text[:40]!r}")
    return int(text)
