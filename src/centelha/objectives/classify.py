"""Classification: a head on the model's hidden state, trained on labelled texts.

Data: a .tsv/.csv/.jsonl file with a text and a label column (`finetune.classify_data`);
the held-out split is `objective.val_data` or a stratified `held_out` share of the data.
Texts are tokenized once, up front. A micro-batch is a set of examples padded on the
right to its longest; the loss is the (class-weighted) cross-entropy summed over the
examples, with the sum of their weights as the count, so the step's gradient is that of
the weighted mean over the whole step. Evaluation scores every held-out example (up to
`eval_examples`) on every rank alike: loss, accuracy, macro F1 and each class's F1.

The run publishes `classifier.json` + `classifier.safetensors` (see `classifier.py`); the
latter is a hard link to the state's weights, which for a frozen base are exactly the
trained tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from centelha.atomic import link_into_place
from centelha.errors import CentelhaError
from centelha.finetune.classify_data import class_weights, read_labelled, split
from centelha.finetune.classify_metrics import classification_report
from centelha.lora import base_fingerprint
from centelha.model import Transformer
from centelha.objectives.base import Batch, Objective, Walk
from centelha.objectives.classifier import (
    TENSORS_FILE,
    SequenceClassifier,
    class_logits,
    encode_texts,
    padded,
    write_description,
)
from centelha.objectives.config import ObjectiveConfig
from centelha.objectives.start import apply_scope
from centelha.tokenizer import Tokenizer


class Classify(Objective):
    kind = "classify"

    def __init__(self, body: Transformer, tokenizer: Tokenizer, data: Path,
                 cfg: ObjectiveConfig, lora: dict | None, base_name: str, seed: int):
        super().__init__(body, tokenizer, cfg, base_name)
        every = read_labelled(data, cfg.text_column, cfg.label_column)
        if cfg.val_data:
            train = every
            val = read_labelled(cfg.val_data, cfg.text_column, cfg.label_column,
                                label_names=every.label_names)
        else:
            train, val = split(every, cfg.held_out, cfg.split_seed)
        if len(train.label_names) < 2:
            raise CentelhaError(f"{data}: a classifier needs at least two labels, the file "
                                f"has {len(train.label_names)}")
        self.labels = train.label_names
        self.train_set, self.val_set = train, val
        self.train_ids = encode_texts(tokenizer, train.texts, cfg.max_length)
        self.val_ids = encode_texts(tokenizer, val.texts, cfg.max_length)[:cfg.eval_examples]
        self.weights = torch.tensor(class_weights(train) if cfg.class_weighted
                                    else [1.0] * len(self.labels))
        self.base_hash = base_fingerprint(body)
        self.model = SequenceClassifier(body, len(self.labels), cfg.pooling)
        self.lora = apply_scope(self.model, body, cfg.scope, lora, cfg.last_k, self.model.head)
        self.walk = Walk(len(train), seed, [len(ids) for ids in self.train_ids])

    def describe(self) -> str:
        counts = ", ".join(f"{n} {c}" for n, c in zip(self.labels, self.train_set.counts(),
                                                     strict=True))
        return (f"classify {len(self.train_set)} texts ({counts}); held out "
                f"{len(self.val_ids)}; scope {self.cfg.scope}, pooling {self.cfg.pooling}")

    def draw(self, size: int, rows: slice) -> Batch:
        picked = self.walk.next(size)[rows]
        ids, lengths = padded([self.train_ids[i] for i in picked])
        labels = torch.tensor([self.train_set.labels[i] for i in picked])
        return {"ids": ids, "lengths": lengths, "labels": labels,
                "weights": self.weights[labels]}

    def count(self, batch: Batch) -> float:
        return float(batch["weights"].sum())

    def tokens(self, batch: Batch) -> int:
        return int(batch["lengths"].sum())

    def loss_sum(self, forward: Callable, batch: Batch) -> torch.Tensor:
        logits = forward(batch["ids"], batch["lengths"]).float()
        losses = F.cross_entropy(logits, batch["labels"], reduction="none")
        return (losses * batch["weights"]).sum()

    @torch.no_grad()
    def evaluate(self, forward: Callable, batch_size: int, device: torch.device, autocast,
                 world) -> dict[str, float]:
        truth = self.val_set.labels[:len(self.val_ids)]
        predicted, loss = self.predict_held_out(forward, batch_size, device, autocast)
        report = classification_report(truth, predicted, self.labels)
        row = {"val_loss": loss, "val_accuracy": report["accuracy"],
               "val_macro_f1": report["macro_f1"]}
        row.update({f"val_f1/{c['name']}": c["f1"] for c in report["classes"]})
        return row

    def predict_held_out(self, forward: Callable, batch_size: int, device: torch.device,
                         autocast) -> tuple[list[int], float]:
        logits = class_logits(forward, self.val_ids, batch_size, device, autocast)
        labels = torch.tensor(self.val_set.labels[:len(self.val_ids)], device=logits.device)
        loss = float(F.cross_entropy(logits, labels, reduction="sum"))
        return logits.argmax(-1).tolist(), loss / max(len(self.val_ids), 1)

    def publish(self, run_dir: Path, state_weights: Path) -> None:
        link_into_place(run_dir / TENSORS_FILE, state_weights)
        write_description(run_dir, {
            "labels": self.labels, "pooling": self.cfg.pooling,
            "max_length": self.cfg.max_length, "base": self.base_name,
            "base_hash": self.base_hash, "scope": self.cfg.scope,
            "lora": self.lora.to_dict() if self.lora else None})
