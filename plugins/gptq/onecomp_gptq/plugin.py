"""Registers GPTQ with onecomp (entry point ``gptq`` in the ``onecomp`` group)."""

from onecomp_core.contract import Register, hookimpl

from .method import GPTQ


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(GPTQ)
