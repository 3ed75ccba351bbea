"""`centelha.load`: one call from a name, folder or GGUF file to a model you can talk to.

`load` accepts a registry name (`smollm2-135m-instruct`), a centelha checkpoint folder,
a Hugging Face folder or a `.gguf` file, and returns an `LLM`: the one way to generate
from Python. `stream`, `generate` and `chat` give text; `complete` gives `n` choices with
their token ids, finish reasons and the model's log-probabilities (what the server's `n`
and `logprobs` return, computed by the same `choices` module). The CLI goes through it too.
A fine-tune's run folder loads as well; a classifier run gives a `Classifier` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from centelha.choices import Completion, complete
from centelha.engine import Engine, Request
from centelha.errors import CentelhaError
from centelha.generate import prompt_ids, stream_text, with_bos
from centelha.loading import load_model
from centelha.model import Transformer
from centelha.sampling import SamplingConfig
from centelha.template import encode_chat, render_chat
from centelha.tokenizer import Tokenizer

# The KV cache is preallocated, so a model that declares 128k positions would reserve
# gigabytes for one conversation: by default it gets this many (pass max_context to change).
DEFAULT_CONTEXT = 4096

if TYPE_CHECKING:
    from centelha.objectives.classifier import Classifier


def sampling_from(kwargs: dict) -> SamplingConfig:
    try:
        return SamplingConfig(**kwargs)
    except TypeError as e:
        raise CentelhaError(f"unknown generation setting: {e}") from None


class LLM:
    """A loaded model and its tokenizer, with the three ways people use one."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str = "model",
                 info: dict | None = None, max_context: int = DEFAULT_CONTEXT):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.info = info or {}
        self.max_context = min(max_context, model.cfg.block_size)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:  # the cache is allocated on first use
            self._engine = Engine(self.model, max_batch=1, max_len=self.max_context,
                                  vocab_size=self.tokenizer.vocab_size)
        return self._engine

    def stream(self, prompt: str | list[dict], **settings) -> Iterator[str]:
        """Text pieces as they are generated; a list of messages is a chat."""
        cfg = sampling_from(settings)
        request = Request(self.prompt_ids(prompt), cfg, frozenset(self.tokenizer.stop_ids))
        tokens = (t.token for t in self.engine.stream(request))
        return stream_text(self.tokenizer, tokens, cfg.stop)

    def complete(self, prompt: str | list[dict], n: int = 1, logprobs: int | None = None,
                 **settings) -> list[Completion]:
        """`n` answers to `prompt` (a list of messages is a chat), choice i sampled with
        seed + i; with `logprobs=k`, each token's log-probability under the model (before
        temperature and penalties) and its k most likely alternatives."""
        cfg = sampling_from(settings)
        return complete(self.engine, self.tokenizer, self.prompt_ids(prompt), cfg, n=n,
                        logprobs=logprobs)

    def generate(self, prompt: str, **settings) -> str:
        """The continuation of `prompt` (temperature=0 for greedy)."""
        return "".join(self.stream(prompt, **settings))

    def chat(self, messages: list[dict], **settings) -> str:
        """The assistant's reply to `messages` ([{"role": "user", "content": ...}, ...])."""
        return "".join(self.stream(messages, **settings)).strip()

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text the chat template makes of `messages`."""
        tok = self.tokenizer
        return render_chat(tok.chat_template, messages, tok.bos_token, tok.eos_token)

    def prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        """The ids the model is given: a text as it is (BOS first where the model wants
        it), a list of messages through the chat template."""
        if isinstance(prompt, list):
            return self.chat_ids(prompt)
        return prompt_ids(self.tokenizer, prompt)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The prompt ids of `messages`; their contents never become special tokens."""
        return with_bos(self.tokenizer, encode_chat(self.tokenizer, messages))


def load(source: str | Path = "smollm2-135m-instruct", dtype: str = "fp32",
         max_context: int = DEFAULT_CONTEXT, adapter: str | Path | None = None
         ) -> LLM | Classifier:
    """A model by registry name, checkpoint folder, Hugging Face folder or GGUF path;
    `dtype`: fp32, bf16, fp16, int8, int4 or native (see `load_model`); `adapter`: a LoRA
    adapter folder trained on that model, merged into its weights.

    A fine-tune's run folder loads too: an adapter run on the base it names, a full
    fine-tune as the checkpoint it is, and a classifier run as a `Classifier`
    (`.predict(text)` → label and probabilities)."""
    from centelha.objectives.classifier import is_classifier_run, load_classifier

    if is_classifier_run(source):
        return load_classifier(source)
    model, tokenizer, info = load_model(source, dtype, adapter=adapter)
    return LLM(model, tokenizer, name=str(source), info=info, max_context=max_context)
