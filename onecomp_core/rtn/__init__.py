"""Round-to-nearest: the built-in method, and the worked example for plugin authors."""

from .quantizer import RTN, RTNResult

__all__ = ["RTN", "RTNResult"]
