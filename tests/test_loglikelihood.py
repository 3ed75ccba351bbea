"""Continuation log-likelihoods: the shared-prefix batch equals scoring each request alone
with a plain forward pass, tokenized as lm-eval tokenizes."""

import pytest
import torch

from centelha.evals.loglikelihood import encode_pair, score_batch, score_group, score_requests


def naive(model, context_ids, continuation_ids):
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).float(), dim=-1)[0]
    positions = range(len(context_ids) - 1, ids.shape[1] - 1)
    picked = [logp[p, ids[0, p + 1]].item() for p in positions]
    greedy = all(logp[p].argmax().item() == ids[0, p + 1].item() for p in positions)
    return sum(picked), greedy


GROUPS = {
    "shared context": [("Capitu olhou para", " Bentinho"), ("Capitu olhou para", " o mar"),
                       ("Capitu olhou para", " a janela aberta da sala")],
    "different contexts": [("Sarah was better than Maria so Sarah", " got the cases."),
                           ("Sarah was better than Maria so Maria", " got the cases.")],
    "no common start": [("Era uma vez", " um rato"), ("Dom Casmurro", " é um livro")],
    "one request": [("A casa", " caiu")],
    "trailing space": [("Resposta: ", "sim"), ("Resposta: ", "não")],
}


@pytest.mark.parametrize("name", list(GROUPS))
def test_a_group_equals_each_request_alone(tiny_chat_llm, name):
    model, tok = tiny_chat_llm.model, tiny_chat_llm.tokenizer
    pairs = [encode_pair(tok, c, x) for c, x in GROUPS[name]]
    for got, (context, continuation) in zip(score_group(model, pairs), pairs, strict=True):
        logprob, greedy = naive(model, context, continuation)
        assert got.logprob == pytest.approx(logprob, abs=1e-4)
        assert got.greedy == greedy and got.tokens == len(continuation)


def test_pairs_are_tokenized_as_lm_eval_does(tiny_chat_llm):
    tok = tiny_chat_llm.tokenizer
    context, continuation = encode_pair(tok, "Resposta: ", "sim")
    assert context == tok.encode("Resposta:")            # the space moved to the continuation
    assert context + continuation == tok.encode("Resposta: sim")
    prefix, sentence = encode_pair(tok, "", "O gato dorme.")
    assert prefix == [tok.eos_id] and sentence == tok.encode("O gato dorme.")


def test_a_long_request_loses_context_from_the_left(tiny_chat_llm):
    model, tok = tiny_chat_llm.model, tiny_chat_llm.tokenizer
    limit = model.cfg.block_size
    context = tok.encode("Era uma vez um rato que roía a roupa do rei. " * 40)
    assert len(context) > limit
    continuation = tok.encode(" Fim.")
    got = score_group(model, [(context, continuation)])[0]
    kept = context[len(context) + len(continuation) - limit - 1:]
    assert got.logprob == pytest.approx(naive(model, kept, continuation)[0], abs=1e-4)


def test_score_requests_keeps_the_groups(tiny_chat_llm):
    model, tok = tiny_chat_llm.model, tiny_chat_llm.tokenizer
    groups = [GROUPS["shared context"], GROUPS["one request"]]
    scored = score_requests(model, tok, groups)
    assert [len(g) for g in scored] == [3, 1]
    alone = score_group(model, [encode_pair(tok, *GROUPS["one request"][0])])[0]
    assert scored[1][0] == alone


def test_one_token_continuations_score_from_the_prefix_alone(tiny_chat_llm):
    model, tok = tiny_chat_llm.model, tiny_chat_llm.tokenizer
    context = tok.encode("Capitu olhou para")
    pairs = [(context, [tok.encode(" o")[0]]), (context, [tok.encode(" a")[0]])]
    for got, (c, x) in zip(score_group(model, pairs), pairs, strict=True):
        assert got.logprob == pytest.approx(naive(model, c, x)[0], abs=1e-4)


def test_groups_batched_together_equal_each_alone(tiny_chat_llm):
    # different prefix lengths side by side (ragged rows), a one-token continuation with no
    # suffix to feed, a group with no common start, and one too long to share a batch
    model, tok = tiny_chat_llm.model, tiny_chat_llm.tokenizer
    groups = [[encode_pair(tok, c, x) for c, x in g] for g in GROUPS.values()]
    context = tok.encode("Capitu olhou para")
    groups.append([(context, [tok.encode(" o")[0]]), (context, [tok.encode(" a")[0]])])
    long_context = tok.encode("Era uma vez um rato que roía a roupa do rei. " * 40)
    groups.append([(long_context, tok.encode(" Fim.")), (long_context, tok.encode(" Não."))])
    together = score_batch(model, groups)
    alone = [score_batch(model, [g])[0] for g in groups]
    for got, expected in zip(together, alone, strict=True):
        assert [c.logprob for c in got] == pytest.approx([c.logprob for c in expected],
                                                         abs=1e-4)
        assert [c.greedy for c in got] == [c.greedy for c in expected]
    without_long = score_batch(model, groups[:-1])
    for got, expected in zip(without_long, alone, strict=False):
        assert [c.logprob for c in got] == pytest.approx([c.logprob for c in expected],
                                                         abs=1e-4)


def test_requests_are_chunked_without_changing_their_scores(tiny_chat_llm):
    model, tok = tiny_chat_llm.model, tiny_chat_llm.tokenizer
    groups = list(GROUPS.values()) * 3
    big = score_requests(model, tok, groups)
    small = score_requests(model, tok, groups, rows=2, tokens=16)
    assert [len(g) for g in big] == [len(g) for g in small] == [len(g) for g in groups]
    assert [c.logprob for g in big for c in g] == pytest.approx(
        [c.logprob for g in small for c in g], abs=1e-4)
