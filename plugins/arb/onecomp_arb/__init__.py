"""Alternating refined binarization (ARB, ARB-X, ARB-RC): one sign matrix plus fp16 scales."""

from .config import ARBConfig
from .method import ARB
from .result import ARBResult

__all__ = ["ARB", "ARBConfig", "ARBResult"]
