"""Family (d): single-word translation, English → Portuguese and Portuguese → English.

The word list is `words.tsv` beside this module, written by hand for centelha (about 340
common words) rather than taken from Debian's `dict-freedict-eng-por`: that dictionary is
GPL-2+, which would not sit inside an MIT package, and most of its entries list several
senses, which an exact-match checker cannot grade. Design choices:
- the first translation on a line is the answer taught; the others after "|" are also
  accepted by the checker (`cachorro` and `cão` are both right for "dog");
- verbs are asked and taught as "to eat" → "comer" and "comer" → "to eat"; "eat" alone
  is accepted too;
- a Portuguese word listed for two English words ("mulher": woman, wife) is asked only
  from English, so no Portuguese → English question has two right answers we would mark
  wrong;
- case is folded (the list is lower case), accents are not: "maca" is not "maçã".
The item is the English headword: both directions of a pair share a split.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache
from pathlib import Path

from centelha.finetune.instructions.common import (
    contains_phrase,
    example,
    normalise,
    pick_from_pool,
    split_of,
)

FAMILY = "translation"
WORDS = Path(__file__).with_name("words.tsv")

TEMPLATES = {
    ("en", "pt"): {
        "pt": ["Traduza para o português: {w}",
               "Como se diz \"{w}\" em português?",
               "Qual é a tradução de \"{w}\" para o português? Responda só com a palavra.",
               "\"{w}\" em português é:"],
        "en": ["Translate into Portuguese: {w}",
               "How do you say \"{w}\" in Portuguese?",
               "What is the Portuguese word for \"{w}\"? Answer with the word only.",
               "Give the Portuguese translation of \"{w}\"."]},
    ("pt", "en"): {
        "pt": ["Traduza para o inglês: {w}",
               "Como se diz \"{w}\" em inglês?",
               "Qual é a tradução de \"{w}\" para o inglês? Responda só com a palavra.",
               "\"{w}\" em inglês é:"],
        "en": ["Translate into English: {w}",
               "What is the English word for the Portuguese \"{w}\"?",
               "Translate the Portuguese word \"{w}\" into English. Answer with the word only.",
               "What does \"{w}\" mean in English?"]},
}


@lru_cache(maxsize=1)
def pairs() -> list[tuple[list[str], list[str]]]:
    """(English forms, Portuguese forms) per line; the first of each is the one taught."""
    out = []
    for line in WORDS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            english, portuguese = line.split("\t")
            out.append((english.split("|"), portuguese.split("|")))
    return out


@lru_cache(maxsize=1)
def _accepted() -> dict[str, set[str]]:
    """Every taught answer -> the replies accepted for it (itself and its alternatives)."""
    accepted: dict[str, set[str]] = {}
    for english, portuguese in pairs():
        for forms in (english, portuguese):
            extra = {f[3:] for f in forms if f.startswith("to ")}  # "eat" for "to eat"
            accepted.setdefault(forms[0], set()).update(forms, extra)
    return accepted


def _ambiguous_portuguese() -> set[str]:
    counts = Counter(p for _, portuguese in pairs() for p in portuguese)
    return {p for p, c in counts.items() if c > 1}


def check(expected: str, reply: str) -> bool:
    got = normalise(reply)
    return got in {normalise(a) for a in _accepted().get(expected, {expected})}


def contains_answer(expected: str, reply: str) -> bool:
    return any(contains_phrase(a, reply) for a in _accepted().get(expected, {expected}))


def generate(rng: random.Random, split: str, n: int) -> list[dict]:
    ambiguous = _ambiguous_portuguese()
    pool = []
    for english, portuguese in pairs():
        if split_of(FAMILY, english[0]) != split:
            continue
        pool.append((english[0], portuguese[0], ("en", "pt")))
        if portuguese[0] not in ambiguous:
            pool.append((english[0], portuguese[0], ("pt", "en")))
    out = []
    for en_word, pt_word, direction in pick_from_pool(rng, pool, n):
        lang = rng.choice(["pt", "en"])
        source, answer = (en_word, pt_word) if direction == ("en", "pt") else (pt_word, en_word)
        request = rng.choice(TEMPLATES[direction][lang]).format(w=source)
        out.append(example(FAMILY, lang, en_word, request, answer))
    return out


def wrong_answer(rng: random.Random, expected: str, lang: str) -> str:
    """Another word of the same language from the list."""
    column = 0 if any(expected == e[0] for e, _ in pairs()) else 1
    others = [p[column][0] for p in pairs() if p[column][0] != expected
              and not check(expected, p[column][0])]
    return rng.choice(others)
