"""Redaction of identifiers in free text: applied to clinical notes on write and to every log line.

The data is synthetic, but the lab rehearses the real discipline: free text may carry
identifiers, so it is scrubbed before it is stored or logged.
"""

from __future__ import annotations

import re

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[REDACTED-SSN]"),
    (re.compile(r"\bMRN[-: ]?[A-Z0-9-]{4,}\b", re.IGNORECASE), "[REDACTED-MRN]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[REDACTED-EMAIL]"),
    (re.compile(r"(?<!\d)(?:\+?1[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\d)"), "[REDACTED-PHONE]"),
    (re.compile(r"\b(?:19|20)\d{2}-\d{2}-\d{2}\b"), "[REDACTED-DATE]"),
    (re.compile(r"\bpat-[0-9a-f]{8,}\b"), "[REDACTED-PATIENT]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
