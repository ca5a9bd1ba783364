"""Double Binary Factorization: W ≈ diag(a)·S_A·diag(c)·S_B·diag(b) with ±1 matrices S_A, S_B."""

from .layer import DoubleBinaryLinear
from .quantizer import DBF, DBFResult

__all__ = ["DBF", "DBFResult", "DoubleBinaryLinear"]
