"""Registers the CQ method with onecomp (entry point ``cq`` in group ``onecomp``)."""

from onecomp_core.contract import Register, hookimpl

from .method import CQ


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(CQ)
