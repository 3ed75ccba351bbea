"""Log-likelihood of continuations: the one measurement behind multiple-choice benchmarks,
bias pairs and the lm-eval adapter.

A request is a (context, continuation) pair of texts; its score is the summed log-
probability of the continuation's tokens given the context, and whether each of them
was the model's greedy choice. Tokenization follows lm-evaluation-harness, so the same
requests give the same numbers as its `hf` model: trailing spaces of the context move to
the continuation, the continuation's tokens are those of context + continuation after
the context's own tokens (a BPE merge across the boundary stays whole), and an empty
context is the model's BOS token (its end-of-text token when it has no BOS).

What makes it fast is sharing work between the requests of one item. The choices of a
multiple-choice question share their context, so `score_group` runs the longest common
token prefix once into a KV cache, copies it to one cache row per request, and runs
only the continuations, together, in one batch; the LM head runs only where a token is
scored. An item whose requests share nothing still goes through in one batch. A request
longer than the model's context loses tokens from the left, as lm-eval's does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer


@dataclass
class Continuation:
    logprob: float      # summed log-probability of the continuation's tokens, nats
    greedy: bool        # every token was the most likely one
    tokens: int         # how many tokens the continuation has


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's `hf` model makes them."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if prefix is None:
            raise CentelhaError("an empty context needs a BOS or end-of-text token, and "
                                "this tokenizer has neither")
        return [prefix], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        whole, context_ids = [tokenizer.bos_id, *whole], [tokenizer.bos_id, *context_ids]
    return context_ids, whole[len(context_ids):]


def _common_prefix(sequences: list[list[int]]) -> int:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def _fit(context: list[int], continuation: list[int], limit: int) -> list[int]:
    """The context, cut from the left so that context + continuation fits `limit` + 1
    tokens (the last token is only predicted, never fed)."""
    if not continuation:
        raise CentelhaError("a continuation must have at least one token")
    if len(continuation) > limit:
        raise CentelhaError(f"a continuation of {len(continuation)} tokens does not fit this "
                            f"model's context of {limit}")
    return context[max(0, len(context) + len(continuation) - limit - 1):]


@torch.inference_mode()
def score_group(model: Transformer, pairs: list[tuple[list[int], list[int]]]
                ) -> list[Continuation]:
    """Score token-id (context, continuation) pairs that belong together (the choices of
    one question): the common prefix once, the rest in one batch."""
    limit = model.cfg.block_size
    pairs = [(_fit(c, x, limit), x) for c, x in pairs]
    sequences = [(c + x)[:-1] for c, x in pairs]  # the last token is predicted, not fed
    # every request keeps its whole continuation after the prefix
    shared = min(_common_prefix(sequences), *(len(c) for c, _ in pairs))
    device = model.tok_emb.weight.device
    rows = len(pairs)
    cache, before = None, torch.empty(0, model.cfg.vocab_size, device=device)
    if shared:
        cache = model.new_cache(batch=rows, max_len=max(len(s) for s in sequences))
        first = torch.tensor([sequences[0][:shared]], device=device)
        before = model(first, cache=cache, rows=slice(0, 1), last_only=True)[:, -1].float()
        cache.k[:, 1:, :, :shared] = cache.k[:, :1, :, :shared]
        cache.v[:, 1:, :, :shared] = cache.v[:, :1, :, :shared]
        cache.lengths[1:] = [shared] * (rows - 1)
    suffixes = [s[shared:] for s in sequences]
    width = max(len(s) for s in suffixes)
    logits = torch.empty(rows, 0, model.cfg.vocab_size, device=device)
    if width:  # zero when a single next token after the prefix is all there is to score
        ids = torch.zeros(rows, width, dtype=torch.long, device=device)
        for row, suffix in enumerate(suffixes):
            ids[row, :len(suffix)] = torch.tensor(suffix, device=device)
        rows_slice = slice(0, rows) if cache is not None else None
        logits = model(ids, cache=cache, rows=rows_slice).float()  # (rows, width, V)
    results = []
    for row, (context, continuation) in enumerate(pairs):
        # the token at position p is predicted by the logits at p - 1; `before` holds
        # position shared - 1 (the prefill's last), the suffix's logits the ones after it
        start = len(context) - max(shared, 1)
        predicting = torch.cat([before, logits[row]])[start:start + len(continuation)]
        logp = torch.log_softmax(predicting, dim=-1)
        target = torch.tensor(continuation, device=device)
        chosen = logp.gather(1, target[:, None])[:, 0]
        results.append(Continuation(chosen.sum().item(),
                                    bool((logp.argmax(-1) == target).all()),
                                    len(continuation)))
    return results


def score_requests(model: Transformer, tokenizer: Tokenizer,
                   groups: list[list[tuple[str, str]]],
                   progress=lambda done: None) -> list[list[Continuation]]:
    """Score text (context, continuation) requests, each inner list sharing its work."""
    scored = []
    for done, group in enumerate(groups, start=1):
        scored.append(score_group(model, [encode_pair(tokenizer, c, x) for c, x in group]))
        progress(done)
    return scored
