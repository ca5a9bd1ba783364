"""The registry: plugins found through entry points, and lookup of what they registered.

One lazy pluggy manager. The built-in plugin (:mod:`onecomp_core.builtin`)
is registered first, then each entry point of the ``onecomp`` group, each
inside its own try/except: a broken third-party plugin shows up as
"failed" in ``onecomp plugins`` and the others keep working.
``ONECOMP_STRICT_PLUGINS=1`` re-raises instead;
``ONECOMP_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-in plugin (tests
add what they need with :func:`onecomp_core.testing.registered_plugin`).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from .contract import Method, Register
from .contract import register as hooks

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onecomp"
BUILTIN = ("onecomp-core", "onecomp_core.builtin")
#: where the first-party methods live, for "pip install ..." hints
KNOWN_PACKAGES = {"gptq": "onecomp-gptq", "dbf": "onecomp-dbf", "autobit": "onecomp-autobit"}
KINDS = ("method", "source", "format")


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    status: str = "ok"
    error: str | None = None
    methods: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)


class PluginError(RuntimeError):
    """A plugin could not be used (duplicate name, bad registration, ...)."""


class UnknownMethodError(ValueError, LookupError):
    """No installed plugin provides the requested method (or source, or format)."""


_pm: pluggy.PluginManager | None = None
_infos: dict[str, PluginInfo] = {}
_tables: dict[str, dict[str, Any]] | None = None
_owners: dict[tuple[str, str], str] = {}


def _strict() -> bool:
    return os.environ.get("ONECOMP_STRICT_PLUGINS", "") not in ("", "0")


def _version(distribution: str) -> str:
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return "unknown"


def get_plugin_manager() -> pluggy.PluginManager:
    """The manager, created and filled on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hooks.PROJECT)
        pm.add_hookspecs(hooks)
        dist, module = BUILTIN
        pm.register(importlib.import_module(module), name="builtin")
        _infos["builtin"] = PluginInfo("builtin", dist, _version(dist))
        if os.environ.get("ONECOMP_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0"):
            _load_entry_points(pm)
        pm.check_pending()
        _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "unknown"
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "unknown")
        # two distributions may use the same entry name: keep both so the duplicate
        # check can name them instead of one silently hiding the other
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
            _fail(info, exc, "error while loading")


#: the hook of the first plugin API, replaced by ``onecomp_register``
_OLD_HOOK = "onecomp_quantizers"


def _fail(info: PluginInfo, exc: Exception, what: str) -> None:
    info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
    if _OLD_HOOK in str(exc):
        info.error += (
            f"; {_OLD_HOOK}() was onecomp's first plugin API: implement "
            "onecomp_register(register) and register.add_method(...) instead (README, plugin guide)"
        )
    logger.warning("%s the %r onecomp plugin from %s: %s", what, info.name, info.distribution, exc)
    logger.debug("%s", traceback.format_exc())


def _collect() -> dict[str, dict[str, Any]]:
    """Call every plugin's ``onecomp_register`` with its own Register; fill the tables."""
    pm = get_plugin_manager()
    tables: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    _owners.clear()
    for impl in pm.hook.onecomp_register.get_hookimpls():
        info = _infos.setdefault(
            impl.plugin_name, PluginInfo(impl.plugin_name, "unknown", "unknown")
        )
        added: list[tuple[str, str, Any]] = []
        try:
            impl.function(register=Register(impl.plugin_name, _collector(added)))
        except Exception as exc:
            if _strict():
                raise
            _fail(info, exc, "onecomp_register() failed in")
            continue
        for kind, name, value in added:
            _add(tables, info, impl.plugin_name, kind, name, value)
    return tables


def _collector(added: list[tuple[str, str, Any]]):
    return lambda kind, name, value, _plugin: added.append((kind, name, value))


def _add(tables, info: PluginInfo, plugin: str, kind: str, name: str, value: Any) -> None:
    table = tables[kind]
    if name in table and table[name] is not value:
        raise PluginError(
            f"two plugins provide the {kind} {name!r}: {_owners[(kind, name)]} and "
            f"{info.distribution} ({plugin}); uninstall one of them"
        )
    table[name] = value
    _owners[(kind, name)] = f"{info.distribution} ({plugin})"
    listing = getattr(info, kind + "s")
    if name not in listing:
        listing.append(name)


def tables() -> dict[str, dict[str, Any]]:
    global _tables
    if _tables is None:
        _tables = _collect()
    return _tables


# -- methods ------------------------------------------------------------------------------
def methods() -> dict[str, type[Method]]:
    """Method name → class, over every working plugin."""
    return tables()["method"]


def list_methods() -> list[str]:
    return sorted(methods())


def get_method(name: str) -> type[Method]:
    found = methods()
    if name not in found:
        installed = ", ".join(sorted(found)) or "none"
        hint = KNOWN_PACKAGES.get(name)
        advice = (
            f"; install it with `pip install {hint}`"
            if hint
            else "; install the plugin that provides it"
        )
        raise UnknownMethodError(
            f"unknown quantization method {name!r} (installed: {installed}){advice}"
        )
    return found[name]


def create_method(name: str, /, **params: Any) -> Method:
    """Instantiate a method by name from user parameters; every problem in one ConfigError."""
    return get_method(name).from_user(params, f"method {name!r}")


# -- calibration sources and formats ------------------------------------------------------
def sources() -> dict[str, tuple[Any, Any]]:
    """Source name → (claims, load)."""
    return tables()["source"]


def source_for(dataset: Any) -> tuple[str, Any]:
    """(name, load) of the first source that claims ``dataset``; third-party sources first."""
    found = sources()
    builtin = set(_infos["builtin"].sources)
    for name, (claims, load) in sorted(found.items(), key=lambda item: item[0] in builtin):
        if claims(dataset):
            return name, load
    raise UnknownMethodError(
        f"no calibration source reads dataset={dataset!r} "
        f"(installed sources: {', '.join(sorted(found))})"
    )


def formats() -> dict[str, Any]:
    return tables()["format"]


def get_format(name: str) -> Any:
    found = formats()
    if name not in found:
        raise UnknownMethodError(
            f"unknown format {name!r} (installed: {', '.join(sorted(found)) or 'none'})"
        )
    return found[name]


# -- the plugin list, and in-process plugins ------------------------------------------------
def plugin_report() -> list[PluginInfo]:
    """Every plugin seen, loaded or not (``onecomp plugins``)."""
    tables()
    return list(_infos.values())


def register(plugin: object, name: str | None = None) -> str:
    """Register an in-process plugin object (tests, notebooks)."""
    global _tables
    pm = get_plugin_manager()
    plugin_name = pm.register(plugin, name=name)
    _infos[plugin_name] = PluginInfo(plugin_name, "in-process", "n/a")
    _tables = None
    return plugin_name


def unregister(name: str) -> None:
    global _tables
    get_plugin_manager().unregister(name=name)
    _infos.pop(name, None)
    _tables = None


def reset() -> None:
    """Forget everything; the next use loads the plugins again."""
    global _pm, _tables
    _pm, _tables = None, None
    _infos.clear()


# plugins reach other methods through the contract (Method.named / Method.create)
Method.registry = sys.modules[__name__]
