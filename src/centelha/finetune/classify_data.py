"""Labelled texts for a classifier: read them, split them, weigh their classes.

`read_labelled(path)` reads a TSV, CSV or JSONL file (chosen by its suffix) into a
`LabelledTexts`: the texts, their labels as ints, and the label names those ints index.
`split` makes a deterministic stratified train/held-out split, `class_weights` the
inverse-frequency weights of an imbalanced set, `bundled_sms_spam` the path of the SMS
spam set that ships with centelha.

Design choices:
- TSV and CSV are read by Python's `csv` module (tab or comma), so a field may be quoted
  and then hold the delimiter, a newline or `""` for a quote — the bundled SMS file quotes
  this way. Strict quoting: a quote left open is an error, not a field that swallows the
  rest of the file.
- Header detection (`header=None`): the first row is a header when one of its cells is the
  text or the label column's name (`text` and `label` unless set); then both must be there.
  Otherwise the file is headerless and every row is exactly `label<TAB>text` (`label,text`
  in a CSV), the layout of the SMS file. `header=True` or `False` says it outright.
- JSONL: one object per line, the text and the label under the column names; a label is a
  string or a whole number. Blank lines are skipped in every format.
- Label names come in a stable order whatever the file order: numeric when every name is a
  whole number ("2" before "10"), else sorted. Held-out data is read with the training
  names (`label_names=train.label_names`) so the ints mean the same; a label outside them
  is an error.
- The file is decoded as UTF-8 (a byte-order mark is dropped), whole: classification sets
  are small, and a bad byte can then be reported with its line.
- Every problem is one `CentelhaError` naming the file and the line.
- No torch here: weights are a list the objective turns into a tensor.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from centelha.data import read_text
from centelha.errors import CentelhaError
from centelha.jsonfile import json_lines

DELIMITERS = {".tsv": "\t", ".csv": ","}
FORMATS = (".tsv", ".csv", ".jsonl")


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with int labels; `label_names[i]` is the name of label `i`."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> list[int]:
        """How many examples each label has, in `label_names` order."""
        counts = [0] * len(self.label_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        """The examples at `indices`, with the same label names."""
        return LabelledTexts([self.texts[i] for i in indices],
                             [self.labels[i] for i in indices], list(self.label_names))


def bundled_sms_spam() -> Path:
    """The 4,000 labelled SMS messages shipped inside the package (CC BY 4.0)."""
    return Path(str(resources.files("centelha") / "corpus" / "sms-spam" / "sms_spam.tsv"))


def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label",
                  header: bool | None = None,
                  label_names: Sequence[str] | None = None) -> LabelledTexts:
    """Read labelled texts from a .tsv, .csv or .jsonl file (see the module notes)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CentelhaError(f"{path}: labelled data must be {', '.join(FORMATS)}, "
                            f"not {suffix or 'a file without a suffix'}")
    text = read_text(path)
    if suffix == ".jsonl":
        rows = _jsonl_rows(path, text, text_column, label_column)
    else:
        rows = _table_rows(path, text, DELIMITERS[suffix], text_column, label_column, header)
    return _collect(path, rows, label_names)


def _jsonl_rows(path: Path, text: str, text_column: str,
                label_column: str) -> Iterator[tuple[int, str, str]]:
    for number, record in json_lines(path, text):
        for column in (text_column, label_column):
            if column not in record:
                raise CentelhaError(f"{path}:{number}: missing column {column!r}")
        value, label = record[text_column], record[label_column]
        if not isinstance(value, str):
            raise CentelhaError(f"{path}:{number}: {text_column!r} must be a string")
        # bool is an int in Python, but `true` as a class name is almost surely a mistake.
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise CentelhaError(f"{path}:{number}: {label_column!r} must be a string "
                                "or a whole number")
        yield number, value, str(label)


