"""Family (b): dates between ISO `2024-03-15`, `15/03/2024` and "15 de março de 2024".

All six directions between the three forms. Conventions:
- the written-out form has the day without a leading zero, the month in lower case (as
  Portuguese writes it) and the year in digits: "5 de março de 2024";
- the first day of a month is written "1º de maio de 2024", as is usual in Brazil (and
  recommended by its style guides); the checker also accepts "1 de maio de 2024", since
  both are correct, and reads the month in any case;
- `dd/mm/aaaa` always has two-digit day and month; the checker accepts no other shape
  ("5/3/2024" is a different, if understandable, answer);
- dates run from 1900-01-01 to 2099-12-31, so leap days follow the Gregorian rule both
  ways (2000-02-29 exists, 1900-02-29 does not).
The item is the date itself: all its directions fall in the same split.
"""

from __future__ import annotations

import datetime as dt
import random
import re

from centelha.finetune.instructions.common import draw_items, example, normalise

FAMILY = "dates"
MONTHS = ["janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto",
          "setembro", "outubro", "novembro", "dezembro"]
FIRST, LAST = dt.date(1900, 1, 1), dt.date(2099, 12, 31)
FORMS = ("iso", "br", "words")

NAMES = {"pt": {"iso": "no formato ISO (aaaa-mm-dd)", "br": "no formato dd/mm/aaaa",
                "words": "por extenso (como \"15 de março de 2024\")"},
         "en": {"iso": "in ISO format (YYYY-MM-DD)", "br": "as DD/MM/YYYY",
                "words": "written out in Portuguese (like \"15 de março de 2024\")"}}
TEMPLATES = {
    "pt": ["Converta a data {d} para {to}.",
           "Escreva {d} {to}.",
           "Como fica a data {d} {to}? Responda só com a data.",
           "Reescreva {d} {to}."],
    "en": ["Convert the date {d} {to}.",
           "Rewrite {d} {to}.",
           "Write the date {d} {to}. Reply with the date only.",
           "What is {d} {to}?"],
}


def to_iso(d: dt.date) -> str:
    return d.isoformat()


def to_br(d: dt.date) -> str:
    return f"{d.day:02d}/{d.month:02d}/{d.year:04d}"


def to_words(d: dt.date) -> str:
    day = "1º" if d.day == 1 else str(d.day)
    return f"{day} de {MONTHS[d.month - 1]} de {d.year}"


WRITERS = {"iso": to_iso, "br": to_br, "words": to_words}


def parse_iso(text: str) -> dt.date:
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text.strip())
    if not m:
        raise ValueError(f"not an ISO date: {text!r}")
    return dt.date(int(m[1]), int(m[2]), int(m[3]))


def parse_br(text: str) -> dt.date:
    m = re.fullmatch(r"(\d{2})/(\d{2})/(\d{4})", text.strip())
    if not m:
        raise ValueError(f"not a dd/mm/aaaa date: {text!r}")
    return dt.date(int(m[3]), int(m[2]), int(m[1]))


def parse_words(text: str) -> dt.date:
    m = re.fullmatch(r"(\d{1,2})(º|°|o)? de (\w+) de (\d{4})", normalise(text))
    if not m or m[3] not in MONTHS or (m[2] and m[1] != "1"):
        raise ValueError(f"not a written-out date: {text!r}")
    return dt.date(int(m[4]), MONTHS.index(m[3]) + 1, int(m[1]))


PARSERS = {"iso": parse_iso, "br": parse_br, "words": parse_words}


def form_of(text: str) -> str:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return "iso"
    return "br" if re.fullmatch(r"\d{2}/\d{2}/\d{4}", text) else "words"


def check(expected: str, reply: str) -> bool:
    """Same form as expected and the same date; case folded only in the written-out form."""
    form = form_of(expected)
    try:
        return PARSERS[form](normalise(reply, fold_case=False)) == PARSERS[form](expected)
    except ValueError:
        return False


def contains_answer(expected: str, reply: str) -> bool:
    form = form_of(expected)
    patterns = {"iso": r"\d{4}-\d{2}-\d{2}", "br": r"\d{2}/\d{2}/\d{4}",
                "words": r"\d{1,2}(?:º|°|o)? de \w+ de \d{4}"}
    return any(check(expected, m[0])
               for m in re.finditer(rf"(?<![\w/-]){patterns[form]}(?![\w/-])", reply.casefold()))


def _random_date(rng: random.Random) -> tuple[str, dt.date]:
    d = FIRST + dt.timedelta(days=rng.randrange((LAST - FIRST).days + 1))
    return d.isoformat(), d


def generate(rng: random.Random, split: str, n: int) -> list[dict]:
    out = []
    for key, d in draw_items(rng, FAMILY, split, n, _random_date):
        source, target = rng.sample(FORMS, 2)
        lang = rng.choice(["pt", "en"])
        request = rng.choice(TEMPLATES[lang]).format(d=WRITERS[source](d), to=NAMES[lang][target])
        out.append(example(FAMILY, lang, key, request, WRITERS[target](d)))
    return out


def wrong_answer(rng: random.Random, expected: str, lang: str) -> str:
    """A date one day, one month or one year off, in the same form; or day and month swapped."""
    form = form_of(expected)
    d = PARSERS[form](expected)
    candidates = [d + dt.timedelta(days=rng.choice([-1, 1])),
                  d.replace(year=d.year + 1) if not (d.month == 2 and d.day == 29)
                  else d + dt.timedelta(days=365)]
    if d.day <= 12 and d.day != d.month:
        candidates.append(dt.date(d.year, d.day, d.month))
    return WRITERS[form](rng.choice(candidates))
