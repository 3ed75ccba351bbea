"""centelha: build, train, fine-tune, evaluate and run GPT-style language models on a CPU.

The nouns every module shares: `ModelConfig`, `Transformer`, `Tokenizer`, and the
checkpoint directory (config.json + model.safetensors + tokenizer.json).
"""

from centelha.api import LLM, load
from centelha.config import ModelConfig
from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["LLM", "load", "CentelhaError", "ModelConfig", "Tokenizer", "Transformer", "__version__"]
