"""Registers AutoBit with onecomp (entry point ``autobit`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import AutoBitQuantizer


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(AutoBitQuantizer)
