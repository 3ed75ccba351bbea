"""Scores of generated text against references: BLEU, chrF, ROUGE-1/2/L and exact match.

BLEU and chrF are sacrebleu's, computed over the whole corpus, and reported with
sacrebleu's signature (the tokenizer, smoothing and version that produced the number,
so it can be reproduced). ROUGE is Google's `rouge-score`, but with our tokenizer:
its default keeps only `[a-z0-9]`, so "ação" becomes "a o" and Portuguese words lose
their letters; `WordTokenizer` lower-cases, NFC-normalises and keeps every Unicode
letter and digit. Each example may have several references: BLEU and chrF use them
all (sacrebleu's multi-reference form), ROUGE and exact match take the best one.

Exact match compares after `normalise_answer`: NFC, case folded, whitespace collapsed,
surrounding whitespace, quotes and final `.`, `!`, `?` dropped; accents and inner
punctuation are kept ("São Paulo." equals "são paulo", not "sao paulo").
"""

from __future__ import annotations

import re
import unicodedata

METRICS = ("bleu", "chrf", "rouge", "exact")
WORD = re.compile(r"[^\W_]+")  # runs of Unicode letters and digits


class WordTokenizer:
    """`rouge-score`'s tokenizer interface, keeping accented letters."""

    def tokenize(self, text: str) -> list[str]:
        return WORD.findall(unicodedata.normalize("NFC", text).lower())


def normalise_answer(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return text.strip("\"'“”‘’ ").rstrip(".!?").strip()


def exact_match(output: str, references: list[str]) -> bool:
    got = normalise_answer(output)
    return any(got == normalise_answer(r) for r in references)


def reference_streams(references: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream k holds every example's k-th reference (None if fewer)."""
    most = max(len(r) for r in references)
    return [[r[k] if k < len(r) else None for r in references] for k in range(most)]


def bleu(outputs: list[str], references: list[list[str]]) -> dict:
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    result = metric.corpus_score(outputs, reference_streams(references))
    return {"score": result.score, "signature": str(metric.get_signature())}


def chrf(outputs: list[str], references: list[list[str]]) -> dict:
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    result = metric.corpus_score(outputs, reference_streams(references))
    return {"score": result.score, "signature": str(metric.get_signature())}


def rouge_per_example(outputs: list[str], references: list[list[str]]) -> list[dict]:
    """ROUGE-1/2/L F-measures (0-100) of each output against its best reference."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=WordTokenizer())
    return [{name: 100 * s.fmeasure for name, s in scorer.score_multi(refs, out).items()}
            for out, refs in zip(outputs, references, strict=True)]


def score_outputs(outputs: list[str], references: list[list[str]],
                  metrics: tuple[str, ...] = METRICS) -> tuple[dict, list[dict]]:
    """(corpus scores, per-example scores) for the `metrics` asked."""
    corpus: dict = {}
    per_example: list[dict] = [{} for _ in outputs]
    if "bleu" in metrics:
        corpus["bleu"] = bleu(outputs, references)
    if "chrf" in metrics:
        corpus["chrf"] = chrf(outputs, references)
    if "rouge" in metrics:
        rows = rouge_per_example(outputs, references)
        for row, scores in zip(per_example, rows, strict=True):
            row.update(scores)
        for name in ("rouge1", "rouge2", "rougeL"):
            corpus[name] = sum(r[name] for r in rows) / len(rows)
    if "exact" in metrics:
        hits = [exact_match(o, refs) for o, refs in zip(outputs, references, strict=True)]
        for row, hit in zip(per_example, hits, strict=True):
            row["exact"] = hit
        corpus["exact"] = 100 * sum(hits) / len(hits)
    return corpus, per_example
