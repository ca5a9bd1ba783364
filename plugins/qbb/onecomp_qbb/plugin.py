"""Registers the QBB method with onecomp (entry point ``qbb`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import QBB


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(QBB)
