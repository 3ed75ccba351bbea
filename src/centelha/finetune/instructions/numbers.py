"""Family (a): whole numbers 0–9,999 written out in Brazilian Portuguese, and back.

Conventions (Brazilian usage, checked against a hand-made table in the tests):
- masculine forms ("um", "dois", "duzentos"), as when counting;
- 14 is "quatorze" (the common Brazilian spelling); the checker also accepts "catorze";
- 16, 17, 19 are "dezesseis", "dezessete", "dezenove" (Brazil, not Portugal's "dezasseis");
- 100 alone is "cem", 101–199 "cento e ...";
- below a thousand every part is joined by "e": "trezentos e quarenta e cinco";
- 1,000 is "mil" (never "um mil"); after "mil" comes "e" only when the rest is below 100
  or a whole hundred ("mil e um", "mil e cem", "dois mil e quinhentos"), and no "e"
  otherwise ("mil duzentos e trinta e quatro").
Two directions: digits → words (most examples) and words → digits.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from centelha.finetune.instructions.common import (
    example,
    normalise,
    pick_from_pool,
    split_of,
)

FAMILY = "number_words"

UNITS = ["zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove",
         "dez", "onze", "doze", "treze", "quatorze", "quinze", "dezesseis", "dezessete",
         "dezoito", "dezenove"]
TENS = ["", "", "vinte", "trinta", "quarenta", "cinquenta", "sessenta", "setenta",
        "oitenta", "noventa"]
HUNDREDS = ["", "cento", "duzentos", "trezentos", "quatrocentos", "quinhentos",
            "seiscentos", "setecentos", "oitocentos", "novecentos"]
VARIANTS = {"catorze": "quatorze"}  # accepted spellings, mapped to ours before comparing
NUMBER_WORDS = set(UNITS) | set(TENS[2:]) | set(HUNDREDS[1:]) | {"cem", "mil", "catorze"}

TO_WORDS = {
    "pt": ["Escreva o número {n} por extenso.",
           "Como se escreve {n} por extenso?",
           "Escreva {n} por extenso, em português.",
           "Qual é a forma por extenso de {n}? Responda só com as palavras.",
           "Por extenso, por favor: {n}"],
    "en": ["Write the number {n} out in Portuguese words.",
           "How do you spell out {n} in Portuguese?",
           "Spell {n} in Portuguese words.",
           "Give the Portuguese words for the number {n}. Answer with the words only."],
}
TO_DIGITS = {
    "pt": ["Escreva em algarismos: {w}.",
           "Que número é \"{w}\"? Responda com algarismos.",
           "Converta para algarismos: {w}"],
    "en": ["Write in digits: \"{w}\" (Portuguese).",
           "Which number is the Portuguese \"{w}\"? Answer in digits.",
           "Convert the Portuguese number words \"{w}\" to digits."],
}


def _below_thousand(n: int) -> list[str]:
    """The parts of 1–999, to be joined by " e "."""
    if n == 100:
        return ["cem"]
    parts = []
    if n >= 100:
        parts.append(HUNDREDS[n // 100])
        n %= 100
    if n >= 20:
        parts.append(TENS[n // 10])
        n %= 10
    if n:
        parts.append(UNITS[n])
    return parts


def number_words(n: int) -> str:
    """0–9,999 in Brazilian Portuguese words (see the module docstring for the rules)."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number_words covers 0–9999, not {n}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = ""
    if thousands:
        words = "mil" if thousands == 1 else f"{UNITS[thousands]} mil"
        if not rest:
            return words
        # "mil e um", "mil e cem", but "mil duzentos e trinta e quatro"
        joiner = " e " if rest < 100 or rest % 100 == 0 else " "
        return words + joiner + " e ".join(_below_thousand(rest))
    return " e ".join(_below_thousand(rest))


def _canonical_words(text: str) -> str:
    return " ".join(VARIANTS.get(w, w) for w in normalise(text).split(" "))


def check(expected: str, reply: str) -> bool:
    if expected.isdigit():
        return normalise(reply) == expected
    return _canonical_words(reply) == _canonical_words(expected)


def contains_answer(expected: str, reply: str) -> bool:
    """The answer somewhere in the reply, as a whole number: not the start of a longer one."""
    if expected.isdigit():
        return re.search(rf"(?<![\d.,]){expected}(?![\d]|[.,]\d)", reply) is not None
    exp, rep = _canonical_words(expected), _canonical_words(reply)
    for m in re.finditer(rf"(?<!\w){re.escape(exp)}(?!\w)", rep):
        before, after = rep[:m.start()].split(), rep[m.end():].split()
        # "dois mil" inside "dois mil e trezentos" is another number, not this one
        if before and before[-1] in NUMBER_WORDS | {"e"}:
            continue
        if after and (after[0] in NUMBER_WORDS or (after[0] == "e" and len(after) > 1
                                                   and after[1] in NUMBER_WORDS)):
            continue
        return True
    return False


def generate(rng: random.Random, split: str, n: int) -> list[dict]:
    pool = [k for k in range(10000) if split_of(FAMILY, str(k)) == split]
    out = []
    for k in pick_from_pool(rng, pool, n):
        lang = rng.choice(["pt", "en"])
        if rng.random() < 0.75:
            request = rng.choice(TO_WORDS[lang]).format(n=k)
            answer = number_words(k)
        else:
            request = rng.choice(TO_DIGITS[lang]).format(w=number_words(k))
            answer = str(k)
        out.append(example(FAMILY, lang, str(k), request, answer))
    return out


def wrong_answer(rng: random.Random, expected: str, lang: str) -> str:
    """A plausible but wrong answer: a nearby number, in the same form."""
    k = int(expected) if expected.isdigit() else parse_words(expected)
    other = (k + rng.choice([-100, -10, -1, 1, 10, 100, 1000])) % 10000
    return str(other) if expected.isdigit() else number_words(other)


@lru_cache(maxsize=1)
def _by_words() -> dict[str, int]:
    return {number_words(k): k for k in range(10000)}


def parse_words(text: str) -> int:
    """The number that `number_words` writes as `text` (for tests and wrong answers)."""
    try:
        return _by_words()[_canonical_words(text)]
    except KeyError:
        raise ValueError(f"not a number in words: {text!r}") from None
