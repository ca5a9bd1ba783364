"""Registers RTN exactly as a third-party plugin would (a "default plugin" of the core)."""

from onecomp_core.hookspecs import hookimpl

from .quantizer import RTN


@hookimpl
def onecomp_quantizers() -> list[type]:
    return [RTN]
