"""Multi-envelope double binary factorization: W ≈ Σ_paths (S_A ⊙ A·Q_Uᵀ)·(S_B ⊙ Q_V·Bᵀ)."""

from .config import MDBFConfig
from .layer import MultipathMDBFLinear
from .method import MDBF
from .result import MDBFResult

__all__ = ["MDBF", "MDBFConfig", "MDBFResult", "MultipathMDBFLinear"]
