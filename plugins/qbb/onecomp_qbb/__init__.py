"""Quantization with Binary Bases: W ≈ Σ_k B_k·diag(a_k) with sign matrices B_k."""

from .config import QBBConfig
from .layer import BinaryBasesLinear
from .method import QBB
from .result import QBBResult

__all__ = ["QBB", "BinaryBasesLinear", "QBBConfig", "QBBResult"]