def _table_rows(path: Path, text: str, delimiter: str, text_column: str, label_column: str,
                header: bool | None) -> Iterator[tuple[int, str, str]]:
    layout = None  # (text index, label index, fields per row, how to say it)
    for number, row in _csv_records(path, text, delimiter):
        if layout is None:  # the first row decides
            if header or (header is None and (text_column in row or label_column in row)):
                layout = _header_layout(path, number, row, text_column, label_column)
                continue
            layout = (1, 0, 2, "2: label, then text")
        text_at, label_at, width, expected = layout
        if len(row) != width:
            raise CentelhaError(f"{path}:{number}: {len(row)} fields, expected "
                                f"{expected} (quote a text that holds the delimiter)")
        yield number, row[text_at], row[label_at]


def _header_layout(path: Path, number: int, row: list[str], text_column: str,
                   label_column: str) -> tuple[int, int, int, str]:
    for column in (text_column, label_column):
        if column not in row:
            raise CentelhaError(f"{path}:{number}: missing column {column!r} in the "
                                f"header ({', '.join(map(repr, row))})")
    return row.index(text_column), row.index(label_column), len(row), f"{len(row)} as the header"


def _csv_records(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Each non-blank record with the line it starts on (a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise CentelhaError(f"{path}:{start}: malformed {path.suffix[1:].upper()} "
                                f"({e})") from None
        if any(cell.strip() for cell in row):
            yield start, row


def _collect(path: Path, rows: Iterator[tuple[int, str, str]],
             label_names: Sequence[str] | None) -> LabelledTexts:
    texts, names, lines = [], [], []
    for number, value, label in rows:
        if not value.strip():
            raise CentelhaError(f"{path}:{number}: empty text")
        label = label.strip()
        if not label:
            raise CentelhaError(f"{path}:{number}: empty label")
        texts.append(value)
        names.append(label)
        lines.append(number)
    if not texts:
        raise CentelhaError(f"{path}: no labelled examples")
    if label_names is None:
        known = _stable_order(set(names))
        if len(known) < 2:
            raise CentelhaError(f"{path}: only one label ({known[0]!r}); a classifier needs "
                                "at least two")
    else:
        known = [str(name) for name in label_names]
    index = {name: i for i, name in enumerate(known)}
    for number, label in zip(lines, names, strict=True):
        if label not in index:
            raise CentelhaError(f"{path}:{number}: label {label!r} was not seen in "
                                f"training (known: {', '.join(known)})")
    return LabelledTexts(texts, [index[name] for name in names], known)


def _stable_order(names: set[str]) -> list[str]:
    # Numeric labels sort by value so "10" follows "9". The test is spelt out because
    # int() would also take "1_000" and " 1", which are names, not numbers, here.
    if all(name.removeprefix("-").isdecimal() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def split(examples: LabelledTexts, held_out: float = 0.2,
          seed: int = 0) -> tuple[LabelledTexts, LabelledTexts]:
    """A stratified (train, held-out) split: each class gives `held_out` of its examples.

    Per class, the share is rounded to the nearest count, and a class with two or more
    examples keeps at least one on each side. The same seed gives the same split on every
    machine (Python's `random`, not a library's); both sides keep the file's order.
    """
    if not 0 < held_out < 1:
        raise CentelhaError(f"held_out must be between 0 and 1, not {held_out}")
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in range(len(examples.label_names)):
        members = [i for i, y in enumerate(examples.labels) if y == label]
        rng.shuffle(members)
        count = math.floor(held_out * len(members) + 0.5)
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        chosen.extend(members[:count])
    held = set(chosen)
    train = [i for i in range(len(examples)) if i not in held]
    return examples.subset(train), examples.subset(sorted(held))


def class_weights(examples: LabelledTexts) -> list[float]:
    """Inverse-frequency weights, one per label, averaging 1 over the examples.

    weight[c] = n / (classes · count[c]) — scikit-learn's "balanced". Each class then
    carries the same total weight, and a weighted loss summed over examples and divided by
    their count stays on the scale of the unweighted one.
    """
    counts = examples.counts()
    for name, count in zip(examples.label_names, counts, strict=True):
        if count == 0:
            raise CentelhaError(f"label {name!r} has no examples; cannot weigh it")
    return [len(examples) / (len(counts) * count) for count in counts]
