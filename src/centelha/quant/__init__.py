"""Weight-only quantized linear layers (8-bit and 4-bit blocks) for fast CPU decoding.

Decoding is bound by reading the weights, so storing them in 8 or 4 bits and multiplying
them with our own C++ kernels makes it several times faster than fp32 on a 2-core machine.
The block layouts are GGUF's where they can be, so Q8_0/Q4_0/Q4_1 files load by copying
bytes. One idea per module, each building on the ones above it:

- `blocks`      the int8/int4 block layouts, and quantizing float weights into them
- `matmul`      dequantization and products, and when the C++ kernels compute them
- `gguf_blocks` GGUF's Q8_0/Q4_0/Q4_1/Q4_K bytes → our block buffers
- `layer`       `QuantLinear`, the drop-in nn.Linear built from either
- `whole_model` quantize / dequantize every linear layer of a model; `is_quantized`
- `state`       a quantized model as tensors + description for checkpoints, and back
- `checkpoint`  `quantize_checkpoint` (what `centelha quantize` does); import it from
                `centelha.quant.checkpoint`, since it needs the loaders that import this
"""

from centelha.quant.blocks import BLOCK, GROUP_SIZES, METHODS
from centelha.quant.gguf_blocks import GGUF_TYPES
from centelha.quant.layer import QuantLinear
from centelha.quant.matmul import (
    DECODE_MAX_ROWS,
    dequantize_q4,
    dequantize_q8,
    q4_matmul,
    q8_matmul,
)
from centelha.quant.state import apply_quantized_state, quantized_state
from centelha.quant.whole_model import HEAD, dequantize_model, is_quantized, quantize_model

__all__ = [
    "BLOCK",
    "DECODE_MAX_ROWS",
    "GGUF_TYPES",
    "GROUP_SIZES",
    "HEAD",
    "METHODS",
    "QuantLinear",
    "apply_quantized_state",
    "dequantize_model",
    "dequantize_q4",
    "dequantize_q8",
    "is_quantized",
    "q4_matmul",
    "q8_matmul",
    "quantize_model",
    "quantized_state",
]
