"""The hooks a onecomp plugin may implement.

A plugin is any module or object with functions marked ``@hookimpl``; it is
found through the ``onecomp`` entry-point group (entry name = method name).
"""

from __future__ import annotations

import pluggy

PROJECT = "onecomp"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def onecomp_quantizers() -> list[type]:
    """Return the Quantizer subclasses this plugin provides (each sets ``method``)."""
