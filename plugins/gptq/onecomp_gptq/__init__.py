"""onecomp-gptq: GPTQ post-training quantization as a onecomp plugin."""

from .config import GPTQConfig
from .gptq import GPTQOutput, GridSpec, gptq_quantize
from .layer import GPTQLinear
from .method import GPTQ
from .result import GPTQResult

__all__ = [
    "GPTQ",
    "GPTQConfig",
    "GPTQLinear",
    "GPTQOutput",
    "GPTQResult",
    "GridSpec",
    "gptq_quantize",
]
