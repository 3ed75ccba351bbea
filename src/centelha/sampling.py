"""Sampling: the settings of one generation, the logits processors, and the choice of a token.

Each decoding control is a small function on a logits vector, applied in this order:
repetition penalty → OpenAI's presence/frequency penalties → temperature → top-k → top-p
→ min-p → sample (or argmax when the temperature is 0). Filters set removed tokens to
-inf, so they compose freely. `SamplingConfig` checks the type and range of every setting
when it is made, so a bad value is one clear error before any decoding starts.

This module needs only torch: the engine samples with it, and nothing here knows about
models, tokenizers or text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from centelha.errors import CentelhaError
from centelha.kinds import is_integer, is_number

# torch.Generator takes any 64-bit seed, signed or not
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
MAX_STOP_CHARS = 256  # a stop string is matched against the text after every token
MAX_STOPS = 16
MAX_TEMPERATURE = 100.0
MIN_TEMPERATURE = 1e-5  # below this, logits / temperature can overflow float32: greedy


def _check_int(name: str, value, low: int | None = None, high: int | None = None) -> None:
    """`value` is an int (not a bool, not 5.5) within [low, high], or a CentelhaError."""
    if not is_integer(value):
        raise CentelhaError(f"{name} must be an integer, not {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise CentelhaError(f"{name} must be {_range(low, high)}, not {value}")


def _check_number(name: str, value, low: float, high: float) -> None:
    """`value` is a finite int or float within [low, high], or a CentelhaError."""
    if not is_number(value):
        raise CentelhaError(f"{name} must be a finite number, not {value!r}")
    if not low <= value <= high:
        raise CentelhaError(f"{name} must be {_range(low, high)}, not {value}")


def _range(low, high) -> str:
    if high is None:
        return f"at least {low}"
    return f"between {low} and {high}"


def _check_stops(stop) -> None:
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise CentelhaError(f"stop must be a list of strings, not {stop!r}")
    if len(stop) > MAX_STOPS:
        raise CentelhaError(f"at most {MAX_STOPS} stop strings, not {len(stop)}")
    for s in stop:
        if len(s) > MAX_STOP_CHARS:
            raise CentelhaError(f"a stop string is at most {MAX_STOP_CHARS} characters; "
                                f"this one has {len(s)}")


@dataclass
class SamplingConfig:
    """The settings of one generation. Each field's help (here, in `centelha generate
    --help` and `centelha config sampling`) is the text under it."""

    max_new_tokens: int = 200
    """At most this many new tokens (the context may end the text sooner)."""
    temperature: float = 1.0
    """Divide the logits by this before sampling: below 1 sharper, above 1 flatter;
    0 takes the most likely token every time (greedy)."""
    top_k: int | None = None
    """Keep only the k most likely tokens; null: all."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability
    reaches this, in (0, 1]; null: all."""
    min_p: float | None = None
    """Keep tokens at least this share of the most likely one's probability, in (0, 1]."""
    repetition_penalty: float = 1.0
    """CTRL's penalty on every token already in the prompt or the text: above 1
    discourages repeats."""
    presence_penalty: float = 0.0
    """OpenAI's, from -2 to 2: subtracted once from each token already generated."""
    frequency_penalty: float = 0.0
    """OpenAI's, from -2 to 2: subtracted per time a token was already generated."""
    stop: list[str] = field(default_factory=list)
    """Texts that end the generation; the stop text itself is not returned."""
    seed: int | None = None
    """Seed of the sampler, for reproducible text; null: a fresh one each time."""

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, low=0)
        _check_number("temperature", self.temperature, low=0.0, high=MAX_TEMPERATURE)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, low=1)
        for name in ("top_p", "min_p"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, low=0.0, high=1.0)
                if value == 0.0:
                    raise CentelhaError(f"{name} must be in (0, 1], not 0")
        _check_number("repetition_penalty", self.repetition_penalty, low=0.0, high=100.0)
        if self.repetition_penalty == 0.0:
            raise CentelhaError("repetition_penalty must be positive")
        for name in ("presence_penalty", "frequency_penalty"):
            _check_number(name, getattr(self, name), low=-2.0, high=2.0)
        _check_stops(self.stop)
        if self.seed is not None:
            _check_int("seed", self.seed, low=MIN_SEED, high=MAX_SEED)

    @property
    def greedy(self) -> bool:
        """Temperature 0, or so close to it that dividing by it would overflow the logits:
        sampling then is the argmax anyway (its limit as the temperature goes to 0)."""
        return self.temperature < MIN_TEMPERATURE

    @property
    def counts_tokens(self) -> bool:
        """Whether sampling needs how often each token was generated."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


# -- logits processors (each takes and returns a 1-D logits vector) ------------------------
def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's penalty: seen tokens' logits are divided by it (multiplied, when negative)."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    logits = logits.clone()
    picked = logits[seen]
    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def apply_openai_penalties(logits: torch.Tensor, counts: torch.Tensor | None,
                           presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's presence and frequency penalties over the tokens generated so far (not the
    prompt, as vLLM does): logit − presence·[count > 0] − frequency·count."""
    if counts is None or (presence == 0.0 and frequency == 0.0):
        return logits
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits."""
    if k >= logits.numel():
        return logits
    threshold = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens strictly more likely
    remove_sorted = before >= p
    remove = torch.zeros_like(remove_sorted).scatter(0, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens at least p times as likely as the most likely one."""
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.max(), float("-inf"))


def process_logits(logits: torch.Tensor, seen: torch.Tensor, cfg: SamplingConfig,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """`seen`: prompt and generated ids (repetition penalty); `counts`: how often each
    vocabulary entry was generated (presence/frequency penalties)."""
    logits = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    logits = apply_openai_penalties(logits, counts, cfg.presence_penalty, cfg.frequency_penalty)
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k is not None:
        logits = filter_top_k(logits, cfg.top_k)
    if cfg.top_p is not None:
        logits = filter_top_p(logits, cfg.top_p)
    if cfg.min_p is not None:
        logits = filter_min_p(logits, cfg.min_p)
    return logits


def choose_token(logits: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator | None) -> int:
    if cfg.greedy:
        return int(logits.argmax())
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# -- randomness ---------------------------------------------------------------------------
def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
