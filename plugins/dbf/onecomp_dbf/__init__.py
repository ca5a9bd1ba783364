"""Double Binary Factorization: W ≈ diag(a)·S_A·diag(c)·S_B·diag(b) with ±1 matrices S_A, S_B."""

from .config import DBFConfig, FitSettings
from .layer import DoubleBinaryLinear
from .method import DBF
from .result import DBFResult

__all__ = ["DBF", "DBFConfig", "DBFResult", "DoubleBinaryLinear", "FitSettings"]
