"""The pieces objectives are made of: the epoch walk, logits at scored positions only,
the classifier's pooling, DPO's sequence log-probabilities, and the classifier's files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from centelha.model import IGNORE, Transformer
from centelha.objectives.base import Walk
from centelha.objectives.classifier import SequenceClassifier, padded
from centelha.objectives.dpo import sequence_logps
from centelha.objectives.language import next_token_loss
from tests.conftest import tiny_config


@pytest.mark.parametrize("lengths", [None, [5, 1, 9, 3, 7, 2, 8, 4, 6, 10] * 3])
def test_the_walk_sees_every_example_once_an_epoch(lengths):
    walk = Walk(30, seed=1, lengths=lengths)
    epoch_one, epoch_two = walk.next(30), walk.next(30)
    assert sorted(epoch_one) == sorted(epoch_two) == list(range(30))
    assert epoch_one != epoch_two  # a fresh order each epoch
    again = Walk(30, seed=1, lengths=lengths)
    assert again.next(30) == epoch_one  # the order is a function of (seed, epoch)


def test_grouped_batches_hold_texts_of_similar_length():
    lengths = [n % 50 + 1 for n in range(640)]
    walk = Walk(640, seed=0, lengths=lengths)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
              for b in (walk.next(8) for _ in range(80))]
    plain = Walk(640, seed=0)
    random_spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b)
                     for b in (plain.next(8) for _ in range(80))]
    assert sum(spread) < sum(random_spread) / 4


def test_a_walk_resumed_from_its_position_draws_the_same_examples():
    walk = Walk(17, seed=3, lengths=list(range(17)))
    walk.next(5)
    resumed = Walk(17, seed=3, lengths=list(range(17)))
    resumed.drawn = walk.drawn
    assert resumed.next(20) == walk.next(20)


@torch.no_grad()
def test_logits_at_scored_positions_equal_the_full_logits_there():
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=64, block_size=16)).eval()
    ids = torch.randint(0, 64, (3, 12))
    targets = torch.randint(0, 64, (3, 12))
    targets[:, :5] = IGNORE
    targets[1, 9:] = IGNORE
    at = targets != IGNORE
    assert torch.allclose(model(ids, at=at), model(ids)[at], atol=1e-6)
    full = F.cross_entropy(model(ids).view(-1, 64), targets.view(-1), ignore_index=IGNORE,
                           reduction="sum")
    assert torch.allclose(next_token_loss(model, {"ids": ids, "targets": targets}), full,
                          atol=1e-5)


@torch.no_grad()
def test_sequence_logps_sum_and_mean_the_scored_tokens():
    torch.manual_seed(0)
    model = Transformer(tiny_config("llama", vocab_size=64, block_size=16)).eval()
    ids = torch.randint(0, 64, (2, 8))
    targets = torch.full((2, 8), IGNORE)
    targets[0, 5:] = torch.tensor([3, 4, 5])
    targets[1, 7] = 9
    logp = F.log_softmax(model(ids), -1)
    expected = torch.stack([logp[0, 5, 3] + logp[0, 6, 4] + logp[0, 7, 5], logp[1, 7, 9]])
    assert torch.allclose(sequence_logps(model, ids, targets, mean=False), expected, atol=1e-5)
    assert torch.allclose(sequence_logps(model, ids, targets, mean=True),
                          expected / torch.tensor([3.0, 1.0]), atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@torch.no_grad()
def test_a_texts_class_logits_do_not_depend_on_its_batch(pooling):
    torch.manual_seed(0)
    body = Transformer(tiny_config("llama", vocab_size=64, block_size=32)).eval()
    classifier = SequenceClassifier(body, 3, pooling).eval()
    rows = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    ids, lengths = padded(rows)
    together = classifier(ids, lengths)
    for i, row in enumerate(rows):
        alone = classifier(*padded([row]))
        assert torch.allclose(together[i], alone[0], atol=1e-5)
    hidden = body.hidden_states(torch.tensor([rows[1]]))
    expected = hidden[0, -1] if pooling == "last" else hidden[0].mean(0)
    assert torch.allclose(together[1], classifier.head(expected), atol=1e-5)


def test_a_damaged_classifier_folder_is_one_line(tmp_path):
    from centelha.errors import CentelhaError
    from centelha.objectives.classifier import load_classifier

    (tmp_path / "classifier.json").write_text('{"format": "centelha-classifier"}')
    with pytest.raises(CentelhaError, match="is damaged"):
        load_classifier(tmp_path)
    (tmp_path / "classifier.json").write_text('{"format": "something-else"}')
    with pytest.raises(CentelhaError, match="not a centelha classifier"):
        load_classifier(tmp_path)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "Oi", "chosen": "Olá"}', ":2: a preference pair needs prompt, chosen and "
                                          "rejected (missing rejected)"),
    ('{"prompt": 3, "chosen": "a", "rejected": "b"}', ":2: prompt must be a string"),
    ('{"prompt": "Oi", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}',
     ":2 (chosen): no assistant message, so nothing to learn from"),
    ("not json", ":2:"),
])
def test_a_bad_preference_line_is_one_line_naming_it(tiny_chat_llm, tmp_path, line, message):
    from centelha.errors import CentelhaError
    from centelha.finetune.dpo_data import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "Oi", "chosen": "Olá", "rejected": "Claro! Olá"}\n' + line
                    + "\n", encoding="utf-8")
    with pytest.raises(CentelhaError, match=f"^{path}" + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        read_pairs(path, tiny_chat_llm.tokenizer)


def test_a_preference_pair_scores_only_its_response(tiny_chat_llm, tmp_path):
    from centelha.finetune.dpo_data import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": [{"role": "user", "content": "Oi"}, {"role": "assistant", '
                    '"content": "Olá"}, {"role": "user", "content": "Tudo bem?"}], '
                    '"chosen": "Tudo.", "rejected": "Claro! Tudo."}\n', encoding="utf-8")
    pair = read_pairs(path, tiny_chat_llm.tokenizer)[0]
    tokenizer = tiny_chat_llm.tokenizer
    scored = [t for t in pair.chosen.targets if t != IGNORE]
    assert tokenizer.decode(scored) == "Tudo.<|im_end|>"  # not the earlier "Olá" turn
    scored = [t for t in pair.rejected.targets if t != IGNORE]
    assert tokenizer.decode(scored) == "Claro! Tudo.<|im_end|>"
