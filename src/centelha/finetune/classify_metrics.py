"""How well a classifier does: accuracy, per-class precision/recall/F1, confusion matrix.

Design choices:
- Plain Python on sequences of ints (lists, or tensors and arrays, whose items `int()`
  takes), so `eval classify` needs no scikit-learn; the tests check it against
  scikit-learn where that is installed.
- Everything comes from the confusion matrix, rows the true label and columns the
  prediction (scikit-learn's convention), so the figures cannot disagree with each other.
- A ratio with nothing to divide by (a class never predicted, or absent) is 0.0, as
  scikit-learn reports it with `zero_division=0`.
- The PNG is drawn with matplotlib's Agg backend (files only) and written atomically,
  like the loss plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from centelha.atomic import atomic_write  # noqa: E402


@dataclass(frozen=True)
class ClassScores:
    """One class's figures; `support` is how many examples truly have it."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


def confusion_matrix(true: Sequence[int], predicted: Sequence[int],
                     num_classes: int) -> list[list[int]]:
    """matrix[t][p] = how many examples of true label t were predicted as p."""
    true, predicted = _ints(true), _ints(predicted)
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(true, predicted, strict=True):
        if not (0 <= t < num_classes and 0 <= p < num_classes):
            raise ValueError(f"label {t if not 0 <= t < num_classes else p} is outside "
                             f"0..{num_classes - 1}")
        matrix[t][p] += 1
    return matrix


def accuracy(true: Sequence[int], predicted: Sequence[int]) -> float:
    """The share of predictions equal to the true label (0.0 for no examples)."""
    true, predicted = _ints(true), _ints(predicted)
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    return _ratio(sum(t == p for t, p in zip(true, predicted, strict=True)), len(true))


def per_class_scores(matrix: list[list[int]], label_names: Sequence[str]) -> list[ClassScores]:
    """Precision, recall, F1 and support of each class, read off a confusion matrix."""
    scores = []
    for c, name in enumerate(label_names):
        hits = matrix[c][c]
        predicted = sum(row[c] for row in matrix)
        support = sum(matrix[c])
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        scores.append(ClassScores(name, precision, recall, f1, support))
    return scores


def classification_report(true: Sequence[int], predicted: Sequence[int],
                          label_names: Sequence[str]) -> dict:
    """Every figure in one JSON-ready dict: accuracy, macro F1, classes, confusion."""
    matrix = confusion_matrix(true, predicted, len(label_names))
    classes = per_class_scores(matrix, label_names)
    total = sum(map(sum, matrix))
    return {
        "examples": total,
        "accuracy": _ratio(sum(matrix[c][c] for c in range(len(matrix))), total),
        # Macro F1 weighs each class alike: on imbalanced data it shows the rare class.
        "macro_f1": sum(s.f1 for s in classes) / len(classes) if classes else 0.0,
        "classes": [asdict(s) for s in classes],
        "label_names": list(label_names),
        "confusion": matrix,
    }


def format_report(report: dict) -> str:
    """The report as a small text table, for a terminal."""
    lines = [f"accuracy {report['accuracy']:.4f}  macro F1 {report['macro_f1']:.4f}  "
             f"({report['examples']} examples)",
             f"{'class':12s} {'precision':>9s} {'recall':>7s} {'F1':>7s} {'support':>8s}"]
    for s in report["classes"]:
        lines.append(f"{s['name'][:12]:12s} {s['precision']:9.4f} {s['recall']:7.4f} "
                     f"{s['f1']:7.4f} {s['support']:8d}")
    return "\n".join(lines)


def plot_confusion(matrix: list[list[int]], label_names: Sequence[str], path: Path) -> None:
    """Draw the confusion matrix as a PNG: counts in cells, shaded by row share."""
    size = len(label_names)
    # Shade by the share of each true class so a rare class's errors show as clearly as
    # a common one's; the cell text keeps the raw count.
    shares = [[_ratio(n, sum(row)) for n in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.2 * size + 2.5, 1.2 * size + 2), dpi=110)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for t in range(size):
        for p in range(size):
            color = "white" if shares[t][p] > 0.5 else "black"
            ax.text(p, t, str(matrix[t][p]), ha="center", va="center", color=color)
    ax.set_xticks(range(size), labels=list(label_names))
    ax.set_yticks(range(size), labels=list(label_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _ints(values: Sequence[int]) -> list[int]:
    return [int(v) for v in values]


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0
