"""Classification data and metrics: formats, columns, one-line errors, split, weights."""

import json
import random

import pytest

from centelha.errors import CentelhaError
from centelha.finetune.classify_data import (
    LabelledTexts,
    bundled_sms_spam,
    class_weights,
    read_labelled,
    split,
)
from centelha.finetune.classify_metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    format_report,
    per_class_scores,
    plot_confusion,
)


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def error_of(path, **kwargs):
    with pytest.raises(CentelhaError) as info:
        read_labelled(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --- formats -------------------------------------------------------------------------

def test_headerless_tsv_is_label_then_text_with_csv_quoting(tmp_path):
    path = write(tmp_path, "d.tsv", 'spam\tWIN now\nham\t"He said ""hi""\tand left"\n'
                 '\nham\tok\n')
    data = read_labelled(path)
    assert data.texts == ["WIN now", 'He said "hi"\tand left', "ok"]
    assert data.label_names == ["ham", "spam"]
    assert data.labels == [1, 0, 0]


def test_csv_with_header_reads_quoted_commas_tabs_and_newlines(tmp_path):
    path = write(tmp_path, "d.csv", 'id,text,label\r\n1,"a, b\tc",pos\r\n'
                 '2,"two\nlines",neg\r\n3,plain,pos\r\n')
    data = read_labelled(path)
    assert data.texts == ["a, b\tc", "two\nlines", "plain"]
    assert [data.label_names[y] for y in data.labels] == ["pos", "neg", "pos"]


def test_settable_column_names_in_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path, "d.tsv", "category\tmessage\nb\tone\na\ttwo\n")
    data = read_labelled(tsv, text_column="message", label_column="category")
    assert (data.texts, data.labels, data.label_names) == (["one", "two"], [1, 0], ["a", "b"])
    lines = [{"msg": "x", "y": "b"}, {"msg": "y", "y": "a", "extra": 1}]
    jsonl = write(tmp_path, "d.jsonl", "\n".join(map(json.dumps, lines)) + "\n\n")
    data = read_labelled(jsonl, text_column="msg", label_column="y")
    assert (data.texts, data.labels) == (["x", "y"], [1, 0])


def test_header_flag_overrides_detection(tmp_path):
    # A headerless file whose first text happens to be the word "text".
    path = write(tmp_path, "d.tsv", "ham\ttext\nspam\tfree\n")
    assert error_of(path).endswith(":1: missing column 'label' in the header "
                                   "('ham', 'text')")
    assert read_labelled(path, header=False).texts == ["text", "free"]


def test_bom_is_dropped_and_numeric_labels_sort_by_value(tmp_path):
    path = write(tmp_path, "d.csv", "\ufefftext,label\na,10\nb,2\nc,9\n")
    data = read_labelled(path)
    assert data.label_names == ["2", "9", "10"]
    assert data.labels == [2, 0, 1]
    jsonl = write(tmp_path, "n.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    assert read_labelled(jsonl).label_names == ["0", "1"]


def test_held_out_data_uses_the_training_label_names(tmp_path):
    path = write(tmp_path, "held.tsv", "spam\tfree\n")
    data = read_labelled(path, label_names=["ham", "spam"])
    assert (data.labels, data.label_names) == ([1], ["ham", "spam"])
    other = write(tmp_path, "other.tsv", "spam\tfree\nphish\tclick\n")
    assert error_of(other, label_names=["ham", "spam"]).endswith(
        ":2: label 'phish' was not seen in training (known: ham, spam)")


def test_bundled_sms_spam_reads_whole():
    data = read_labelled(bundled_sms_spam())
    assert len(data) == 4000 and data.label_names == ["ham", "spam"]
    assert data.counts() == [3470, 530]
    assert (bundled_sms_spam().parent / "README.md").read_text().count("CC BY 4.0") >= 1


# --- one-line errors -----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("text,label\nhi,a\n,b\n", ":3: empty text"),
    ("text,label\nhi,a\nyo, \n", ":3: empty label"),
    ("text,kind\nhi,a\n", ":1: missing column 'label'"),
    ('text,label\n"two\nlines",a\nx\n', ":4: 1 fields, expected 2 as the header"),
])
def test_bad_csv_rows_name_their_line(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, "d.csv", text))


FILE_ERRORS = {  # what the message says: (file name, content)
    ":2: 3 fields, expected 2: label, then text": ("d.tsv", "ham\tok\nspam\tfree\tx\n"),
    ":2: malformed TSV": ("d.tsv", 'ham\tok\nspam\t"never closed\nham\tx\n'),
    "only one label ('ham')": ("d.tsv", "ham\tone\nham\ttwo\n"),
    "no labelled examples": ("d.tsv", "\n\n"),
    "must be .tsv, .csv, .jsonl, not .txt": ("d.txt", "ham\tone\n"),
}


@pytest.mark.parametrize("expected", FILE_ERRORS)
def test_bad_files_give_one_line_errors(tmp_path, expected):
    assert expected in error_of(write(tmp_path, *FILE_ERRORS[expected]))


JSONL_ERRORS = {
    ":2: not valid JSON": '{"text": "a", "label": "x"}\n{"text": "b", "label": }\n',
    ":3: missing column 'text'": '{"text": "a", "label": "x"}\n\n{"label": "y"}\n',
    ":2: expected a JSON object": '{"text": "a", "label": "x"}\n["b", "y"]\n',
    ":1: 'label' must be a string or a whole": '{"text": "a", "label": true}\n',
    ":1: 'text' must be a string": '{"text": 5, "label": "x"}\n',
}


