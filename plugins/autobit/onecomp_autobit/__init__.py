"""AutoBit: mixed precision by integer linear programming over other onecomp methods.

AutoBit never imports another plugin: candidates are made by method name
through ``onecomp_core.registry``, so any installed method whose results report
``effective_bits`` can be a candidate.
"""

from .config import AutoBitConfig
from .ilp import InfeasibleTargetError, solve_assignment
from .method import AutoBitQuantizer
from .vram import VramEstimate, estimate_wbits_from_vram

__all__ = [
    "AutoBitConfig",
    "AutoBitQuantizer",
    "InfeasibleTargetError",
    "VramEstimate",
    "estimate_wbits_from_vram",
    "solve_assignment",
]
