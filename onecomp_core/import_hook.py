"""Run a function right after a module is first imported, without importing it now.

onecomp registers itself with transformers' quantizer registry
(:mod:`.hf`) this way: ``import onecomp_core`` must not pay for importing
transformers, yet ``from_pretrained`` must find onecomp's registration
whichever of the two is imported first.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from typing import Any


def after_import(module: str, action: Callable[[], None]) -> None:
    """Call ``action`` now when ``module`` is imported already, else right after its import."""
    if module in sys.modules:
        action()
    else:
        sys.meta_path.insert(0, _AfterImport(module, action))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``module`` through the other finders and wraps its execution (once)."""

    def __init__(self, module: str, action: Callable[[], None]) -> None:
        self.module, self.action = module, action

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.module:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader, action = spec.loader, self.action
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(mod: Any) -> None:
            run(mod)
            action()

        loader.exec_module = exec_module
        return spec
