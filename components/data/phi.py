"""Patterns of protected health information (PHI) in free text.

Used twice: the builder scans every question and answer it writes (a match is quarantined, never written), and
the validation gate checks that no record carries a match. The patterns aim at what leaks from clinical systems
into text: dates, record/accession numbers, phone numbers, e-mail addresses, social security numbers and
DICOM-style person names (``Family^Given``). They are deliberately conservative: radiology questions ("Is the
lesion 2 cm?", "Which side, left or right?") do not match.

    >>> find_phi("Seen on 03/04/2019 by Dr. Smith, MRN 1234567")
    ['date', 'mrn']
"""

from __future__ import annotations

import re

PHI_PATTERNS: dict[str, re.Pattern[str]] = {
    "date": re.compile(
        r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-](?:19|20)\d{2}|(?:19|20)\d{2}[/.-]\d{1,2}[/.-]\d{1,2}"
        r"|(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))\b"
    ),
    "mrn": re.compile(
        r"(?i:\b(?:MRN|medical record(?: number)?|patient id|accession(?: number)?)\s*[:#]?\s*\w*\d{4,})"
    ),
    "phone": re.compile(r"(?:\+?\d{1,2}[\s.-])?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"),
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "dicom_name": re.compile(r"\b[A-Za-z][\w'-]*\^[\w'^-]+"),
}

#: The same patterns as one regular expression (for regex-based expectations).
PHI_REGEX = "|".join(f"(?:{p.pattern})" for p in PHI_PATTERNS.values())


def find_phi(text: str) -> list[str]:
    """Names of the PHI patterns found in ``text`` (empty when clean)."""
    return [name for name, pattern in PHI_PATTERNS.items() if pattern.search(text)]
