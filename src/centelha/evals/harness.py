"""centelha as a model of EleutherAI's lm-evaluation-harness, so any lm-eval task runs on
any model centelha loads (at any dtype, with an adapter).

lm-eval finds models in its own registry and has no plugin entry point, so the model is
registered when this module is imported. Two ways in:

    centelha-lm-eval run --model centelha --model_args model=smollm2-135m-instruct,dtype=int4 \\
        --tasks <task> --include_path <dir>       # lm_eval's own CLI, centelha registered
    import centelha.evals.harness; lm_eval.simple_evaluate(model="centelha", ...)

The three request kinds map onto our own measurements: `loglikelihood` groups requests
by context and scores each group with its shared prefix once (`evals.loglikelihood`),
`loglikelihood_rolling` scores a whole text after the BOS / end-of-text token in
context-sized chunks, each with as much preceding text as fits, and `generate_until`
decodes in a batch through the engine with the task's stop strings.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from centelha.evals.generation import generate_outputs
from centelha.evals.loglikelihood import score_group, score_requests
from centelha.sampling import SamplingConfig


@register_model("centelha")
class CentelhaLM(LM):
    def __init__(self, model: str = "smollm2-135m-instruct", dtype: str = "fp32",
                 adapter: str | None = None, batch_size: int | str = 8, **_ignored) -> None:
        super().__init__()
        from centelha.api import load

        self.llm = load(model, dtype=dtype, adapter=adapter or None)
        self.batch = int(batch_size) if str(batch_size).isdigit() else 8

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Requests with the same context are scored as one item (their prefix shared)."""
        by_context: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            by_context.setdefault(request.args[0], []).append(i)
        groups = [[requests[i].args for i in members] for members in by_context.values()]
        scored = score_requests(self.llm.model, self.llm.tokenizer, groups)
        answers: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for members, results in zip(by_context.values(), scored, strict=True):
            for i, result in zip(members, results, strict=True):
                answers[i] = (result.logprob, result.greedy)
        return answers

    def loglikelihood_rolling(self, requests) -> list[float]:
        tok, model = self.llm.tokenizer, self.llm.model
        chunk = model.cfg.block_size - 1
        prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
        totals = []
        for request in requests:
            ids = [prefix, *tok.encode(request.args[0])]
            total = 0.0
            for start in range(1, len(ids), chunk):  # context cut from the left to fit
                total += score_group(model, [(ids[:start], ids[start:start + chunk])])[0].logprob
            totals.append(total)
        return totals

    def generate_until(self, requests) -> list[str]:
        """Requests with the same settings are decoded together, `batch_size` rows at once."""
        groups: dict[str, tuple[SamplingConfig, list[int]]] = {}
        for i, request in enumerate(requests):
            sampling = self._sampling(request.args[1])
            groups.setdefault(repr(sampling), (sampling, []))[1].append(i)
        outputs = [""] * len(requests)
        for sampling, members in groups.values():
            texts = generate_outputs(self.llm, [requests[i].args[0] for i in members],
                                     sampling, batch=self.batch)
            for i, text in zip(members, texts, strict=True):
                outputs[i] = text
        return outputs

    @staticmethod
    def _sampling(settings: dict) -> SamplingConfig:
        until = settings.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sampled = settings.get("do_sample", False)
        return SamplingConfig(temperature=float(settings.get("temperature", 1.0)) if sampled
                              else 0.0, stop=until,
                              max_new_tokens=int(settings.get("max_gen_toks", 256)))
