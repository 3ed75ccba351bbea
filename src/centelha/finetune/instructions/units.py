"""Family (c): unit conversions with exact answers (km/m/cm, kg/g, h/min/s, L/mL).

Conventions:
- the answer is the number and the target unit's symbol, "2,5 km", written exactly: no
  thousands separator, no trailing zeros ("2,5", not "2,50"; "1500", not "1.500"), decimal
  comma when the request is in Portuguese and decimal point when it is in English;
- the checker wants that separator (a dot in a Portuguese answer is refused, since "1.500"
  means 1500 there), the same value, and the target unit or no unit at all (the unit is in
  the question); units are compared without case ("ml" = "mL"), which is safe for this set;
- amounts are drawn in the larger unit with at most two decimals and then converted with
  `Decimal`, so both directions are exact: a time in minutes is always a whole number of
  seconds, and 36 s back to hours is exactly 0,01 h.
The item is the physical amount (in the smallest unit of its kind), so "2,5 km → m" and
"250000 cm → km" are the same item and share a split.
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation

from centelha.finetune.instructions.common import draw_items, example, normalise

FAMILY = "units"
# kind -> {unit: size in the kind's smallest unit}
KINDS = {"length": {"km": Decimal(100000), "m": Decimal(100), "cm": Decimal(1)},
         "mass": {"kg": Decimal(1000), "g": Decimal(1)},
         "time": {"h": Decimal(3600), "min": Decimal(60), "s": Decimal(1)},
         "volume": {"L": Decimal(1000), "mL": Decimal(1)}}
UNIT_NAMES = {"pt": {"km": "quilômetros", "m": "metros", "cm": "centímetros",
                     "kg": "quilogramas", "g": "gramas", "h": "horas", "min": "minutos",
                     "s": "segundos", "L": "litros", "mL": "mililitros"},
              "en": {"km": "kilometres", "m": "metres", "cm": "centimetres",
                     "kg": "kilograms", "g": "grams", "h": "hours", "min": "minutes",
                     "s": "seconds", "L": "litres", "mL": "millilitres"}}
TEMPLATES = {
    "pt": ["Converta {v} {su} para {tn}.",
           "Quantos {tn} são {v} {su}?",
           "{v} {su} equivalem a quantos {tn}? Responda com o número e a unidade.",
           "Passe {v} {sn} para {tu}."],
    "en": ["Convert {v} {su} to {tn}.",
           "How many {tn} are {v} {su}?",
           "{v} {sn} is how many {tu}? Answer with the number and the unit.",
           "Express {v} {su} in {tn}."],
}
SEPARATOR = {"pt": ",", "en": "."}


def format_number(value: Decimal, lang: str) -> str:
    """Exact, plain decimal: no exponent, no trailing zeros, the language's separator."""
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.replace(".", SEPARATOR[lang])


def convert(value: Decimal, source: str, target: str) -> Decimal:
    kind = next(k for k, units in KINDS.items() if source in units)
    return value * KINDS[kind][source] / KINDS[kind][target]


def _parse(text: str) -> tuple[str, str | None] | None:
    """(number text, unit or None) of a bare answer, or None if it is not one."""
    m = re.fullmatch(r"(\d+(?:[.,]\d+)?)(?:\s*([a-zA-Z]+))?", normalise(text, fold_case=False))
    return (m[1], m[2]) if m else None


def check(expected: str, reply: str) -> bool:
    want, got = _parse(expected), _parse(reply)
    if want is None or got is None:
        return False
    separator = next((c for c in want[0] if c in ".,"), None)
    if any(c in ".," and c != separator for c in got[0]):
        return False  # a decimal point in a Portuguese answer, or a comma in an English one
    if got[1] is not None and got[1].casefold() != (want[1] or "").casefold():
        return False
    try:
        return Decimal(got[0].replace(",", ".")) == Decimal(want[0].replace(",", "."))
    except InvalidOperation:
        return False


def contains_answer(expected: str, reply: str) -> bool:
    return any(check(expected, m[0]) for m in
               re.finditer(r"(?<![\d.,])\d+(?:[.,]\d+)?(?:\s*[a-zA-Z]+)?", reply))


def _random_amount(rng: random.Random) -> tuple[str, tuple[str, Decimal]]:
    kind = rng.choice(sorted(KINDS))
    big = max(KINDS[kind], key=lambda u: KINDS[kind][u])
    places = rng.choice([0, 0, 1, 2])
    value = Decimal(rng.randrange(1, 100 * 10 ** places)).scaleb(-places)  # 0.01–99.99
    base = value * KINDS[kind][big]
    return f"{kind}:{format_number(base, 'en')}", (kind, base)


def generate(rng: random.Random, split: str, n: int) -> list[dict]:
    out = []
    for key, (kind, base) in draw_items(rng, FAMILY, split, n, _random_amount):
        source, target = rng.sample(sorted(KINDS[kind]), 2)
        lang = rng.choice(["pt", "en"])
        value = base / KINDS[kind][source]
        request = rng.choice(TEMPLATES[lang]).format(
            v=format_number(value, lang), su=source, sn=UNIT_NAMES[lang][source],
            tu=target, tn=UNIT_NAMES[lang][target])
        answer = f"{format_number(convert(value, source, target), lang)} {target}"
        out.append(example(FAMILY, lang, key, request, answer))
    return out


def wrong_answer(rng: random.Random, expected: str, lang: str) -> str:
    """The classic slip: off by a factor of ten (or sixty for time), up or down if exact."""
    number, unit = _parse(expected)
    factor = Decimal(60) if unit in ("h", "min", "s") else Decimal(10)
    value = Decimal(number.replace(",", "."))
    wrong = value * factor
    if rng.random() < 0.5 and (value / factor * 100) % 1 == 0:  # keep it a short decimal
        wrong = value / factor
    return f"{format_number(wrong, lang)} {unit}"
