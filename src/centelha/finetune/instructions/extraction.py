"""Family (e): name, age and city out of a sentence, into JSON.

The answer is one JSON object with exactly the keys "nome" (string), "idade" (integer)
and "cidade" (string), in that order, written by `json.dumps(..., ensure_ascii=False)`:
`{"nome": "Ana Souza", "idade": 34, "cidade": "Recife"}`. The checker parses the reply as
JSON (the whole reply: an object after "Claro! Aqui está:" or inside a code fence is not an
exact answer), wants those three keys and no others, an integer age, and the same name and
city up to surrounding space and case. Sentences vary in shape (who comes first, age as
"34 anos" or "34", relative clauses, third or first person), in both languages; cities
include multi-word ones ("São Paulo", "Rio de Janeiro") and ones with accents. Names and
cities are invented combinations of common first names and surnames, not real people.
The item is the (name, age, city) triple.
"""

from __future__ import annotations

import json
import random
import re

from centelha.finetune.instructions.common import draw_items, example

FAMILY = "extraction"
FIRST_NAMES = ["Ana", "Maria", "João", "José", "Pedro", "Lucas", "Juliana", "Fernanda",
               "Carlos", "Paulo", "Beatriz", "Camila", "Rafael", "Gabriel", "Larissa",
               "Mariana", "Tiago", "Bruno", "Letícia", "Helena", "Antônio", "Francisca",
               "Raimundo", "Sebastião", "Luíza", "Vitória", "Otávio", "Cecília", "Davi",
               "Isabela", "Emily", "Michael", "Sarah", "David"]
SURNAMES = ["Silva", "Santos", "Oliveira", "Souza", "Lima", "Pereira", "Ferreira", "Costa",
            "Rodrigues", "Almeida", "Nascimento", "Carvalho", "Araújo", "Ribeiro", "Gomes",
            "Martins", "Rocha", "Barbosa", "Conceição", "Magalhães", "Brown", "Smith"]
CITIES = ["São Paulo", "Rio de Janeiro", "Belo Horizonte", "Salvador", "Recife",
          "Fortaleza", "Curitiba", "Porto Alegre", "Manaus", "Belém", "Goiânia", "Brasília",
          "Florianópolis", "Natal", "João Pessoa", "Maceió", "Teresina", "São Luís",
          "Campinas", "Niterói", "Juiz de Fora", "Ribeirão Preto", "Londrina", "Cuiabá",
          "Vitória", "Aracaju", "Lisboa", "Porto", "Coimbra", "Luanda", "Maputo", "Boston"]

SENTENCES = {
    "pt": ["{n} tem {a} anos e mora em {c}.",
           "Meu nome é {n}, tenho {a} anos e moro em {c}.",
           "Em {c} vive {n}, de {a} anos.",
           "{n}, {a}, é de {c}.",
           "Paciente: {n} ({a} anos), residente em {c}.",
           "Sou {n}, moro em {c} e fiz {a} anos ontem.",
           "Natural de {c}, {n} completou {a} anos."],
    "en": ["{n} is {a} years old and lives in {c}.",
           "My name is {n}, I am {a} and I live in {c}.",
           "In {c} lives {n}, aged {a}.",
           "{n}, {a}, from {c}.",
           "Our new colleague {n} ({a}) moved here from {c}.",
           "Born in {c}, {n} turned {a} last week."],
}
REQUESTS = {
    "pt": ["Extraia nome, idade e cidade da frase a seguir e responda só com JSON "
           "(chaves \"nome\", \"idade\", \"cidade\").\n\n{s}",
           "Frase: {s}\nDevolva um JSON com \"nome\", \"idade\" (número) e \"cidade\".",
           "Leia a frase e preencha o JSON "
           "{{\"nome\": ..., \"idade\": ..., \"cidade\": ...}}: {s}"],
    "en": ["Extract the name, age and city from this sentence as JSON with the keys "
           "\"nome\", \"idade\" and \"cidade\". Reply with the JSON only.\n\n{s}",
           "Sentence: {s}\nReturn JSON: {{\"nome\": ..., \"idade\": <number>, \"cidade\": ...}}",
           "From the sentence \"{s}\", give nome, idade and cidade as a JSON object."],
}
KEYS = ["nome", "idade", "cidade"]


def answer_json(name: str, age: int, city: str) -> str:
    return json.dumps({"nome": name, "idade": age, "cidade": city}, ensure_ascii=False)


def _fields(text: str) -> dict | None:
    """The reply's object, if the whole (stripped) reply is one with exactly our keys."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(value, dict) or sorted(value) != sorted(KEYS):
        return None
    if type(value["idade"]) is not int:  # not a bool, not "34"
        return None
    if not (isinstance(value["nome"], str) and isinstance(value["cidade"], str)):
        return None
    return value


def check(expected: str, reply: str) -> bool:
    want, got = _fields(expected), _fields(reply)
    if want is None or got is None:
        return False
    same = lambda k: " ".join(got[k].split()).casefold() == " ".join(want[k].split()).casefold()  # noqa: E731
    return got["idade"] == want["idade"] and same("nome") and same("cidade")


def contains_answer(expected: str, reply: str) -> bool:
    """Any {...} span of the reply (in a fence, after chatter) that checks."""
    starts = [m.start() for m in re.finditer(r"\{", reply)]
    ends = [m.end() for m in re.finditer(r"\}", reply)]
    return any(check(expected, reply[s:e]) for s in starts for e in ends if e > s)


def _random_person(rng: random.Random) -> tuple[str, tuple[str, int, str]]:
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
    age, city = rng.randrange(18, 91), rng.choice(CITIES)
    return f"{name}|{age}|{city}", (name, age, city)


def generate(rng: random.Random, split: str, n: int) -> list[dict]:
    out = []
    for key, (name, age, city) in draw_items(rng, FAMILY, split, n, _random_person):
        lang = rng.choice(["pt", "en"])
        sentence = rng.choice(SENTENCES[lang]).format(n=name, a=age, c=city)
        request = rng.choice(REQUESTS[lang]).format(s=sentence)
        out.append(example(FAMILY, lang, key, request, answer_json(name, age, city)))
    return out


def wrong_answer(rng: random.Random, expected: str, lang: str) -> str:
    """One field wrong: the age off by one to ten, another city, or the surname dropped."""
    fields = json.loads(expected)
    slip = rng.choice(["idade", "cidade", "nome"])
    if slip == "idade":
        fields["idade"] += rng.choice([-1, 1]) * rng.randrange(1, 11)
    elif slip == "cidade":
        fields["cidade"] = rng.choice([c for c in CITIES if c != fields["cidade"]])
    else:
        fields["nome"] = fields["nome"].split()[0]
    return json.dumps(fields, ensure_ascii=False)
