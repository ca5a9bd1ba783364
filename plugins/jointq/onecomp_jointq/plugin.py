"""Registers JointQ with onecomp (entry point ``jointq`` in the ``onecomp`` group)."""

from onecomp_core.contract import Register, hookimpl

from .method import JointQ


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(JointQ)
