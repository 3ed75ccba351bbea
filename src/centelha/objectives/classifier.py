"""A transformer with a classification head, and a trained classifier loaded to predict.

`SequenceClassifier` reads the final norm's hidden state (never the LM head) at the last
real token of each row (a causal model has read the whole text there) or averaged over
the real tokens, and maps it to one logit per label. Rows are padded on the right; causal
attention keeps padding out of every real position, so a text's logits do not depend on
what it was batched with.

A classifier run folder holds `classifier.json` (format, labels, pooling, max_length, the
base it started from and that base's fingerprint, the LoRA config if any) and
`classifier.safetensors` (the trained tensors only: head, adapters, thawed blocks). To
load it, the base is loaded again, checked against the fingerprint, given the same
adapters and head, and the trained tensors are put in; nothing else is needed.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from centelha.errors import CentelhaError
from centelha.generate import with_bos
from centelha.jsonfile import read_json_object
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer

FORMAT, VERSION = "centelha-classifier", 1
CONFIG_FILE, TENSORS_FILE = "classifier.json", "classifier.safetensors"


class SequenceClassifier(nn.Module):
    def __init__(self, body: Transformer, labels: int, pooling: str = "last"):
        super().__init__()
        self.body, self.pooling = body, pooling
        weight = body.tok_emb.weight
        self.head = nn.Linear(body.cfg.d_model, labels, device=weight.device,
                              dtype=weight.dtype)
        nn.init.normal_(self.head.weight, std=body.cfg.d_model ** -0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B, labels) for right-padded `ids` (B, T) whose real lengths are `lengths`."""
        hidden = self.body.hidden_states(ids)
        if self.pooling == "last":
            rows = torch.arange(ids.shape[0], device=ids.device)
            features = hidden[rows, lengths - 1]
        else:
            real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
            features = (hidden * real[..., None]).sum(1) / lengths[:, None]
        return self.head(features)


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Each text's ids (with BOS where the model expects it), cut to `max_length`. An empty
    text still gets one token, so it has a last position to read."""
    encoded = []
    for ids in tokenizer.encode_batch(texts):
        ids = with_bos(tokenizer, ids)[:max_length]
        encoded.append(ids or [tokenizer.eot_id if tokenizer.eot_id is not None else 0])
    return encoded


def padded(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, longest), lengths (B,)) with right padding."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, lengths


@torch.no_grad()
def class_logits(forward, encoded: list[list[int]], batch_size: int,
                 device: torch.device | None = None, autocast=contextlib.nullcontext
                 ) -> torch.Tensor:
    """(len(encoded), labels) float logits in the input order, computed in batches of
    similar length so that little of each batch is padding."""
    device = device or torch.device("cpu")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = None
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, lengths = padded([encoded[i] for i in chunk])
        with autocast():
            logits = forward(ids.to(device), lengths.to(device)).float()
        if out is None:
            out = torch.empty(len(encoded), logits.shape[-1], device=logits.device)
        out[chunk] = logits
    return out if out is not None else torch.empty(0, 0)


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]


class Classifier:
    """A trained classifier: texts in, labels and probabilities out."""

    def __init__(self, model: SequenceClassifier, tokenizer: Tokenizer, labels: list[str],
                 max_length: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.labels, self.max_length = labels, max_length

    @torch.no_grad()
    def probabilities(self, texts: list[str], batch_size: int = 16) -> torch.Tensor:
        """(len(texts), labels) probabilities, batched by length to waste little padding."""
        encoded = encode_texts(self.tokenizer, texts, self.max_length)
        return F.softmax(class_logits(self.model, encoded, batch_size), dim=-1)

    def predict(self, texts: str | list[str], batch_size: int = 16
                ) -> Prediction | list[Prediction]:
        single = isinstance(texts, str)
        probs = self.probabilities([texts] if single else list(texts), batch_size)
        predictions = [Prediction(self.labels[int(row.argmax())],
                                  {name: float(p) for name, p in zip(self.labels, row,
                                                                     strict=True)})
                       for row in probs]
        return predictions[0] if single else predictions


def is_classifier_run(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def write_description(run_dir: Path, description: dict) -> None:
    from centelha.atomic import atomic_write_text

    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(
        {"format": FORMAT, "version": VERSION, **description}, indent=2,
        ensure_ascii=False) + "\n")


def load_classifier(run_dir: str | Path) -> Classifier:
    """The classifier a `finetune classify` run published."""
    from centelha.loading import load_model
    from centelha.lora import LoRAConfig, base_fingerprint
    from centelha.lora.inject import apply_config

    run_dir = Path(run_dir)
    description = read_json_object(run_dir / CONFIG_FILE)
    if description.get("format") != FORMAT:
        raise CentelhaError(f"{run_dir / CONFIG_FILE} is not a centelha classifier")
    try:
        labels, base = list(description["labels"]), str(description["base"])
        pooling, max_length = description["pooling"], int(description["max_length"])
    except (KeyError, TypeError, ValueError):
        raise CentelhaError(f"{run_dir / CONFIG_FILE} is damaged") from None
    body, tokenizer, _ = load_model(base)
    if description.get("base_hash") and base_fingerprint(body) != description["base_hash"]:
        raise CentelhaError(f"{run_dir} was trained on another model than {base!r} "
                            "(its weights' fingerprint differs)")
    if description.get("lora"):
        apply_config(body, LoRAConfig.from_dict(description["lora"], str(run_dir / CONFIG_FILE)))
    model = SequenceClassifier(body, len(labels), pooling)
    try:
        tensors = load_file(str(run_dir / TENSORS_FILE))
    except Exception as e:  # noqa: BLE001 - any unreadable file is one message
        raise CentelhaError(f"{run_dir / TENSORS_FILE} is unreadable ({e})") from None
    load_trained(model, tensors, run_dir / TENSORS_FILE)
    return Classifier(model, tokenizer, labels, max_length)


def load_trained(model: nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Put trained tensors into `model`, each name and shape checked first."""
    own = model.state_dict()
    for name, tensor in tensors.items():
        if name not in own:
            raise CentelhaError(f"{source}: {name} is not a weight of this model")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise CentelhaError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model "
                                f"has {tuple(own[name].shape)}")
    model.load_state_dict(tensors, strict=False)
