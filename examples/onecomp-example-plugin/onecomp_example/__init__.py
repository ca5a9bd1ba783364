"""An example onecomp plugin: ternary weights (each weight is -a, 0 or +a per output row)."""

from .quantizer import Ternary, TernaryResult

__all__ = ["Ternary", "TernaryResult"]
