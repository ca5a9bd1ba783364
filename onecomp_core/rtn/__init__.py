"""Round-to-nearest: the built-in method, and the worked example for plugin authors."""

from .method import RTN, RTNResult
from .rounding import rtn_quantize

__all__ = ["RTN", "RTNResult", "rtn_quantize"]
