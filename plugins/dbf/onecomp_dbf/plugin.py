"""Registers the DBF method with onecomp (entry point ``dbf`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import DBF


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(DBF)
