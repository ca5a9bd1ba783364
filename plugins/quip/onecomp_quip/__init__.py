"""onecomp-quip: QuIP (incoherence processing + LDLQ) with stored transforms, as a plugin."""

from .config import QuIPConfig
from .incoherence import QuIPOutput, quip_quantize
from .layer import QuIPLinear
from .method import QuIP
from .result import QuIPResult

__all__ = ["QuIP", "QuIPConfig", "QuIPLinear", "QuIPOutput", "QuIPResult", "quip_quantize"]
