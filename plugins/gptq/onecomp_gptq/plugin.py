"""Registers GPTQ with onecomp (entry point ``gptq`` in the ``onecomp`` group)."""

from onecomp_core.hookspecs import hookimpl

from .quantizer import GPTQ


@hookimpl
def onecomp_quantizers() -> list[type]:
    return [GPTQ]
