"""onecomp-gptq: GPTQ post-training quantization as a onecomp plugin."""

from .gptq import GPTQOutput, GridSpec, gptq_quantize
from .layer import GPTQLinear
from .quantizer import GPTQ, GPTQResult

__all__ = ["GPTQ", "GPTQResult", "GPTQLinear", "GPTQOutput", "GridSpec", "gptq_quantize"]
