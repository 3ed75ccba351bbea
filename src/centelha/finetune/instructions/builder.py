"""Build the instruction set: train and held-out JSONL files, and DPO preference pairs.

`build(out_dir, train_per_family, held_out_per_family, seed)` writes `train.jsonl` and
`held_out.jsonl` (and, with `preference_pairs=True`, `preferences_train.jsonl` and
`preferences_held_out.jsonl`), each atomically. Each family draws from its own
`random.Random`, seeded from the seed, the family and the split, so asking for more of one
family, or adding a family, leaves the others' examples unchanged. Examples are shuffled
together within a split, so a file read in order mixes the families.

A preference pair keeps the example's prompt and exact answer (chosen); the rejected reply
is, in turn, a wrong answer in the right form or the right answer buried in chatter
("Claro! A resposta é: ..."): the two ways the exact-match checker fails a reply.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from centelha.atomic import atomic_write_text
from centelha.finetune.instructions.common import HELD_OUT, TRAIN
from centelha.finetune.instructions.families import FAMILIES

BURIED = {"pt": ["Claro! A resposta é: {a}",
                 "Boa pergunta. Vamos ver... {a}. Espero ter ajudado!",
                 "A resposta correta é {a}, se não me engano."],
          "en": ["Sure! The answer is: {a}",
                 "Great question. Let me think... {a}. Hope this helps!",
                 "The correct answer is {a}, I believe."]}


def _rng(seed: int, family: str, split: str) -> random.Random:
    return random.Random(f"{seed}:{family}:{split}")  # a str seed is hashed stably (sha512)


def examples(split: str, per_family: int, seed: int = 0) -> list[dict]:
    """`per_family` examples of every family from `split` ("train" or "held_out")."""
    out = []
    for name, module in FAMILIES.items():
        out.extend(module.generate(_rng(seed, name, split), split, per_family))
    random.Random(f"{seed}:shuffle:{split}").shuffle(out)
    return out


def preferences(items: list[dict], seed: int = 0) -> list[dict]:
    """DPO pairs {"prompt", "chosen", "rejected"} from examples (see the module docstring)."""
    rng = random.Random(f"{seed}:preferences")
    pairs = []
    for i, ex in enumerate(items):
        module, answer = FAMILIES[ex["family"]], ex["answer"]
        if i % 2 == 0:
            rejected = module.wrong_answer(rng, answer, ex["lang"])
        else:
            rejected = rng.choice(BURIED[ex["lang"]]).format(a=answer)
        pairs.append({"prompt": ex["messages"][:-1], "chosen": answer, "rejected": rejected,
                      "family": ex["family"], "answer": answer, "item": ex["item"]})
    return pairs


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def build(out_dir: str | Path, train_per_family: int = 1000, held_out_per_family: int = 100,
          seed: int = 0, preference_pairs: bool = False) -> dict[str, Path]:
    """Write the splits (and optionally the preference pairs); returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in ((TRAIN, train_per_family), (HELD_OUT, held_out_per_family)):
        items = examples(split, n, seed)
        written[split] = out_dir / f"{split}.jsonl"
        atomic_write_text(written[split], _jsonl(items))
        if preference_pairs:
            written[f"preferences_{split}"] = out_dir / f"preferences_{split}.jsonl"
            atomic_write_text(written[f"preferences_{split}"], _jsonl(preferences(items, seed)))
    return written
