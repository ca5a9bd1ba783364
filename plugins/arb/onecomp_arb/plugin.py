"""Registers the ARB method with onecomp (entry point ``arb`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import ARB


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(ARB)
