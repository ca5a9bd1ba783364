"""Clustering quantization (CQ): each weight row as two levels, 1 bit per weight."""

from .config import CQConfig
from .layer import ClusterLinear
from .method import CQ
from .result import CQResult

__all__ = ["CQ", "CQConfig", "CQResult", "ClusterLinear"]
