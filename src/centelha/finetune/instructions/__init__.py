"""Our own instruction set (issue 12, part 5): checkable tasks in Portuguese and English.

Five families, one module each, every one with `generate(rng, split, n)`, `check`,
`contains_answer` and `wrong_answer`: `numbers` (0–9,999 in Portuguese words), `dates`
(ISO, dd/mm/aaaa and "15 de março de 2024"), `units` (exact conversions), `translation`
(single words, English ↔ Portuguese) and `extraction` (name, age, city into JSON).
`families` names them and holds the two readings of a reply (`check`, exact, and
`contains_answer`, lenient); `builder.build` writes train and held-out JSONL files that
`sft_data.read_conversations` loads, and `builder.preferences` DPO pairs from the same
items. `common` holds what they share: the split by item and the normalising.
"""

from __future__ import annotations

from centelha.finetune.instructions.builder import build, examples, preferences
from centelha.finetune.instructions.families import FAMILIES, check, contains_answer

__all__ = ["FAMILIES", "build", "check", "contains_answer", "examples", "preferences"]
