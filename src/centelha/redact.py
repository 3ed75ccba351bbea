"""Mask personal data in text before it is tokenized (`centelha prepare --redact`).

People train on their own documents, and a language model can repeat what it saw.
This masks what can be recognised by shape: e-mail addresses, phone numbers
(Brazilian and international), Brazilian CPF and CNPJ numbers, and card-like runs of
13–19 digits. Each is replaced by a placeholder such as `<EMAIL>`, so the text keeps its
grammar. Patterns run from the most specific to the least (a CNPJ before a CPF, a card
before a phone), so one number is never half-masked by two rules. It is a safety net,
not a guarantee: names and addresses in free text are not found.
"""

from __future__ import annotations

import re

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    # 00.000.000/0000-00, or 14 bare digits
    ("CNPJ", re.compile(r"(?<!\d)(?:\d{2}\.\d{3}\.\d{3}/\d{4}-\d{2}|\d{14})(?!\d)")),
    # 000.000.000-00, or 11 bare digits
    ("CPF", re.compile(r"(?<!\d)(?:\d{3}\.\d{3}\.\d{3}-\d{2}|\d{11})(?!\d)")),
    # international numbers always start with "+": +55 (11) 91234-5678, +1 415 555 0100
    ("PHONE", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{2,5}\)?){2,4}(?!\d)")),
    # 13–19 digits, optionally grouped by spaces or dashes (cards)
    ("CARD", re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")),
    # national numbers: (11) 91234-5678, 11 91234 5678, (21) 2345-6789
    ("PHONE", re.compile(r"(?<![\w])(?:\(\d{2}\)|\d{2})[ .-]?\d{4,5}[ .-]?\d{4}(?!\d)")),
]


def redact(text: str) -> str:
    """`text` with e-mails, phones, CPF/CNPJ numbers and card numbers masked."""
    for label, pattern in PATTERNS:
        text = pattern.sub(f"<{label}>", text)
    return text
