"""Registration: the one hook a plugin implements, and the typed object it receives.

A plugin module (named by an entry point of the ``onecomp`` group) defines::

    @hookimpl
    def onecomp_register(register: Register) -> None:
        register.add_method(MyMethod)

The built-in method, calibration sources and save format are registered
through the same hook, exactly like third-party ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from torch import nn

from .method import Method
from .result import LayerResult

PROJECT = "onecomp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass
class Artifact:
    """A quantized model as a save/export format receives it.

    ``model`` has the packed inference layers in place; ``rows`` is the
    per-layer table (method, shapes, bits, ...); ``quantization_config`` the
    JSON saved under ``config.json``; ``results`` the layer results when the
    model comes straight from a run (empty when it was loaded from a folder).
    """

    model: nn.Module
    rows: dict[str, dict[str, Any]]
    quantization_config: dict[str, Any]
    tokenizer: Any = None
    results: dict[str, LayerResult] = field(default_factory=dict)


#: ``claims(dataset) -> bool``: whether a source reads this ``dataset`` value; it may raise
#: ValueError (one line) for a value it recognises but cannot use (a missing file, say), so the
#: user hears why before any long work
Claims = Callable[[Any], bool]
#: ``load(dataset, config, tokenizer, model) -> list[str] | torch.Tensor``: documents, or
#: ready (N, L) token windows
Load = Callable[[Any, Any, Any, Any], Any]
#: ``save(artifact, out) -> None``: write ``artifact`` to the path ``out``
Save = Callable[[Artifact, Path], None]


class Register:
    """What ``onecomp_register`` receives: one typed call per kind of thing a plugin adds."""

    def __init__(self, plugin: str, sink: Callable[[str, str, Any, str], None]) -> None:
        self._plugin, self._sink = plugin, sink

    def add_method(self, cls: type[Method]) -> None:
        """A quantization method, selected by its ``method`` name."""
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"add_method({cls!r}): expected a Method subclass")
        if not isinstance(cls.method, str) or not cls.method:
            raise TypeError(f"{cls.__name__} does not set the class attribute `method`")
        self._sink("method", cls.method, cls, self._plugin)

    def add_calibration_source(self, name: str, claims: Claims, load: Load) -> None:
        """A calibration source: ``claims(dataset)`` picks it, ``load(...)`` reads it.

        ``claims`` returns False for values it does not read and raises
        ValueError for one it recognises but cannot use (a missing file).

        ``load(dataset, config, tokenizer, model)`` returns documents (a list
        of strings, cut into windows by the configured strategy) or ready
        (N, L) token windows as a tensor.
        """
        if not callable(claims) or not callable(load):
            raise TypeError(f"calibration source {name!r}: claims and load must be callables")
        self._sink("source", name, (claims, load), self._plugin)

    def add_format(self, name: str, save: Save) -> None:
        """A save/export format: ``save(artifact, out)`` writes a quantized model."""
        if not callable(save):
            raise TypeError(f"format {name!r}: save must be a callable")
        self._sink("format", name, save, self._plugin)


@hookspec
def onecomp_register(register: Register) -> None:
    """Add this plugin's methods, calibration sources and formats to ``register``."""
