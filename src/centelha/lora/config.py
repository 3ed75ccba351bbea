"""`LoRAConfig`: what an adapter is (rank, alpha, dropout, rsLoRA, target patterns).

The config is the part of adapter.json that says how to rebuild the adapter's layers, so
it is checked field by field when read (`from_dict`): a hand-edited or foreign file gets
one line naming the field, never a TypeError deep in `apply_lora`.

Design choices:
- `scale` lives here, not in the layer: alpha / r (the LoRA paper) or alpha / sqrt(r)
  (rsLoRA, Kalajdzievski 2023, which keeps updates from shrinking as r grows), so the
  layer, merging and every exporter agree on one number.
- `targets` are module-name patterns, matched as described in `inject.matches`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from centelha.errors import CentelhaError

DEFAULT_TARGETS = ("qkv", "proj", "fc_in", "fc_out")


@dataclass(frozen=True)
class LoRAConfig:
    """Rank `r`, scaling numerator `alpha`, input `dropout`, `rslora` scaling, and the
    module-name patterns `targets` an adapter was (or will be) applied to."""

    r: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    rslora: bool = False

    def __post_init__(self):
        # bool is an int in Python: refuse it explicitly, r=True is a typo, not rank 1
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise CentelhaError(f"LoRA rank r must be a whole number ≥ 1, got {self.r!r}")
        if not _is_number(self.alpha) or not self.alpha > 0:
            raise CentelhaError(f"LoRA alpha must be a number > 0, got {self.alpha!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise CentelhaError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.rslora, bool):
            raise CentelhaError(f"LoRA rslora must be true or false, got {self.rslora!r}")
        targets = self.targets
        if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets) \
                or not targets:
            raise CentelhaError(f"LoRA targets must be a non-empty list of module-name "
                                f"patterns, got {targets!r}")
        object.__setattr__(self, "targets", tuple(targets))

    @property
    def scale(self) -> float:
        """The factor on B·A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "rslora": self.rslora, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "adapter config") -> LoRAConfig:
        """A config from `to_dict`'s keys; anything missing or malformed → one line naming
        `source`."""
        missing = [k for k in ("r", "alpha", "targets") if k not in values]
        if missing:
            raise CentelhaError(f"{source} lacks {', '.join(missing)}")
        targets = values["targets"]
        if not isinstance(targets, list):
            raise CentelhaError(f"{source}: targets must be a list, got {targets!r}")
        try:
            return cls(r=values["r"], alpha=values["alpha"],
                       dropout=values.get("dropout", 0.0), targets=tuple(targets),
                       rslora=values.get("rslora", False))
        except CentelhaError as e:
            raise CentelhaError(f"{source}: {e}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)
