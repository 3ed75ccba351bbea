"""The inference runtime: what runs a `Transformer` fast for generation, beside the model.

`centelha.model` is the reference: one plain path through norms, rotary positions,
attention and the MLP, the one training uses. This package holds what inference adds:

- `cache.py`: `KVCache`, every layer's keys and values, preallocated, one row a sequence.
- `step.py`: `Step`, one forward call's plan, shared by every layer: positions, cache
  slots, the attention mask, rotary rows, and which attention implementation runs.
- `plan.py`: `plan`, which makes that Step once per call, before the first layer.
- `attention.py`: the faster attention paths a plan may choose: a few new queries over the
  cache as two batched matrix products, or one C++ call a layer for one token per row.
- `dispatch.py`: `inference_kernels`, when centelha's C++ kernels may stand in for PyTorch
  operations (float32 on a CPU, no gradient wanted).

Design choices a reader should know:
- The runtime changes how the model computes, never what: each path it may choose is
  tested against the reference path (tests/test_decode_kernels.py, tests/test_model.py),
  and all of them against Hugging Face `transformers` (tests/test_model.py).
- Choices are made once per forward call, in `plan`, not once per layer: a decode step of
  a 30-layer model would otherwise make ~30 more of them, each costing microseconds.
- Nothing here imports `centelha.model`: the model imports the runtime, and the runtime
  reaches the model only through the objects it is handed.
"""

from centelha.runtime.cache import KVCache
from centelha.runtime.dispatch import inference_kernels
from centelha.runtime.plan import plan
from centelha.runtime.step import Step

__all__ = ["KVCache", "Step", "inference_kernels", "plan"]
