"""Registers QuIP with onecomp (entry point ``quip`` in the ``onecomp`` group)."""

from onecomp_core.contract import Register, hookimpl

from .method import QuIP


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(QuIP)
