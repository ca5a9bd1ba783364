"""The entry point module: only the hook that hands onecomp the Quantizer classes."""

from onecomp_core import hookimpl

from .quantizer import Ternary


@hookimpl
def onecomp_quantizers() -> list[type]:
    return [Ternary]
