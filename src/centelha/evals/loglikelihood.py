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
multiple-choice question share their context, so `score_batch` runs each item's longest
common token prefix once into a KV cache, copies it to one cache row per request, and
runs only the continuations; consecutive items go side by side in both passes, and the
LM head runs only where a token is scored. Items whose requests share nothing still go
through in the batch. A request
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


@dataclass
class _Row:
    """One request laid out for the batch: its group's prefix row, the tokens fed after
    that prefix, and where in them the continuation is predicted."""
    group: int
    shared: int               # tokens of its group's common prefix
    suffix: list[int]         # the tokens fed after the prefix
    first: int                # suffix index predicting the first target; -1: the prefix's last
    continuation: list[int]


def _layout(groups: list[list[tuple[list[int], list[int]]]], limit: int
            ) -> tuple[list[list[int]], list[_Row]]:
    prefixes, rows = [], []
    for g, pairs in enumerate(groups):
        pairs = [(_fit(c, x, limit), x) for c, x in pairs]
        fed = [(c + x)[:-1] for c, x in pairs]  # the last token is predicted, not fed
        # every request keeps its whole continuation after the prefix
        shared = min(_common_prefix(fed), *(len(c) for c, _ in pairs))
        prefixes.append(fed[0][:shared])
        for (context, continuation), tokens in zip(pairs, fed, strict=True):
            rows.append(_Row(g, shared, tokens[shared:], len(context) - 1 - shared,
                             continuation))
    return prefixes, rows


def _padded(sequences: list[list[int]], device: torch.device) -> torch.Tensor:
    ids = torch.zeros(len(sequences), max(len(s) for s in sequences), dtype=torch.long,
                      device=device)
    for i, tokens in enumerate(sequences):
        ids[i, :len(tokens)] = torch.tensor(tokens, device=device)
    return ids


def _prefill(model: Transformer, prefixes: list[list[int]], device: torch.device):
    """A cache holding every non-empty prefix (one row each, right-padded), and the logits
    of each one's last position (None for an empty prefix)."""
    present = [i for i, p in enumerate(prefixes) if p]
    last: list[torch.Tensor | None] = [None] * len(prefixes)
    if not present:
        return None, present, last
    ids = _padded([prefixes[i] for i in present], device)
    cache = model.new_cache(batch=len(present), max_len=ids.shape[1])
    at = torch.zeros_like(ids, dtype=torch.bool)
    for row, i in enumerate(present):
        at[row, len(prefixes[i]) - 1] = True
    logits = model(ids, cache=cache, at=at).float()  # (len(present), V), row order
    for row, i in enumerate(present):
        last[i] = logits[row]
    return cache, present, last


@torch.inference_mode()
def score_batch(model: Transformer, groups: list[list[tuple[list[int], list[int]]]]
                ) -> list[list[Continuation]]:
    """Score groups of token-id (context, continuation) pairs (a group: the choices of one
    question) in two forward passes: every group's common prefix once, side by side, then
    every request's remaining tokens from a copy of its prefix, side by side."""
    device = model.tok_emb.weight.device
    limit = model.cfg.block_size
    prefixes, rows = _layout(groups, limit)
    # rows of different prefixes are padded to the longest suffix from the longest prefix
    span = max(r.shared for r in rows) + max(len(r.suffix) for r in rows)
    if span > limit and len(groups) > 1:  # too long together: one group at a time
        return [score_batch(model, [group])[0] for group in groups]
    pre_cache, present, last = _prefill(model, prefixes, device)
    prefix_row = {group: row for row, group in enumerate(present)}
    # the second pass: each request with tokens left to feed continues its own copy of its
    # group's prefix (a one-token continuation right after it is scored by the first pass)
    fed = [i for i, r in enumerate(rows) if r.suffix]
    predicted: dict[int, torch.Tensor] = {}
    if fed:
        cache = model.new_cache(batch=len(fed), max_len=span)
        ids = _padded([rows[i].suffix for i in fed], device)
        at = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(fed):
            r = rows[i]
            if r.shared:
                source = prefix_row[r.group]
                cache.k[:, row, :, :r.shared] = pre_cache.k[:, source, :, :r.shared]
                cache.v[:, row, :, :r.shared] = pre_cache.v[:, source, :, :r.shared]
                cache.lengths[row] = r.shared
            at[row, max(r.first, 0):r.first + len(r.continuation)] = True
        logits = model(ids, cache=cache, at=at).float()
        for i, chunk in zip(fed, logits.split(at.sum(dim=1).tolist()), strict=True):
            predicted[i] = chunk
    results: list[list[Continuation]] = [[] for _ in groups]
    for i, r in enumerate(rows):
        parts = [last[r.group][None]] if r.first < 0 else []
        if i in predicted:
            parts.append(predicted[i])
        logp = torch.log_softmax(torch.cat(parts), dim=-1)
        target = torch.tensor(r.continuation, device=device)
        chosen = logp.gather(1, target[:, None])[:, 0]
        results[r.group].append(Continuation(chosen.sum().item(),
                                             bool((logp.argmax(-1) == target).all()),
                                             len(r.continuation)))
    return results


def score_group(model: Transformer, pairs: list[tuple[list[int], list[int]]]
                ) -> list[Continuation]:
    """Score token-id (context, continuation) pairs that belong together (the choices of
    one question): the common prefix once, the rest in one batch."""
    return score_batch(model, [pairs])[0]


def _chunks(groups: list[list[tuple[list[int], list[int]]]], rows: int, tokens: int):
    """Consecutive groups, as many as fit `rows` requests and about `tokens` padded tokens."""
    chunk, width, count = [], 0, 0
    for group in groups:
        longest = max(len(c) + len(x) for c, x in group)
        if chunk and (count + len(group) > rows or
                      max(width, longest) * (count + len(group)) > tokens):
            yield chunk
            chunk, width, count = [], 0, 0
        chunk.append(group)
        width, count = max(width, longest), count + len(group)
    if chunk:
        yield chunk


def score_requests(model: Transformer, tokenizer: Tokenizer,
                   groups: list[list[tuple[str, str]]], rows: int = 32, tokens: int = 2048,
                   progress=lambda done: None) -> list[list[Continuation]]:
    """Score text (context, continuation) requests, each inner list sharing its prefix;
    consecutive groups go through together, up to `rows` requests and about `tokens`
    padded tokens a batch."""
    encoded = [[encode_pair(tokenizer, c, x) for c, x in group] for group in groups]
    scored: list[list[Continuation]] = []
    for chunk in _chunks(encoded, rows, tokens):
        scored += score_batch(model, chunk)
        progress(len(scored))
    return scored
