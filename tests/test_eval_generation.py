"""`eval generate`: task files read strictly, answers decoded in a batch equal to one at a
time, BLEU/chrF/ROUGE equal to sacrebleu and rouge-score called directly, accents kept."""

import json

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer
from typer.testing import CliRunner

from centelha.cli import app
from centelha.errors import CentelhaError
from centelha.evals.generation import evaluate_generation, read_generation_task
from centelha.evals.text_metrics import (
    WordTokenizer,
    exact_match,
    normalise_answer,
    score_outputs,
)
from centelha.sampling import SamplingConfig

OUTPUTS = ["A ação foi rápida.", "O pão está na mesa", "coração"]
REFERENCES = [["A ação foi rápida."], ["O pão está sobre a mesa.", "O pão está na mesa."],
              ["o coração"]]


def test_bleu_and_chrf_equal_sacrebleu_called_directly():
    corpus, _ = score_outputs(OUTPUTS, REFERENCES, ("bleu", "chrf"))
    streams = [[refs[0] for refs in REFERENCES], [None, REFERENCES[1][1], None]]
    assert corpus["bleu"]["score"] == sacrebleu.corpus_bleu(OUTPUTS, streams).score
    assert corpus["chrf"]["score"] == sacrebleu.corpus_chrf(OUTPUTS, streams).score
    assert corpus["bleu"]["signature"].startswith("nrefs:var|")
    assert "version:" in corpus["chrf"]["signature"]


def test_rouge_equals_rouge_score_with_our_tokenizer_and_keeps_accents():
    corpus, rows = score_outputs(OUTPUTS, REFERENCES, ("rouge",))
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=WordTokenizer())
    for out, refs, row in zip(OUTPUTS, REFERENCES, rows, strict=True):
        direct = scorer.score_multi(refs, out)
        assert row == pytest.approx({k: 100 * v.fmeasure for k, v in direct.items()})
    assert corpus["rouge1"] == pytest.approx(sum(r["rouge1"] for r in rows) / 3)
    assert WordTokenizer().tokenize("A AÇÃO é rápida, não?") == ["a", "ação", "é", "rápida",
                                                                 "não"]
    # rouge-score's own tokenizer reads "ação" and "acao" alike ("a o" / "acao" differ, but
    # "ação" and "aão" are the same to it); ours tells accented words apart
    default = RougeScorer(["rouge1"])
    assert default.score("ação", "aão")["rouge1"].fmeasure == 1.0
    assert score_outputs(["aão"], [["ação"]], ("rouge",))[0]["rouge1"] == 0.0
    assert score_outputs(["ação"], [["ação"]], ("rouge",))[0]["rouge1"] == 100.0


@pytest.mark.parametrize("output, reference, same", [
    ("São Paulo.", "são paulo", True),
    ("  “Lisboa”  ", "Lisboa", True),
    ("sao paulo", "São Paulo", False),     # accents count
    ("três  mil", "três mil", True),
    ("3,5 km", "3.5 km", False),           # inner punctuation counts
])
def test_exact_match_normalisation(output, reference, same):
    assert exact_match(output, [reference]) is same
    assert normalise_answer("É ISSO!") == "é isso"


def write_task(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


TASK_LINES = [
    json.dumps({"id": "a", "prompt": "Era uma vez", "reference": "um rato"}),
    json.dumps({"messages": [{"role": "user", "content": "Diga olá"}],
                "references": ["olá", "oi"]}, ensure_ascii=False),
    json.dumps({"prompt": "Capitu olhou", "reference": "para Bentinho"}),
]


def test_batched_answers_equal_one_at_a_time_and_are_saved(tiny_chat_llm, tmp_path):
    task = write_task(tmp_path / "task.jsonl", TASK_LINES)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
    report = evaluate_generation(tiny_chat_llm, task, sampling=sampling, batch=2,
                                 out=tmp_path / "results")
    alone = [tiny_chat_llm.generate("Era uma vez", temperature=0.0, max_new_tokens=12).strip(),
             tiny_chat_llm.chat([{"role": "user", "content": "Diga olá"}], temperature=0.0,
                                max_new_tokens=12),
             tiny_chat_llm.generate("Capitu olhou", temperature=0.0, max_new_tokens=12).strip()]
    assert [r["output"] for r in report.examples] == alone
    saved = [json.loads(line) for line in
             (tmp_path / "results" / "outputs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in saved] == ["a", "2", "3"]
    assert [r["output"] for r in saved] == alone
    rescored, _ = score_outputs(alone, [r["references"] for r in saved])
    scores = json.loads((tmp_path / "results" / "scores.json").read_text())["scores"]
    assert scores == json.loads(json.dumps(rescored)) == json.loads(json.dumps(report.scores))


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x"}', r"task.jsonl:2: give \"reference\""),
    ('{"prompt": "x", "messages": [], "reference": "y"}', r"task.jsonl:2: give \"prompt\""),
    ('{"prompt": "", "reference": "y"}', r"task.jsonl:2: \"prompt\" must be a non-empty"),
    ('{"prompt": "x", "references": []}', r"task.jsonl:2: the references must be"),
    ('{"messages": [{"role": "user"}], "reference": "y"}', r"task.jsonl:2: \"messages\" must"),
    ('{"prompt": "x", "reference": "y"', r"task.jsonl:2: not valid JSON"),
])
def test_bad_task_lines_are_named(tmp_path, line, message):
    task = write_task(tmp_path / "task.jsonl", [TASK_LINES[0], line])
    with pytest.raises(CentelhaError, match=message):
        read_generation_task(task)


def test_an_empty_task_or_unknown_metric_is_an_error(tiny_chat_llm, tmp_path):
    empty = write_task(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(CentelhaError, match="no examples"):
        read_generation_task(empty)
    task = write_task(tmp_path / "task.jsonl", TASK_LINES)
    with pytest.raises(CentelhaError, match="metrics must be some of bleu, chrf, rouge"):
        evaluate_generation(tiny_chat_llm, task, metrics=("bleu", "meteor"))


def test_the_cli_scores_and_rejects_a_bad_task_first(chat_base, tmp_path):
    task = write_task(tmp_path / "task.jsonl", TASK_LINES)
    result = CliRunner().invoke(app, ["eval", "generate", str(chat_base), str(task),
                                      "--metrics", "chrf,exact", "--max-new-tokens", "8",
                                      "--out", str(tmp_path / "r"), "--json",
                                      str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "s.json").read_text())
    assert set(figures["scores"]) == {"chrf", "exact"} and figures["examples"] == 3
    assert "nrefs:var" in result.output
    bad = write_task(tmp_path / "bad.jsonl", ['{"prompt": 3, "reference": "y"}'])
    result = CliRunner().invoke(app, ["eval", "generate", "no-such-model", str(bad)])
    assert "bad.jsonl:1:" in str(result.exception)
