"""Request bodies as JSON we can safely hold. Used by the request class
(request_hooks.JSONRequest), so every route gets the same rules before its schema runs.

The parser is pydantic-core's (jiter), which already refuses what Python's `json` takes:
bytes that are not UTF-8 (and encoded surrogates), escapes of lone surrogates (I-JSON,
RFC 7493), NaN and Infinity, and nesting beyond ~200 levels (100k levels of `[` make
`json.loads` raise RecursionError, a 500). Two things it accepts, PostgreSQL cannot store:
NUL characters and numbers too large for a double (`1e400` becomes inf); those are
reported per field by `unstorable`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic_core import from_json

NOT_AN_OBJECT = "The request body must be a JSON object."
_BOM = b"\xef\xbb\xbf"
# Digits read as 0 and E as e, so that plain substring searches (far cheaper than a regex
# over a large body) find what might be a number beyond a double: a 3-digit exponent or
# 309+ digits. A false alarm only costs a walk through the values.
_NUMBER_SHAPES = bytes.maketrans(b"123456789E", b"000000000e")


class UnreadableJSON(ValueError):
    """A body that is not JSON we read (a ValueError: Flask answers 400, `silent` None)."""


def loads(data: bytes) -> Any:
    """Parse a request body (a leading BOM is tolerated, as RFC 8259 8.1 allows)."""
    try:
        return from_json(data.removeprefix(_BOM), allow_inf_nan=False)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise UnreadableJSON("The request body is nested too deeply.") from None
        raise UnreadableJSON(f"The request body is not valid JSON ({exc}).") from None


def _suspect(raw: bytes) -> bool:
    """Whether the body may hold a NUL or an infinite number (a raw NUL is not JSON)."""
    if b"\\u0000" in raw:
        return True
    shapes = raw.translate(_NUMBER_SHAPES)
    return b"e000" in shapes or b"e+000" in shapes or b"0" * 309 in shapes


def unstorable(raw: bytes, value: Any) -> dict[str, list[str]]:
    """{field path: [problem]} for each string (or key) with a NUL character and each
    number beyond a double: PostgreSQL refuses both at the INSERT (a 500, not a 422)."""
    if not _suspect(raw):
        return {}
    problems: dict[str, list[str]] = {}
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, str) and "\x00" in node:
            problems[path or "_schema"] = ["Must not contain NUL characters (\\u0000)."]
        elif isinstance(node, float) and not math.isfinite(node):
            problems[path or "_schema"] = ["Must be a finite number."]
        elif isinstance(node, dict):
            for key, child in node.items():
                child_path = f"{path}.{key}" if path else key
                if "\x00" in key:
                    problems[child_path] = ["Must not contain NUL characters (\\u0000)."]
                stack.append((child_path, child))
        elif isinstance(node, list):
            stack.extend((f"{path}.{i}" if path else str(i), c) for i, c in enumerate(node))
    return problems
