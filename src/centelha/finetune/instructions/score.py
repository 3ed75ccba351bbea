"""How well a model answers the checkable instruction set: exact match per family.

The held-out conversations are answered greedily (temperature 0), batched through the
engine, and each reply is read twice: `check` (the exact answer and nothing else) and
`contains_answer` (the answer somewhere in it). The first is the SFT measure, the gap
between the two the DPO one (the share of replies "in the chosen form").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from centelha.data import read_text
from centelha.engine import Engine, Request
from centelha.finetune.instructions.families import FAMILIES, check, contains_answer
from centelha.jsonfile import json_lines
from centelha.sampling import SamplingConfig


@dataclass
class FamilyScore:
    examples: int = 0
    exact: int = 0
    contains: int = 0

    @property
    def exact_rate(self) -> float:
        return self.exact / self.examples if self.examples else 0.0

    @property
    def contains_rate(self) -> float:
        return self.contains / self.examples if self.examples else 0.0


@dataclass
class InstructionScores:
    families: dict[str, FamilyScore] = field(default_factory=dict)
    replies: list[dict] = field(default_factory=list)

    @property
    def overall(self) -> FamilyScore:
        total = FamilyScore()
        for score in self.families.values():
            total.examples += score.examples
            total.exact += score.exact
            total.contains += score.contains
        return total


def score_instructions(llm, held_out: str | Path, limit_per_family: int | None = None,
                       batch: int = 8, max_new_tokens: int = 48) -> InstructionScores:
    """Greedy replies of `llm` (a `centelha.LLM`) to the held-out file's prompts, scored."""
    records = [r for _, r in json_lines(Path(held_out), read_text(Path(held_out)))]
    if limit_per_family is not None:
        seen: dict[str, int] = {}
        kept = []
        for record in records:
            if seen.get(record["family"], 0) < limit_per_family:
                seen[record["family"]] = seen.get(record["family"], 0) + 1
                kept.append(record)
        records = kept
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    stops = frozenset(llm.tokenizer.stop_ids)
    engine = Engine(llm.model, max_batch=batch, max_len=llm.max_context,
                    vocab_size=llm.tokenizer.vocab_size)
    requests = [Request(llm.chat_ids(r["messages"][:-1]), sampling, stops) for r in records]
    outputs = engine.generate_batch(requests)
    scores = InstructionScores({name: FamilyScore() for name in FAMILIES})
    for record, ids in zip(records, outputs, strict=True):
        reply = llm.tokenizer.decode([t for t in ids if t not in stops]).strip()
        family, answer = record["family"], record["answer"]
        score = scores.families[family]
        score.examples += 1
        exact = check(family, answer, reply)
        score.exact += exact
        score.contains += exact or contains_answer(family, answer, reply)
        scores.replies.append({"family": family, "answer": answer, "reply": reply,
                               "exact": exact})
    return scores
