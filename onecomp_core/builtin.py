"""The built-in plugin: registers the core's own method, sources and format like any plugin."""

from __future__ import annotations

from .contract import Register, hookimpl


@hookimpl
def onecomp_register(register: Register) -> None:
    from .data.sources import BUILTIN_SOURCES
    from .export.gguf_format import save_gguf
    from .rtn import RTN
    from .storage.hf_folder import save

    register.add_method(RTN)
    for name, (claims, load) in BUILTIN_SOURCES.items():
        register.add_calibration_source(name, claims, load)
    register.add_format("hf", save)
    register.add_format("gguf", save_gguf)
