"""OneBit: W ≈ diag(a)·sign(W)·diag(b) (SVID), balancing folded back, block fine-tuned."""

from .method import Onebit
from .result import OneBitResult
from .svid import SVID, sinkhorn_balance, svid
from .twin import OneBitTwin

__all__ = ["SVID", "OneBitResult", "OneBitTwin", "Onebit", "sinkhorn_balance", "svid"]
