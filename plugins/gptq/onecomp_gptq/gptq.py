"""The GPTQ solve, as the plugin names it: the math lives in the core's kernels (``gptq_solve``).

JointQ and QuIP build on the same column-wise error-feedback solve, and a
plugin may not import another plugin, so the solve is a core kernel; this
module keeps the plugin's own names for it.
"""

from onecomp_core.kernels import GPTQOutput, GridSpec, dequantize, gptq_quantize, rtn_quantize

__all__ = ["GPTQOutput", "GridSpec", "dequantize", "gptq_quantize", "rtn_quantize"]
