"""Our own instruction set (issue 12, part 5): generators, checkers, splits and files.

Number words against a hand-checked table, dates round trip in all six directions (leap
days included), unit answers exact, JSON extraction parses, train and held-out items never
overlap, the same seed writes the same bytes, the exact checker refuses wrong and buried
answers while `contains_answer` finds the buried ones, and every example passes its own
checker and loads with `read_conversations`.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from decimal import Decimal

import pytest

from centelha.finetune.instructions import (
    FAMILIES,
    build,
    check,
    contains_answer,
    dates,
    examples,
    numbers,
    preferences,
    translation,
    units,
)
from centelha.finetune.instructions.builder import BURIED
from centelha.finetune.instructions.common import HELD_OUT, TRAIN
from centelha.finetune.sft_data import read_conversations

NUMBER_TABLE = {  # checked by hand against Brazilian usage
    0: "zero", 1: "um", 2: "dois", 10: "dez", 11: "onze", 14: "quatorze", 16: "dezesseis",
    17: "dezessete", 19: "dezenove", 20: "vinte", 21: "vinte e um", 55: "cinquenta e cinco",
    99: "noventa e nove", 100: "cem", 101: "cento e um", 110: "cento e dez",
    115: "cento e quinze", 120: "cento e vinte", 123: "cento e vinte e três",
    200: "duzentos", 305: "trezentos e cinco", 500: "quinhentos",
    999: "novecentos e noventa e nove", 1000: "mil", 1001: "mil e um", 1010: "mil e dez",
    1021: "mil e vinte e um", 1100: "mil e cem", 1101: "mil cento e um",
    1200: "mil e duzentos", 1234: "mil duzentos e trinta e quatro", 2000: "dois mil",
    2001: "dois mil e um", 2345: "dois mil trezentos e quarenta e cinco",
    2500: "dois mil e quinhentos", 3099: "três mil e noventa e nove",
    7010: "sete mil e dez", 9999: "nove mil novecentos e noventa e nove",
}


@pytest.mark.parametrize("n, words", sorted(NUMBER_TABLE.items()))
def test_number_words_table(n, words):
    assert numbers.number_words(n) == words
    assert numbers.parse_words(words) == n


def test_number_words_all_distinct_and_range():
    assert len({numbers.number_words(k) for k in range(10000)}) == 10000
    with pytest.raises(ValueError):
        numbers.number_words(10000)


def test_number_checker_variants_and_refusals():
    assert check("number_words", "quatorze", "Catorze.")
    assert check("number_words", "dois mil e um", "  Dois  mil e um ")
    assert not check("number_words", "dois mil", "dois mil e um")
    assert not check("number_words", "mil e um", "um mil e um")
    assert check("number_words", "1234", "1234.")
    assert not check("number_words", "1234", "1.234")
    assert contains_answer("number_words", "dois mil", "A resposta é dois mil.")
    assert not contains_answer("number_words", "dois mil", "É dois mil e trezentos.")
    assert not contains_answer("number_words", "mil", "dois mil")
    assert not contains_answer("number_words", "123", "1234")


@pytest.mark.parametrize("day", [dt.date(2024, 2, 29), dt.date(2000, 2, 29), dt.date(1900, 3, 1),
                                 dt.date(2024, 5, 1), dt.date(2099, 12, 31), dt.date(1900, 1, 1),
                                 dt.date(2024, 3, 15)])
def test_dates_round_trip_all_directions(day):
    for source in dates.FORMS:
        text = dates.WRITERS[source](day)
        for target in dates.FORMS:
            assert dates.PARSERS[target](dates.WRITERS[target](dates.PARSERS[source](text))) == day


def test_date_forms_and_checker():
    day = dt.date(2024, 3, 15)
    assert (dates.to_iso(day), dates.to_br(day), dates.to_words(day)) == \
        ("2024-03-15", "15/03/2024", "15 de março de 2024")
    assert dates.to_words(dt.date(2024, 5, 1)) == "1º de maio de 2024"
    assert check("dates", "1º de maio de 2024", "1 de Maio de 2024.")
    assert not check("dates", "15/03/2024", "15/3/2024")
    assert not check("dates", "15/03/2024", "2024-03-15")
    assert not check("dates", "2º de maio de 2024", "2º de maio de 2024")  # no such form
    with pytest.raises(ValueError):
        dates.parse_iso("1900-02-29")  # not a leap year


def test_unit_answers_are_exact():
    rng = random.Random(0)
    for ex in units.generate(rng, TRAIN, 300):
        request = ex["messages"][0]["content"]
        number, unit = units._parse(ex["answer"])
        sep = units.SEPARATOR[ex["lang"]]
        other = "." if sep == "," else ","
        assert other not in number, ex  # the language's separator only
        assert not (sep in number and number.endswith("0")), ex  # no trailing zeros
        value, source = re.search(r"(\d+(?:[.,]\d+)?) (\w+)", request).groups()
        assert ex["lang"] != "pt" or not re.search(r"\d\.\d", request), ex
        # asked with the symbol or the name; the answer is the exact product, recomputed
        exact = units.convert(Decimal(value.replace(",", ".")), _symbol(source, ex["lang"]), unit)
        assert Decimal(number.replace(",", ".")) == exact, ex
    assert units.convert(Decimal("2.5"), "km", "cm") == 250000
    assert units.convert(Decimal("36"), "s", "h") == Decimal("0.01")
    assert units.format_number(Decimal("1500.00"), "pt") == "1500"
    assert units.format_number(Decimal("0.50"), "pt") == "0,5"


def _symbol(word: str, lang: str) -> str:
    names = {name: symbol for symbol, name in units.UNIT_NAMES[lang].items()}
    return names.get(word, word)


def test_unit_checker():
    assert check("units", "2,5 km", "2,5 km.")
    assert check("units", "2,5 km", "2,50")  # the unit is in the question; value is equal
    assert check("units", "250 mL", "250 ml")
    assert not check("units", "2,5 km", "2.5 km")  # Portuguese wants the comma
    assert not check("units", "2.5 km", "2,5 km")
    assert not check("units", "2,5 km", "2,5 m")
    assert not check("units", "1500 g", "1.500 g")
    assert not check("units", "1500 g", "1500 gramas, claro")


def test_extraction_parses_and_checks():
    rng = random.Random(1)
    for ex in FAMILIES["extraction"].generate(rng, TRAIN, 100):
        fields = json.loads(ex["answer"])
        assert list(fields) == ["nome", "idade", "cidade"] and isinstance(fields["idade"], int)
        request = ex["messages"][0]["content"]
        assert fields["nome"] in request and fields["cidade"] in request
        assert str(fields["idade"]) in request
    expected = '{"nome": "Ana Souza", "idade": 34, "cidade": "São Paulo"}'
    def reply(nome="Ana Souza", idade=34, cidade="São Paulo") -> str:
        return json.dumps({"nome": nome, "idade": idade, "cidade": cidade}, ensure_ascii=False)

    reordered = '{"cidade": "são paulo", "idade": 34, "nome": "Ana Souza"}'
    assert check("extraction", expected, reordered)
    assert not check("extraction", expected, reply(idade="34"))
    assert not check("extraction", expected, reply(idade=True))
    assert not check("extraction", expected, reply(nome="Ana"))
    assert not check("extraction", expected, reply()[:-1] + ', "extra": 1}')
    fenced = "```json\n" + expected + "\n```"
    assert not check("extraction", expected, fenced)
    assert contains_answer("extraction", expected, "Claro! Aqui está:\n" + fenced)


def test_translation_list_and_checker():
    english = [e[0] for e, _ in translation.pairs()]
    assert len(english) == len(set(english)) >= 300
    assert all(" " not in p[0] for _, p in translation.pairs())  # single words
    assert check("translation", "cachorro", "Cão")
    assert check("translation", "to eat", "eat")
    assert not check("translation", "maçã", "maca")
    assert not check("translation", "gato", "o gato é")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_example_passes_its_checker_and_rejects_wrong_and_buried(family):
    rng = random.Random(2)
    for split in (TRAIN, HELD_OUT):
        for ex in FAMILIES[family].generate(rng, split, 150):
            answer = ex["answer"]
            assert ex["messages"][-1] == {"role": "assistant", "content": answer}
            assert check(family, answer, answer) and contains_answer(family, answer, answer)
            wrong = FAMILIES[family].wrong_answer(rng, answer, ex["lang"])
            assert not check(family, answer, wrong), (answer, wrong)
            for template in BURIED[ex["lang"]]:
                buried = template.format(a=answer)
                assert not check(family, answer, buried), buried
                assert contains_answer(family, answer, buried), buried


def test_splits_disjoint_by_item():
    train, held = examples(TRAIN, 400), examples(HELD_OUT, 100)
    for family in FAMILIES:
        train_items = {e["item"] for e in train if e["family"] == family}
        held_items = {e["item"] for e in held if e["family"] == family}
        assert held_items and train_items and not train_items & held_items, family
    # the held-out numbers are never asked in training, in either direction
    train_numbers = {e["item"] for e in train if e["family"] == "number_words"}
    assert all(str(k) not in train_numbers for k in
               (int(e["item"]) for e in held if e["family"] == "number_words"))


def test_phrasings_vary():
    train = examples(TRAIN, 200)
    for family in FAMILIES:
        requests = [e["messages"][0]["content"] for e in train if e["family"] == family]
        langs = {e["lang"] for e in train if e["family"] == family}
        assert langs == {"pt", "en"}
        # the first few words of a request tell the template apart
        assert len({" ".join(r.split()[:2]) for r in requests}) >= 5, family


def test_build_is_deterministic_and_loads(tmp_path):
    a = build(tmp_path / "a", train_per_family=30, held_out_per_family=10, seed=3,
              preference_pairs=True)
    b = build(tmp_path / "b", train_per_family=30, held_out_per_family=10, seed=3,
              preference_pairs=True)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    c = build(tmp_path / "c", train_per_family=30, held_out_per_family=10, seed=4)
    assert c[TRAIN].read_bytes() != a[TRAIN].read_bytes()
    assert len(read_conversations(a[TRAIN])) == 30 * len(FAMILIES)
    assert len(read_conversations(a[HELD_OUT])) == 10 * len(FAMILIES)
    for line in a["preferences_held_out"].read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        assert pair["prompt"][-1]["role"] == "user"
        assert check(pair["family"], pair["answer"], pair["chosen"])
        assert not check(pair["family"], pair["answer"], pair["rejected"])


def test_preferences_mix_wrong_and_buried():
    items = examples(HELD_OUT, 20)
    pairs = preferences(items)
    buried = [p for p in pairs if contains_answer(p["family"], p["answer"], p["rejected"])]
    assert 0 < len(buried) < len(pairs)
