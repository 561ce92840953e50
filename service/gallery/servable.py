"""What a subject may hold: the service stores only what it can serve back (valid text,
bounded, JSON-encodable metadata). ``Gallery`` checks every subject write with it."""

from __future__ import annotations

import json
from typing import Any

from service.errors import InvalidRequest

#: subject metadata: what the service stores must be what it can serve back
METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of JSON-like data, without recursion (a hostile value can be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > METADATA_MAX_DEPTH:
            return level
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
    return deepest


def check_servable(subject_id: str, name: str | None, metadata: dict[str, Any] | None) -> None:
    """Refuse (InvalidRequest, 422) what could be stored but never served back: text that is
    not valid UTF-8 (a lone surrogate), metadata nested deeper than METADATA_MAX_DEPTH or larger
    than METADATA_MAX_BYTES encoded, values JSON cannot encode (NaN, infinities)."""
    for label, text in (("id", subject_id), ("name", name)):
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequest(
                    f"the subject's {label} is not valid text ({exc.reason})"
                ) from exc
    if metadata is None:
        return
    if _depth(metadata) > METADATA_MAX_DEPTH:
        raise InvalidRequest(f"metadata is nested deeper than {METADATA_MAX_DEPTH} levels")
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"metadata cannot be stored as JSON text ({exc})") from exc
    if len(encoded) > METADATA_MAX_BYTES:
        raise InvalidRequest(f"metadata is {len(encoded)} bytes encoded, over {METADATA_MAX_BYTES}")
