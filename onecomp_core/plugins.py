"""Plugin discovery: one lazy pluggy manager, entry points loaded one by one.

Each entry point of the ``onecomp`` group is loaded inside its own
try/except, so a broken third-party plugin shows up as "failed" in
``onecomp plugins`` and the other methods keep working. Set
``ONECOMP_STRICT_PLUGINS=1`` to re-raise instead, and
``ONECOMP_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-in methods
(tests register what they need with :func:`onecomp_core.testing.registered_plugin`).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .quantizer import Quantizer

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onecomp"
DEFAULT_PLUGINS = {"rtn": "onecomp_core.rtn.plugin"}
#: where the first-party methods live, for "pip install ..." hints
KNOWN_PACKAGES = {"gptq": "onecomp-gptq", "dbf": "onecomp-dbf", "autobit": "onecomp-autobit"}


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    status: str = "ok"
    error: str | None = None
    methods: list[str] = field(default_factory=list)


class PluginError(RuntimeError):
    """A plugin could not be used (duplicate method, bad hook result, ...)."""


class UnknownMethodError(ValueError):
    """No installed plugin provides the requested method."""


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_classes: dict[str, type[Quantizer]] | None = None


def _strict() -> bool:
    return os.environ.get("ONECOMP_STRICT_PLUGINS", "") not in ("", "0")


def get_plugin_manager() -> pluggy.PluginManager:
    """The manager, created and filled on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for plugin_name, module_name in DEFAULT_PLUGINS.items():
            pm.register(importlib.import_module(module_name), name=plugin_name)
            _infos[plugin_name] = PluginInfo(plugin_name, "onecomp-core", _version("onecomp-core"))
        if os.environ.get("ONECOMP_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0"):
            _load_entry_points(pm)
        pm.check_pending()
        _pm = pm
    return _pm


def _version(distribution: str) -> str:
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return "unknown"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "unknown"
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "unknown")
        # Two distributions may use the same entry name (= method name); keep both so
        # the duplicate check in _collect_classes can name them instead of one hiding the other.
        key = ep.name if ep.name not in _infos else f"{ep.name}@{dist}"
        _infos[key] = info
        try:
            pm.register(ep.load(), name=key)
            try:
                pm.check_pending()  # a misspelled hook fails this plugin only
            except Exception:
                pm.unregister(name=key)
                raise
        except Exception as exc:
            if _strict():
                raise
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.warning(
                "error while loading the %r onecomp plugin from %s: %s", ep.name, dist, exc
            )
            logger.debug("%s", traceback.format_exc())


def _collect_classes() -> dict[str, type[Quantizer]]:
    pm = get_plugin_manager()
    found: dict[str, type[Quantizer]] = {}
    owner: dict[str, str] = {}
    for impl in pm.hook.onecomp_quantizers.get_hookimpls():
        info = _infos.setdefault(
            impl.plugin_name, PluginInfo(impl.plugin_name, "unknown", "unknown")
        )
        try:
            classes = list(impl.function() or [])
            _check_classes(classes)
        except Exception as exc:
            if _strict():
                raise
            info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.warning(
                "onecomp plugin %r failed in onecomp_quantizers(): %s", impl.plugin_name, exc
            )
            continue
        for cls in classes:
            if cls.method in found and found[cls.method] is not cls:
                raise PluginError(
                    f"two plugins provide the method {cls.method!r}: {owner[cls.method]} and "
                    f"{info.distribution} ({impl.plugin_name}); uninstall one of them"
                )
            found[cls.method], owner[cls.method] = cls, f"{info.distribution} ({impl.plugin_name})"
            if cls.method not in info.methods:
                info.methods.append(cls.method)
    return found


def _check_classes(classes: list[Any]) -> None:
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise PluginError(f"onecomp_quantizers() returned {cls!r}, not a Quantizer subclass")
        if not isinstance(cls.method, str) or not cls.method:
            raise PluginError(f"{cls.__name__} does not set the class attribute `method`")


def quantizer_classes() -> dict[str, type[Quantizer]]:
    """Method name → Quantizer class, over every working plugin."""
    global _classes
    if _classes is None:
        _classes = _collect_classes()
    return _classes


def list_quantizers() -> list[str]:
    return sorted(quantizer_classes())


def get_quantizer(method: str) -> type[Quantizer]:
    classes = quantizer_classes()
    if method not in classes:
        installed = ", ".join(sorted(classes)) or "none"
        hint = KNOWN_PACKAGES.get(method)
        advice = (
            f"; install it with `pip install {hint}`"
            if hint
            else ("; install the plugin that provides it")
        )
        raise UnknownMethodError(
            f"unknown quantization method {method!r} (installed: {installed}){advice}"
        )
    return classes[method]


def create_quantizer(method: str, **params: Any) -> Quantizer:
    """Instantiate a method by name; unknown parameters are one clear error."""
    cls = get_quantizer(method)
    try:
        quantizer = cls(**params)
    except TypeError as exc:
        import dataclasses

        allowed = sorted(f.name for f in dataclasses.fields(cls) if f.init)
        bad = sorted(set(params) - set(allowed))
        if bad:
            raise ValueError(
                f"unknown parameter(s) {bad} for method {method!r}; allowed: {', '.join(allowed)}"
            ) from exc
        raise
    quantizer.validate_params()
    return quantizer


def plugin_report() -> list[PluginInfo]:
    """Every plugin seen, loaded or not (``onecomp plugins``)."""
    quantizer_classes()
    return list(_infos.values())


def register(plugin: object, name: str | None = None) -> str:
    """Register an in-process plugin object (tests, notebooks)."""
    global _classes
    pm = get_plugin_manager()
    plugin_name = pm.register(plugin, name=name)
    _infos[plugin_name] = PluginInfo(plugin_name, "in-process", "n/a")
    _classes = None
    return plugin_name


def unregister(name: str) -> None:
    global _classes
    pm = get_plugin_manager()
    pm.unregister(name=name)
    _infos.pop(name, None)
    _classes = None


def reset() -> None:
    """Forget everything; the next use loads the plugins again."""
    global _pm, _classes
    _pm, _classes = None, None
    _infos.clear()
