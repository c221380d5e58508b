"""An independent RFC 8785 (JCS) routine, written from the RFC for the tests alone.

It shares no code with sealtrail: keys are sorted by UTF-16 code units (RFC 8785 §3.2.3),
strings are escaped as ECMAScript's JSON.stringify does (§3.2.2.2), and numbers are limited to
the integers an IEEE double holds exactly, which is all a sealtrail row may contain.
"""

from __future__ import annotations

from typing import Any

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _SHORT:
            out.append(_SHORT[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def jcs(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise ValueError("integer outside the exactly representable range")
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(item) for item in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: key.encode("utf-16-be"))
        return "{" + ",".join(_string(key) + ":" + jcs(value[key]) for key in keys) + "}"
    raise TypeError(f"JCS reference: {type(value).__name__} is not allowed in a row")


def jcs_bytes(value: Any) -> bytes:
    return jcs(value).encode("utf-8")
