"""The bar a fine-tuned spam classifier must clear: scikit-learn's bag of words.

`CountVectorizer` + `LogisticRegression` on the bundled SMS spam set (4,000 messages,
CC BY 4.0), trained and scored on the same stratified split the fine-tune uses
(`classify_data.split`, held-out share 0.2, seed 0). The figures are computed twice, by
centelha's metrics and by scikit-learn's, and must agree. scikit-learn is a peer for this
benchmark only, not a dependency of centelha: `pip install scikit-learn`.

    python benchmarks/spam_baseline.py [--held-out 0.2] [--seed 0] [--png confusion.png]
"""

from __future__ import annotations

import argparse
import time

from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from centelha.finetune.classify_data import bundled_sms_spam, read_labelled, split
from centelha.finetune.classify_metrics import (
    classification_report,
    format_report,
    plot_confusion,
)


def bag_of_words_predictions(train, held) -> list[int]:
    """CountVectorizer + LogisticRegression fitted on `train`, labels predicted for `held`."""
    vectorizer = CountVectorizer()
    # liblinear is deterministic and quick on a few thousand sparse rows.
    model = LogisticRegression(max_iter=1000, solver="liblinear")
    model.fit(vectorizer.fit_transform(train.texts), train.labels)
    return model.predict(vectorizer.transform(held.texts)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", help="also draw the confusion matrix here")
    args = parser.parse_args()
    data = read_labelled(bundled_sms_spam())
    train, held = split(data, held_out=args.held_out, seed=args.seed)
    start = time.perf_counter()
    predicted = bag_of_words_predictions(train, held)
    seconds = time.perf_counter() - start
    spam = data.label_names.index("spam")
    report = classification_report(held.labels, predicted, data.label_names)
    print(f"train {len(train)} ({train.counts()[spam]} spam), held-out {len(held)} "
          f"({held.counts()[spam]} spam), seed {args.seed}; fit + predict {seconds:.2f} s")
    print(format_report(report))
    ours_f1 = report["classes"][spam]["f1"]
    theirs_acc = accuracy_score(held.labels, predicted)
    theirs_f1 = f1_score(held.labels, predicted, pos_label=spam)
    print(f"{'':10s} {'accuracy':>9s} {'spam F1':>8s}")
    print(f"{'centelha':10s} {report['accuracy']:9.4f} {ours_f1:8.4f}")
    print(f"{'sklearn':10s} {theirs_acc:9.4f} {theirs_f1:8.4f}")
    if abs(report["accuracy"] - theirs_acc) > 1e-12 or abs(ours_f1 - theirs_f1) > 1e-12:
        raise SystemExit("centelha's metrics disagree with scikit-learn's")
    if args.png:
        plot_confusion(report["confusion"], data.label_names, args.png)
        print(f"confusion matrix: {args.png}")


if __name__ == "__main__":
    main()
