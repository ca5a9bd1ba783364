"""The entry-point module: only the hook that hands onecomp what this plugin adds."""

from onecomp_core.contract import Register, hookimpl

from .export import save_npz
from .method import Ternary
from .source import is_csv, read_csv


@hookimpl
def onecomp_register(register: Register) -> None:
    register.add_method(Ternary)
    register.add_calibration_source("csv", is_csv, read_csv)
    register.add_format("npz", save_npz)
