"""What every family shares: the example record, the item split, and answer normalising.

Design choices:
- An *item* is the thing a family asks about (a number, a date, an amount, a word pair, a
  person), named by a string key. The split is decided by a hash of that key alone, not by
  the seed or the phrasing, so an item is in train or in held-out for good: no held-out
  number is ever seen in training under another wording or in the other direction.
- Randomness comes only from the `random.Random` passed in, so the same seed gives the
  same examples, byte for byte.
- Normalising is deliberately small (surrounding space, one trailing period, runs of
  spaces, and case where a family says case is harmless); anything more generous would let
  a buried answer ("Claro! A resposta é: ...") pass as exact.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

TRAIN, HELD_OUT = "train", "held_out"
HELD_OUT_SHARE = 5  # one item in five is held out


def split_of(family: str, key: str) -> str:
    """The split an item belongs to, fixed by its key (a stable hash, not Python's `hash`)."""
    digest = hashlib.sha256(f"{family}:{key}".encode()).digest()
    return HELD_OUT if int.from_bytes(digest[:8], "big") % HELD_OUT_SHARE == 0 else TRAIN


def example(family: str, lang: str, item: str, request: str, answer: str) -> dict:
    """One chat example; `item` and `lang` ride along so splits and DPO pairs can use them."""
    return {"messages": [{"role": "user", "content": request},
                         {"role": "assistant", "content": answer}],
            "family": family, "answer": answer, "item": item, "lang": lang}


Candidate = Callable[[random.Random], tuple[str, object]]


def draw_items(rng: random.Random, family: str, split: str, n: int,
               candidate: Candidate) -> list[tuple[str, object]]:
    """n distinct items of `split`, drawn by rejection from `candidate(rng) -> (key, item)`.

    For families with a huge item space; a give-up bound keeps a too-small space from
    looping forever (it then repeats items rather than hang)."""
    seen: set[str] = set()
    items: list[tuple[str, object]] = []
    tries = 0
    while len(items) < n:
        tries += 1
        key, item = candidate(rng)
        if split_of(family, key) != split:
            continue
        if key in seen and tries < 1000 * (n + 10):
            continue
        seen.add(key)
        items.append((key, item))
    return items


def pick_from_pool(rng: random.Random, pool: list, n: int) -> list:
    """n items of a finite pool: without repeats while it lasts, then round again."""
    out: list = []
    while len(out) < n:
        out.extend(rng.sample(pool, min(len(pool), n - len(out))))
    return out


def normalise(text: str, fold_case: bool = True) -> str:
    """Strip, drop one trailing period, collapse spaces, and fold case if harmless."""
    text = re.sub(r"\s+", " ", text.strip())
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text.casefold() if fold_case else text


def contains_phrase(expected: str, reply: str) -> bool:
    """Whether `expected` (normalised) appears in `reply` as whole words: the lenient read."""
    exp, rep = normalise(expected), normalise(reply)
    if not exp:
        return False
    return re.search(rf"(?<!\w){re.escape(exp)}(?!\w)", rep) is not None
