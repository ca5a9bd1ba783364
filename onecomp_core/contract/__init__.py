"""The plugin-facing contract of onecomp: everything a method plugin imports.

A plugin imports from here (and, for shared packing and inference
kernels, from :mod:`onecomp_core.kernels`); every other core module is
private to the core. This package imports nothing else of the core.

- :class:`Method` — the behaviour, and (its dataclass fields) the parameters;
- :func:`param` / :class:`Config` / :class:`ConfigError` — parameters as data;
- :class:`Needs` / :class:`GradientMoments` — what the method asks of the engine;
- :class:`FineTune` / :class:`TrainableLayer` — block fine-tuning the engine runs;
- :class:`LayerJob` / :class:`LayerResult` — one layer in, one result out;
- :class:`BlockView` / :class:`RunView` / :class:`LayerMoments` — what lifecycle hooks see;
- :class:`ModelWalk` — the model as its blocks, one at a time, for model-level steps;
- :class:`Register` / :func:`hookimpl` / :class:`Artifact` — registration.
"""

from .config import Config, ConfigError, param
from .finetune import FineTune, TrainableLayer
from .method import Method
from .needs import GradientMoments, Needs
from .register import Artifact, Register, hookimpl
from .result import LayerResult
from .views import BlockView, LayerJob, LayerMoments, ModelWalk, RunView

__all__ = [
    "Artifact",
    "BlockView",
    "Config",
    "ConfigError",
    "FineTune",
    "GradientMoments",
    "LayerJob",
    "LayerMoments",
    "LayerResult",
    "Method",
    "ModelWalk",
    "Needs",
    "Register",
    "RunView",
    "TrainableLayer",
    "hookimpl",
    "param",
]