@pytest.mark.parametrize("expected", JSONL_ERRORS)
def test_bad_jsonl_lines_name_their_line(tmp_path, expected):
    assert expected in error_of(write(tmp_path, "d.jsonl", JSONL_ERRORS[expected]))


def test_wrong_encoding_names_the_line(tmp_path):
    path = write(tmp_path, "d.tsv", "ham\tok\nspam\tcafé grátis\n", encoding="latin-1")
    assert ":2: not UTF-8 (byte 0xe9)" in error_of(path)


def test_missing_file_is_a_one_line_error(tmp_path):
    assert "file not found" in error_of(tmp_path / "absent.tsv")


# --- split and weights ---------------------------------------------------------------

def toy(n_per_class):
    labels = [c for c, n in enumerate(n_per_class) for _ in range(n)]
    random.Random(1).shuffle(labels)
    return LabelledTexts([f"text {i}" for i in range(len(labels))], labels,
                         [f"c{c}" for c in range(len(n_per_class))])


def test_split_is_stratified_disjoint_and_complete():
    data = toy([90, 10, 3])
    train, held = split(data, held_out=0.2, seed=0)
    assert held.counts() == [18, 2, 1] and train.counts() == [72, 8, 2]
    assert set(train.texts).isdisjoint(held.texts)
    assert sorted(train.texts + held.texts) == sorted(data.texts)
    pairs = dict(zip(data.texts, data.labels, strict=True))
    assert all(pairs[t] == y for t, y in zip(held.texts, held.labels, strict=True))
    assert train.label_names == held.label_names == data.label_names


def test_split_is_deterministic_by_seed():
    data = toy([50, 20])
    assert split(data, seed=3) == split(data, seed=3)
    assert split(data, seed=3)[1].texts != split(data, seed=4)[1].texts


def test_split_keeps_a_two_example_class_on_both_sides_and_checks_share():
    train, held = split(toy([40, 2]), held_out=0.1)
    assert train.counts()[1] == 1 and held.counts()[1] == 1
    assert split(toy([7, 5]), held_out=0.3)[1].counts() == [2, 2]  # 2.1 → 2, 1.5 → 2
    with pytest.raises(CentelhaError, match="held_out must be between 0 and 1"):
        split(toy([5, 5]), held_out=1.0)


def test_sms_split_keeps_class_proportions():
    train, held = split(read_labelled(bundled_sms_spam()))
    assert (train.counts(), held.counts()) == ([2776, 424], [694, 106])


def test_class_weights_are_inverse_frequency_with_mean_one():
    data = toy([30, 10])
    weights = class_weights(data)
    assert weights == pytest.approx([40 / 60, 40 / 20])
    assert sum(weights[y] for y in data.labels) / len(data) == pytest.approx(1.0)
    with pytest.raises(CentelhaError, match="'c2' has no examples"):
        class_weights(LabelledTexts(["a", "b"], [0, 1], ["c0", "c1", "c2"]))


# --- metrics -------------------------------------------------------------------------

TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PRED = [0, 0, 1, 2, 1, 0, 2, 2, 2, 0]
NAMES = ["a", "b", "c"]


def test_metrics_match_hand_computed_values():
    matrix = confusion_matrix(TRUE, PRED, 3)
    assert matrix == [[2, 1, 1], [1, 1, 0], [1, 0, 3]]
    assert accuracy(TRUE, PRED) == pytest.approx(0.6)
    a, b, c = per_class_scores(matrix, NAMES)
    # a: 2 of 4 predicted a are right, 2 of 4 true a found.
    assert (a.precision, a.recall, a.f1, a.support) == pytest.approx((0.5, 0.5, 0.5, 4))
    assert (b.precision, b.recall, b.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert (c.precision, c.recall, c.f1) == pytest.approx((0.75, 0.75, 0.75))
    report = classification_report(TRUE, PRED, NAMES)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.5 + 0.75) / 3)
    assert json.loads(json.dumps(report)) == report
    assert format_report(report).splitlines()[0].startswith("accuracy 0.6000")


def test_a_class_never_predicted_scores_zero_not_nan():
    (cls,) = per_class_scores(confusion_matrix([0, 0], [1, 1], 2), ["x", "y"])[1:]
    assert (cls.precision, cls.recall, cls.f1, cls.support) == (0.0, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix([0, 2], [0, 0], 2)


@pytest.mark.slow  # importing scikit-learn takes ~2 s
def test_metrics_agree_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    true = [rng.randrange(4) for _ in range(300)]
    pred = [t if rng.random() < 0.6 else rng.randrange(4) for t in true]
    names = list("wxyz")
    report = classification_report(true, pred, names)
    assert report["confusion"] == metrics.confusion_matrix(true, pred).tolist()
    assert report["accuracy"] == pytest.approx(metrics.accuracy_score(true, pred))
    p, r, f, s = metrics.precision_recall_fscore_support(true, pred, zero_division=0)
    got = report["classes"]
    assert [c["precision"] for c in got] == pytest.approx(p.tolist())
    assert [c["recall"] for c in got] == pytest.approx(r.tolist())
    assert [c["f1"] for c in got] == pytest.approx(f.tolist())
    assert [c["support"] for c in got] == s.tolist()
    assert report["macro_f1"] == pytest.approx(metrics.f1_score(true, pred, average="macro"))


def test_confusion_png_is_written(tmp_path):
    path = tmp_path / "confusion.png"
    plot_confusion(confusion_matrix(TRUE, PRED, 3), NAMES, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
