"""onecomp-jointq: JointQ (local search with joint scale refits from the GPTQ start) as a plugin."""

from .config import JointQConfig
from .jointq import JointQOutput, jointq_quantize
from .method import JointQ
from .result import JointQResult

__all__ = ["JointQ", "JointQConfig", "JointQOutput", "JointQResult", "jointq_quantize"]
