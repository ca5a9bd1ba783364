"""Registers AutoBit with onecomp (entry point ``autobit`` in group ``onecomp``)."""

from onecomp_core.hookspecs import hookimpl

from .quantizer import AutoBitQuantizer


@hookimpl
def onecomp_quantizers() -> list[type]:
    return [AutoBitQuantizer]
