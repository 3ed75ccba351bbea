"""The lm-evaluation-harness adapter: a local task (YAML + local JSON data, no hub) runs end
to end on a centelha model, and its numbers equal our own scorers'."""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from centelha.evals.harness import CentelhaLM  # noqa: E402
from centelha.evals.suite import read_task, run_task  # noqa: E402

ITEMS = [{"question": "Quem escreveu Dom Casmurro?", "choices": ["Machado", "Camões"], "gold": 0},
         {"question": "Capitu tinha olhos de", "choices": ["ressaca", "gato", "mar"], "gold": 0},
         {"question": "O céu é", "choices": ["azul", "verde"], "gold": 1}]

TASK_YAML = """task: centelha_local_{kind}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
{body}
"""
CHOICE = """output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
"""
GENERATE = """output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[gold]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def local_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ITEMS),
                    encoding="utf-8")
    folder = tmp_path / "tasks"
    folder.mkdir()
    for kind, body in (("mc", CHOICE), ("gen", GENERATE)):
        (folder / f"{kind}.yaml").write_text(TASK_YAML.format(kind=kind, data=data,
                                                              body=body.format()))
    return folder


@pytest.mark.slow
def test_a_local_task_runs_end_to_end_and_equals_our_suite(chat_base, local_tasks, tmp_path):
    results = lm_eval.simple_evaluate(
        model="centelha", model_args=f"model={chat_base}",
        tasks=["centelha_local_mc", "centelha_local_gen"],
        task_manager=TaskManager(include_path=str(local_tasks)))
    acc = results["results"]["centelha_local_mc"]["acc,none"]
    ours_file = tmp_path / "ours.jsonl"  # the same requests: lm-eval joins with a space
    ours_file.write_text("".join(json.dumps({"context": i["question"], "choices": [
        " " + c for c in i["choices"]], "gold": i["gold"]}, ensure_ascii=False) + "\n"
        for i in ITEMS), encoding="utf-8")
    from centelha import load
    ours = run_task(load(str(chat_base)), read_task(str(ours_file)))
    assert acc == pytest.approx(ours.metrics["acc"])
    assert "exact_match,none" in results["results"]["centelha_local_gen"]


def test_the_three_request_kinds_equal_our_own_scoring(chat_base):
    lm = CentelhaLM(model=str(chat_base))
    tok, model = lm.llm.tokenizer, lm.llm.model
    requests = [Instance("loglikelihood", {}, ("Capitu olhou", " para o mar"), 0),
                Instance("loglikelihood", {}, ("Capitu olhou", " para Bentinho"), 1),
                Instance("loglikelihood", {}, ("", "Era uma vez"), 2)]
    got = lm.loglikelihood(requests)

    def direct(context_ids, continuation_ids):
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]).float(), dim=-1)[0]
        return sum(logp[p, ids[0, p + 1]].item()
                   for p in range(len(context_ids) - 1, ids.shape[1] - 1))

    whole = tok.encode("Capitu olhou para o mar")
    context = tok.encode("Capitu olhou")
    assert got[0][0] == pytest.approx(direct(context, whole[len(context):]), abs=1e-4)
    assert got[2][0] == pytest.approx(direct([tok.eos_id], tok.encode("Era uma vez")), abs=1e-4)
    text = "Era uma vez um rato que roía a roupa do rei de Roma. " * 3
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolling[0] == pytest.approx(direct([tok.eos_id], tok.encode(text)), abs=1e-3)
    generated = lm.generate_until([Instance("generate_until", {}, (
        "Capitu olhou", {"until": ["\n"], "max_gen_toks": 5, "do_sample": False}), 0)])
    assert generated == [lm.llm.generate("Capitu olhou", temperature=0.0, max_new_tokens=5,
                                         stop=["\n"]).strip()]
