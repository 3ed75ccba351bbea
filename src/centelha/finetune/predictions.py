"""What `centelha predict` and `centelha eval classify` do with a trained classifier.

- `predict_file`: every text of a file → one JSON line `{"line", "text", "label",
  "probabilities"}` (plus `"true"` when the file is labelled). A file is `.txt` (one text
  a line, blank lines skipped), `.jsonl` (the text under `text_column`, a label if there
  is one), or a labelled `.tsv`/`.csv` as training reads it.
- `evaluate_file`: a labelled file → accuracy, per-class precision/recall/F1 and the
  confusion matrix (a PNG too), with the classifier's own label names, so a label the
  classifier never saw is an error naming its line.
"""

from __future__ import annotations

import json
from pathlib import Path

from centelha.atomic import atomic_write_text
from centelha.data import read_text
from centelha.errors import CentelhaError
from centelha.finetune.classify_data import read_labelled
from centelha.finetune.classify_metrics import classification_report, plot_confusion
from centelha.jsonfile import json_lines
from centelha.objectives.classifier import Classifier


def read_texts(path: Path, classifier: Classifier, text_column: str = "text",
               label_column: str = "label") -> tuple[list[int], list[str], list[str] | None]:
    """(line numbers, texts, true labels or None) of a file to predict."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CentelhaError(f"file not found: {path}")
    if suffix == ".txt":
        lines = [(n, t) for n, t in enumerate(read_text(path).split("\n"), 1) if t.strip()]
        return [n for n, _ in lines], [t for _, t in lines], None
    if suffix == ".jsonl":
        numbers, texts, labels = [], [], []
        for number, record in json_lines(path, read_text(path)):
            if not isinstance(record.get(text_column), str):
                raise CentelhaError(f"{path}:{number}: {text_column!r} must be a string")
            numbers.append(number)
            texts.append(record[text_column])
            labels.append(None if label_column not in record else str(record[label_column]))
        return numbers, texts, labels if all(x is not None for x in labels) else None
    labelled = read_labelled(path, text_column, label_column, label_names=classifier.labels)
    return (list(range(1, len(labelled) + 1)), labelled.texts,
            [labelled.label_names[i] for i in labelled.labels])


def predict_file(classifier: Classifier, data: str | Path, out: str | Path,
                 text_column: str = "text", label_column: str = "label") -> int:
    """Write one JSON line per text of `data` to `out`; returns how many."""
    numbers, texts, truth = read_texts(Path(data), classifier, text_column, label_column)
    lines = []
    for i, prediction in enumerate(classifier.predict(texts)):
        row = {"line": numbers[i], "text": texts[i], "label": prediction.label,
               "probabilities": prediction.probabilities}
        if truth is not None:
            row["true"] = truth[i]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(Path(out), "".join(lines))
    return len(lines)


def evaluate_file(classifier: Classifier, data: str | Path, png: str | Path | None = None,
                  text_column: str = "text", label_column: str = "label") -> dict:
    """The classification report of `classifier` on the labelled file `data`."""
    labelled = read_labelled(data, text_column, label_column, label_names=classifier.labels)
    predicted = [classifier.labels.index(p.label) for p in classifier.predict(labelled.texts)]
    report = classification_report(labelled.labels, predicted, classifier.labels)
    if png is not None:
        plot_confusion(report["confusion"], classifier.labels, Path(png))
    return report
