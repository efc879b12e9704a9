"""Redaction of identifiers in free text: applied to every free-text field of every write (at the
edge, before anything is stored, audited, hashed or logged) and to every log line.

The data is synthetic, but the lab rehearses the real discipline: free text may carry
identifiers, so it is scrubbed before it is stored or logged. Redaction happens before hashing
because the audit hash chain makes whatever is stored permanent.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<![\w-])\d{3}[- ]\d{2}[- ]\d{4}(?![\w-])"), "[REDACTED-SSN]"),
    (re.compile(r"\bMRN\s*[#:=-]?\s*[A-Z0-9][A-Z0-9-]{3,}\b", re.IGNORECASE), "[REDACTED-MRN]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[REDACTED-EMAIL]"),
    (re.compile(r"(?<!\d)(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"), "[REDACTED-PHONE]"),
    (re.compile(r"(?<!\d)\d{10}(?!\d)"), "[REDACTED-PHONE]"),
    (re.compile(r"\b(?:1[89]|20)\d{2}[-/.]\d{1,2}[-/.]\d{1,2}\b"), "[REDACTED-DATE]"),
    (re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b"), "[REDACTED-DATE]"),
    (re.compile(rf"\b{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.IGNORECASE), "[REDACTED-DATE]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS},?\s+\d{{4}}\b", re.IGNORECASE), "[REDACTED-DATE]"),
    (re.compile(r"\bpat-[0-9a-f]{8,}\b"), "[REDACTED-PATIENT]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def free_text(max_length: int):
    """A pydantic validator for a free-text field: redacted, and kept within the column's size."""
    return AfterValidator(lambda value: redact(value)[:max_length])


def FreeText(max_length: int, **field):  # noqa: N802 - reads as a type in the models
    """`Annotated[str, ...]` for free text that may carry PHI: length-checked, then redacted."""
    return Annotated[str, Field(min_length=1, max_length=max_length, **field), free_text(max_length)]
