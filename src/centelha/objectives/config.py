"""`ObjectiveConfig`: what a run learns (the `objective:` section of a run's YAML).

One dataclass for the four kinds, so a config file, `--set objective.KEY=VALUE` and the
`finetune` flags all go through the same checks. A field that only one kind reads is
ignored by the others (`pooling` means nothing to SFT), but every value is checked for
its type and range whatever the kind, so a typo is an error before anything is written.

Design choices a reader should know:
- `scope` says what trains. `full`: every weight. `lora`: only LoRA adapters (the `lora:`
  section; the base stays frozen). `head`: only the classification head. `last-k`: the
  head and the last `last_k` blocks. A frozen block that nothing below it needs a
  gradient for is never backpropagated through, so narrow scopes are also fast.
- The defaults follow what people expect of each kind: pretraining trains everything,
  fine-tuning trains LoRA adapters.
- `val_data` names a held-out file; without it `held_out` of the data is set aside,
  stratified by label for classification and by line for the others, with `split_seed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from centelha.errors import CentelhaError
from centelha.kinds import is_integer, is_number

KINDS = ("pretrain", "classify", "sft", "dpo")
SCOPES = ("full", "lora", "head", "last-k")
POOLINGS = ("last", "mean")
LOGPS = ("sum", "mean")
DEFAULT_SCOPE = {"pretrain": "full", "classify": "lora", "sft": "lora", "dpo": "lora"}


@dataclass
class ObjectiveConfig:
    """What the run learns and from which data. Each field's help is the text under it."""

    kind: str = "pretrain"
    """pretrain (next token on a prepared corpus), classify, sft or dpo."""
    scope: str | None = None
    """What trains: full, lora, head or last-k (head and last-k: classify only);
    null: full for pretrain, lora otherwise."""
    last_k: int = 2
    """Blocks that train under scope last-k (≥ 1)."""
    val_data: str | None = None
    """A held-out file in the data's format; null: set `held_out` of the data aside."""
    held_out: float = 0.1
    """Share of the data held out for evaluation when val_data is null, in (0, 1)."""
    split_seed: int = 0
    """Seed of the held-out split (≥ 0)."""
    max_length: int = 512
    """Longest example in tokens (≥ 2): classification texts are cut to it, a longer
    conversation or preference pair is an error naming its line."""
    text_column: str = "text"
    """classify: the column (or JSON key) holding the text."""
    label_column: str = "label"
    """classify: the column (or JSON key) holding the label."""
    pooling: str = "last"
    """classify: the hidden state the head reads, last (the last real token) or mean."""
    class_weighted: bool = True
    """classify: weigh each class by its inverse frequency (for imbalanced data)."""
    pack: bool = False
    """sft: pack whole conversations into rows of max_length (faster, same targets)."""
    beta: float = 0.1
    """dpo: how far the policy may move from the reference (> 0)."""
    logps: str = "sum"
    """dpo: a response's log-probability is the sum over its tokens (as in the DPO paper
    and TRL) or their mean."""
    nll_weight: float = 0.0
    """dpo: weight of the chosen answers' negative log-likelihood per token, added to the
    loss (TRL's rpo_alpha; 0: plain DPO), so that the chosen answers stay likely (≥ 0)."""
    eval_examples: int = 1000
    """At most this many held-out examples per evaluation (≥ 1)."""

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, KINDS)
        if self.scope is None:
            self.scope = DEFAULT_SCOPE[self.kind]
        _one_of("scope", self.scope, SCOPES)
        if self.scope in ("head", "last-k") and self.kind != "classify":
            raise CentelhaError(f"objective.scope {self.scope!r} trains a classification "
                                f"head; a {self.kind} run takes full or lora")
        if self.kind == "dpo" and self.scope != "lora":
            raise CentelhaError("objective.scope must be lora for dpo: the reference model is "
                                "the base with the adapters turned off, so no second copy of "
                                "the model is kept in memory")
        _one_of("pooling", self.pooling, POOLINGS)
        _one_of("logps", self.logps, LOGPS)
        for key, low in (("last_k", 1), ("max_length", 2), ("eval_examples", 1),
                         ("split_seed", 0)):
            value = getattr(self, key)
            _require(key, value, is_integer(value) and value >= low, f"an integer ≥ {low}")
        _require("held_out", self.held_out, is_number(self.held_out)
                 and 0 < self.held_out < 1, "a number between 0 and 1")
        _require("beta", self.beta, is_number(self.beta) and self.beta > 0, "a number > 0")
        _require("nll_weight", self.nll_weight, is_number(self.nll_weight)
                 and self.nll_weight >= 0, "a number ≥ 0")
        for key in ("class_weighted", "pack"):
            _require(key, getattr(self, key), isinstance(getattr(self, key), bool),
                     "true or false")
        for key in ("text_column", "label_column"):
            _require(key, getattr(self, key), isinstance(getattr(self, key), str)
                     and getattr(self, key), "a column name")
        _require("val_data", self.val_data, self.val_data is None
                 or isinstance(self.val_data, str), "a file path or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(key, value, value in allowed, f"one of {', '.join(allowed)}")


def _require(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        text = repr(value)
        raise CentelhaError(f"objective.{key} must be {expected}, not "
                            f"{text if len(text) <= 60 else text[:57] + '...'}")
