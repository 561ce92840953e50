"""The one rule for a subject id, used by every route, job and gallery write.

An id is what a folder of a batch job, a URL segment and a log line all show, so it is ASCII
letters and digits first, then letters, digits and ``. _ @ -``, 128 characters at most, matched
whole (``fullmatch``: ``$`` would let a trailing newline through, and a look-alike such as a
Cyrillic letter, a zero-width space or a fullwidth letter would print like an existing id).
"""

from __future__ import annotations

import re

from service.errors import InvalidSubjectId

SUBJECT_ID_MAX_CHARS = 128
#: documented in the OpenAPI schema; enforced by ``check_subject_id`` (explicit ASCII ranges,
#: no ``\\w`` or ``\\d``, which would take other scripts' letters and digits)
SUBJECT_ID_PATTERN = rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{SUBJECT_ID_MAX_CHARS - 1}}}"
_RULE = re.compile(SUBJECT_ID_PATTERN)


def is_subject_id(text: str) -> bool:
    """Whether ``text`` is a valid subject id."""
    return _RULE.fullmatch(text) is not None


def check_subject_id(text: str) -> str:
    """``text`` if it is a valid subject id; InvalidSubjectId (422) otherwise."""
    if not is_subject_id(text):
        raise InvalidSubjectId(
            f"{text[:80]!r} is not a subject id: 1 to {SUBJECT_ID_MAX_CHARS} ASCII letters, "
            "digits and . _ @ -, starting with a letter or digit"
        )
    return text
