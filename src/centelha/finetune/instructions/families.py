"""The five families by name, and the two readings of a reply that every family offers.

`check(family, expected, reply)` is the exact reading: the reply must be the answer and
nothing else (up to harmless normalising: surrounding space, one trailing period, case
where the family says it is safe). `contains_answer` is the lenient one: the answer
somewhere in the reply. The distance between the two is what DPO is asked to close.
"""

from __future__ import annotations

from centelha.finetune.instructions import dates, extraction, numbers, translation, units

FAMILIES = {numbers.FAMILY: numbers, dates.FAMILY: dates, units.FAMILY: units,
            translation.FAMILY: translation, extraction.FAMILY: extraction}


def check(family: str, expected: str, reply: str) -> bool:
    """Whether `reply` is exactly the expected answer (strip, trailing period, safe case)."""
    return FAMILIES[family].check(expected, reply)


def contains_answer(family: str, expected: str, reply: str) -> bool:
    """Whether the expected answer appears somewhere in `reply` (the lenient reading)."""
    return FAMILIES[family].contains_answer(expected, reply)
