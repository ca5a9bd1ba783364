"""Registers the MDBF method with onecomp (entry point ``mdbf`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import MDBF


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(MDBF)
