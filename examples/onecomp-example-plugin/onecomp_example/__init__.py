"""An example onecomp plugin: a method (ternary), a calibration source (csv), a format (npz)."""

from .method import Ternary, TernaryResult

__all__ = ["Ternary", "TernaryResult"]
