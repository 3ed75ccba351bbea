"""Tokenizers round-trip every string exactly, stream emoji whole, save and load."""

import random

import pytest

from centelha.tokenizer import BYTE_TOKENS, EOT, Tokenizer, train_bpe, train_char

TRAINING = ["Era uma vez um coração que não sabia o que é saudade.",
            "Ação, reação, emoção — tudo isso é português. Olá!"] * 20

HARD = [
    "Olá, coração! Ação, pães, avó, avô, à, ü, ñ, Ç.",
    "emoji 🙂👍🏽👨‍👩‍👧 e bandeira 🇧🇷",
    "日本語のテキスト and Ελληνικά and עברית",
    "control \x00\x01\x1f\x7f tabs\t\tnewlines\n\r\n spaces   end ",
    EOT + " inside text " + EOT,
    "",
]


@pytest.fixture(scope="module", params=["bpe", "char"])
def tokenizer(request):
    if request.param == "bpe":
        return train_bpe(TRAINING, vocab_size=300)
    return train_char(TRAINING)


@pytest.mark.parametrize("text", HARD)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    # the saved tokenizer.json alone decodes to the same text in HF tokenizers
    assert tokenizer.hf.decode(ids, skip_special_tokens=False) == text


def test_random_unicode_round_trips(tokenizer):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x2FFF) if not 0xD800 <= c <= 0xDFFF]
    alphabet += ["🙂", "🇧", "\U0010FFFD", "\x00", "\n"]
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_only_when_allowed(tokenizer):
    assert tokenizer.encode(EOT, allow_special=True) == [tokenizer.eot_id]
    assert tokenizer.eot_id not in tokenizer.encode(EOT)


def test_stream_decoder_holds_back_half_characters(tokenizer):
    text = "a🙂b👍🏽ç"
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in tokenizer.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_bpe_learns_merges_and_vocab_size():
    tok = train_bpe(TRAINING, vocab_size=300)
    assert tok.vocab_size == 300
    assert len(tok.encode("coração")) < len("coração".encode())


def test_save_and_load(tmp_path, tokenizer):
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.kind == tokenizer.kind
    assert loaded.encode(HARD[1]) == tokenizer.encode(HARD[1])


def test_bad_tokenizer_file_is_a_clear_error(tmp_path):
    from centelha.errors import CentelhaError

    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CentelhaError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
    with pytest.raises(CentelhaError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")


def test_sentencepiece_style_tokenizer_json_is_detected():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    vocab = {"<unk>": 0, "▁Era": 1, "▁uma": 2, "▁vez": 3, "▁": 4, **{t: 5 + i for i, t in
                                                                   enumerate(BYTE_TOKENS)}}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                          normalizers.Replace(" ", "▁")])
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok = Tokenizer(hf)
    assert tok.kind == "spm" and tok.strip_leading_space
    assert tok.decode([1, 2, 3]) == "Era uma vez"
    assert tok.decode(tok.encode("Era ção")) == "Era ção"


def test_bos_comes_from_the_post_processor_where_the_config_is_silent(tmp_path):
    """Llama 3's tokenizer_config.json has no add_bos_token: its tokenizer.json's
    post-processor puts <|begin_of_text|> first, and transformers follows it."""
    from tokenizers import processors

    bos = "<|begin_of_text|>"
    hf = train_bpe(TRAINING, vocab_size=300, special_tokens=(EOT, bos)).hf
    hf.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, hf.token_to_id(bos))])
    tok = Tokenizer(hf, {"bos_token": bos})
    assert tok.add_bos and tok.encode("Era")[0] != tok.bos_id  # encode itself adds nothing
    assert not Tokenizer(hf, {"bos_token": bos, "add_bos_token": False}).add_bos  # config wins
    assert not Tokenizer(hf, {"bos_token": EOT}).add_bos  # another BOS than the one put first
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).add_bos
