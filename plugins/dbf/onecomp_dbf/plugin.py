"""Registers the DBF method with onecomp (entry point ``dbf`` in group ``onecomp``)."""

from onecomp_core.hookspecs import hookimpl

from .quantizer import DBF


@hookimpl
def onecomp_quantizers() -> list[type]:
    return [DBF]
