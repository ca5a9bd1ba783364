"""Registers the OneBit method with onecomp (entry point ``onebit`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import Onebit


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(Onebit)
