"""Models from layer results: dense weights written back, or packed inference layers in place.

Each result is packed by the method named in its ``method`` field: the
run's own method instance when the names match (it may carry settings a
default instance lacks), else a default-constructed instance of that method
(AutoBit's children), which is enough because ``inference_layer`` depends
only on the result and the original linear.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .. import registry
from ..contract import LayerResult, Method
from ..data import adapters
from .skeleton import finish, skeleton


def apply_results(
    target: nn.Module | Mapping[str, nn.Module], results: Mapping[str, LayerResult]
) -> nn.Module | Mapping[str, nn.Module]:
    """Write every result's dense weight into the module of the same name (the one write-back).

    ``target`` is a model (modules found by dotted name) or a name → module
    mapping. The weight keeps its dtype and device; the values are those of
    ``result.dequantize()`` (fp16), exactly what a loader of the packed model sees.
    """
    modules = target if isinstance(target, Mapping) else dict(target.named_modules())
    for name, result in results.items():
        weight = modules[name].weight
        if weight.device.type != "meta":  # a streamed layer not in memory: nothing to write
            weight.data = result.dequantize(weight.device).to(weight.dtype)
    return target


def release_weights(modules: Mapping[str, nn.Module], names: Iterable[str]) -> None:
    """Free the dense weights of ``names`` until :func:`apply_results` writes them again.

    For the stretches where nothing reads them: the rest of a group's solves,
    the training of their twins. A streamed layer not in memory is left alone.
    """
    for name in names:
        weight = modules[name].weight
        if weight.device.type != "meta":
            weight.data = weight.data.new_empty(0)


def packers(method: Method, results: Mapping[str, LayerResult]) -> dict[str, Method]:
    """Method name → the instance that packs that method's results."""
    found: dict[str, Method] = {method.method: method}
    for result in results.values():
        name = result.method or method.method
        if name not in found:
            found[name] = registry.get_method(name)()
    return found


def inference_layers(
    model: nn.Module, method: Method, results: Mapping[str, LayerResult]
) -> dict[str, nn.Module]:
    """Layer name → its packed inference module (on the device of the layer it replaces)."""
    by_name = packers(method, results)
    layers = {}
    for name, result in results.items():
        linear = model.get_submodule(name)
        layer = by_name[result.method or method.method].inference_layer(result, linear)
        layers[name] = layer.to(linear.weight.device)
    return layers


def packed_model(
    model: nn.Module,
    method: Method,
    results: Mapping[str, LayerResult],
    conv1d_as_linear: bool = False,
) -> nn.Module:
    """A new model with packed inference layers in place of the quantized Linears.

    The untouched tensors are shared with ``model``, not copied, so this costs
    only the packed layers' memory. ``conv1d_as_linear``: ``model`` had its
    GPT-2 Conv1D layers turned into Linears, so the skeleton gets the same.
    """
    config_dict = model.config.to_dict()
    frame = skeleton(config_dict, type(model))
    if conv1d_as_linear:
        adapters.linearize_conv1d(frame)
    packed = inference_layers(model, method, results)
    for name, layer in packed.items():
        adapters.set_submodule(frame, name, layer)
    state = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in packed}
    frame.load_state_dict(state, strict=False, assign=True)
    return finish(frame, config_dict)


def layer_table(
    model: nn.Module, method: Method, results: Mapping[str, LayerResult]
) -> dict[str, dict[str, Any]]:
    """The per-layer rows a loader needs (method, shapes, bits, ...), from ``result.row``."""
    table = {}
    for name, result in results.items():
        module = model.get_submodule(name)
        out_features, in_features = module.weight.shape
        row = result.row(out_features, in_features, getattr(module, "bias", None) is not None)
        row["method"] = row["method"] or method.method
        table[name] = row
    return table
