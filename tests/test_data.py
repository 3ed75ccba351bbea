"""prepare: reading, normalizing, splitting, redacting, sharding; windows read back."""

import json
import unicodedata

import numpy as np
import pytest
import torch

from centelha.data import TokenWindows, find_files, load_meta, prepare, split_sections
from centelha.errors import CentelhaError
from centelha.redact import redact
from centelha.tokenizer import Tokenizer


def write_corpus(root, docs=12):
    (root / "sub").mkdir(parents=True)
    for i in range(docs):
        (root / f"doc{i}.txt").write_text(f"Documento {i}: era uma vez uma história. " * 30)
    (root / "notes.md").write_text("# Título\r\nCafe\u0301 com pa\u0303o.\r\n" * 20)
    records = [{"text": f"registro {i} com ação"} for i in range(5)]
    (root / "sub" / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (root / "ignored.csv").write_text("a,b\n")
    return root


def test_prepare_writes_shards_that_read_back_as_the_tokens(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    prepared = prepare([corpus], tmp_path / "out", vocab_size=300, val_fraction=0.2,
                       show_progress=False)
    meta = load_meta(tmp_path / "out")
    assert meta["dtype"] == "uint16"
    assert len(meta["sources"]) == 14  # 12 txt + 1 md + 1 jsonl, not the csv
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["documents"] + val["documents"] == 12 + 1 + 5
    assert val["documents"] == 4
    tokens = np.fromfile(tmp_path / "out" / train["shards"][0], dtype=np.uint16)
    assert len(tokens) == train["tokens"]
    eot = Tokenizer.load(prepared.path / "tokenizer.json").eot_id
    assert (tokens == eot).sum() == train["documents"]
    assert meta["unigram_val_loss"] > 0


def test_text_is_normalized_to_nfc_with_unix_newlines(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    prepare([corpus], out, vocab_size=300, val_fraction=0.2, show_progress=False)
    tok = Tokenizer.load(out / "tokenizer.json")
    meta = load_meta(out)
    text = "".join(tok.decode(np.fromfile(out / meta["splits"][s]["shards"][0],
                                          dtype=np.uint16).tolist()) for s in ("train", "val"))
    assert "Café com pão" in text
    assert "\r" not in text
    assert text == unicodedata.normalize("NFC", text)


def test_validation_documents_never_appear_in_training(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(10):
        (root / f"{i}.txt").write_text(f"marcador-{i:02d} " * 50)
    out = tmp_path / "out"
    prepare([root], out, vocab_size=300, val_fraction=0.3, show_progress=False)
    tok, meta = Tokenizer.load(out), load_meta(out)

    def text_of(split):
        return tok.decode(np.fromfile(out / meta["splits"][split]["shards"][0],
                                      dtype=np.uint16).tolist())

    markers = [f"marcador-{i:02d}" for i in range(10)]
    train_markers = {m for m in markers if m in text_of("train")}
    val_markers = {m for m in markers if m in text_of("val")}
    assert len(val_markers) == 3 and not train_markers & val_markers


def test_char_tokenizer_option(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    prepared = prepare([corpus], tmp_path / "out", kind="char", vocab_size=1000,
                       show_progress=False, val_fraction=0.2)
    assert prepared.meta["tokenizer_kind"] == "char"
    tokenizer = Tokenizer.load(prepared.path / "tokenizer.json")
    assert tokenizer.decode(tokenizer.encode("história 🙂")) == "história 🙂"


def test_redact_masks_personal_data_before_tokenizing(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    secret = "Escreva para maria.souza@exemplo.com.br ou ligue (11) 91234-5678. CPF 123.456.789-09."
    for i in range(4):
        (root / f"{i}.txt").write_text(secret + f" Documento {i}.\n" * 5)
    out = tmp_path / "out"
    prepare([root], out, vocab_size=300, redact_personal=True, show_progress=False,
            val_fraction=0.25)
    tok, meta = Tokenizer.load(out), load_meta(out)
    text = tok.decode(np.fromfile(out / meta["splits"]["train"]["shards"][0],
                                  dtype=np.uint16).tolist())
    assert "maria" not in text and "91234" not in text and "789" not in text
    assert "<EMAIL>" in text and "<PHONE>" in text and "<CPF>" in text


@pytest.mark.parametrize("text, expected", [
    ("mande para ana@ex.org hoje", "mande para <EMAIL> hoje"),
    ("CPF 123.456.789-09 e 12345678909", "CPF <CPF> e <CPF>"),
    ("CNPJ 12.345.678/0001-95", "CNPJ <CNPJ>"),
    ("cartão 4111 1111 1111 1111", "cartão <CARD>"),
    ("fone (21) 2345-6789 ou +55 11 91234-5678", "fone <PHONE> ou <PHONE>"),
    ("em 1881, capítulo 12, 1.000.000 réis, 12:30", "em 1881, capítulo 12, 1.000.000 réis, 12:30"),
])
def test_redact_patterns(text, expected):
    assert redact(text) == expected


def test_sections_cut_at_line_breaks():
    text = "".join(f"linha {i}\n" for i in range(5000))
    sections = split_sections(text, size=1000)
    assert "".join(sections) == text
    assert all(s.endswith("\n") for s in sections)
    assert max(len(s) for s in sections) < 1100


def test_windows_are_shifted_by_one(prepared):
    windows = TokenWindows(prepared, "train", block_size=16)
    x, y = windows.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = windows.sample(8, torch.Generator().manual_seed(0))[0]
    assert torch.equal(x, again)
    batches = list(windows.sequential(4, max_batches=2))
    assert len(batches) == 2 and torch.equal(batches[0][0][0], torch.from_numpy(
        np.asarray(windows.shards[0][:16], dtype=np.int64)))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "corpus path not found"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no .txt, .md or .jsonl files"),
    (lambda p: (p / "blank.txt").write_text("  \n\n") and p / "blank.txt", "corpus is empty"),
    (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n') and p / "bad.jsonl",
     "bad.jsonl:2: not valid JSON"),
    (lambda p: (p / "bad2.jsonl").write_text('{"body": "x"}\n') and p / "bad2.jsonl",
     'string field "text"'),
    (lambda p: (p / "latin1.txt").write_bytes("ação".encode("latin-1")) and p / "latin1.txt",
     "not UTF-8"),
    (lambda p: (p / "one.txt").write_text("só uma linha") and p / "one.txt", "too small"),
    (lambda p: (p / "x.pdf").write_text("x") and p / "x.pdf", "unsupported file type"),
])
def test_bad_corpus_gets_a_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CentelhaError, match=message):
        prepare([path], tmp_path / "out", show_progress=False)


def test_find_files_is_sorted_and_recursive(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    files = find_files([corpus])
    assert files == sorted(files)
    assert any(f.name == "data.jsonl" for f in files)


def test_too_few_tokens_for_the_window_is_a_clear_error(prepared):
    with pytest.raises(CentelhaError, match="too few for windows"):
        TokenWindows(prepared, "val", block_size=10**7)


def test_a_jsonl_text_may_hold_a_raw_line_separator(tmp_path):
    from centelha.data import read_jsonl

    path = tmp_path / "docs.jsonl"  # json.dumps(ensure_ascii=False) writes U+2028 as it is
    path.write_text('{"text": "um\u2028dois"}\n\n{"text": "três"}\n', encoding="utf-8")
    assert list(read_jsonl(path)) == ["um\u2028dois", "três"]
