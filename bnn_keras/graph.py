"""Rewriting a functional Keras model: the one place that edits a layer graph.

A rewrite works on the model's config (`model.get_config()`, a dict whose `"layers"` list holds
one entry per layer: `class_name`, `config`, `name` and the `inbound_nodes` that wire it):
edit entries, replace a layer (`replace_layer`), or put a new one after (`insert_after`) or in
front of (`insert_before`) a layer; then `rebuild` deserializes the config and copies the
weights over by layer name (`copy_weights`). Layer names are kept, which is what lets weights,
calibration and graph inspection find the same layers in the rebuilt model.

Works on tf-keras 2 configs (inbound nodes as `[layer_name, node_index, tensor_index, kwargs]`
lists). Sequential models keep their class; `functional` gives their functional view where a
rewrite needs the wiring. Subclassed models have no layer graph and are refused.
"""

import copy
from typing import Any, Callable, Collection, Dict, List, Optional

import tensorflow as tf

from bnn_keras.errors import BnnError

__all__ = [
    "NotFunctionalError",
    "consumers",
    "copy_weights",
    "functional",
    "inbound_layers",
    "insert_after",
    "insert_before",
    "layer_entry",
    "rebuild",
    "remove_layer",
    "replace_layer",
]

LayerEntry = Dict[str, Any]


class NotFunctionalError(BnnError, ValueError):
    """A model without a functional layer graph (a subclassed model) was given to a rewrite.

    Also a `ValueError`, which `bnn_keras.training.baselines.float_equivalent` raised for it
    before the rewrite plumbing moved here.
    """


def _require_graph(model: Any, purpose: str) -> None:
    if isinstance(model, tf.keras.Sequential) or (
        isinstance(model, tf.keras.Model) and getattr(model, "_is_graph_network", False)
    ):
        return
    raise NotFunctionalError(
        f"Model {getattr(model, 'name', model)!r} is not a functional Keras model "
        f"({type(model).__name__}), so {purpose} cannot rewrite its layers: build it with "
        "tf.keras.Model(inputs, outputs) or tf.keras.Sequential."
    )


def functional(model: tf.keras.Model, purpose: str) -> tf.keras.Model:
    """`model` itself when it is functional; the functional view of a Sequential model.

    The view is a `tf.keras.Model` over the same layer objects (no copy), whose config carries
    the wiring a Sequential config leaves out.

    Args:
        model: A functional or Sequential Keras model.
        purpose: What needs the graph, for the error message (e.g. "the training tricks").

    Raises:
        NotFunctionalError: a subclassed model, or a Sequential model without an input shape.
    """
    _require_graph(model, purpose)
    if not isinstance(model, tf.keras.Sequential):
        return model
    if not model.inputs:
        raise NotFunctionalError(
            f"Sequential model {model.name!r} has no input shape yet, so {purpose} cannot "
            "rewrite its layers: start it with tf.keras.Input(shape)."
        )
    return tf.keras.Model(model.inputs, model.outputs, name=model.name)


def _is_entry(value: Any) -> bool:
    """`[layer_name, node_index, tensor_index, kwargs]`: one tensor an inbound node reads."""
    return (isinstance(value, (list, tuple)) and len(value) >= 3 and isinstance(value[0], str)
            and isinstance(value[1], int))


def _map_entries(node: Any, fn: Callable[[list], list]) -> Any:
    """An inbound node with `fn` applied to each entry, its nesting kept (a layer called on a list
    has a list of entries; a TensorFlow-op layer, `tf.math.negative`, one bare entry)."""
    if _is_entry(node):
        return fn(list(node))
    if isinstance(node, dict):  # Keras 3-style nodes; tf-keras writes lists
        raise BnnError("Expected a tf-keras functional model config; got Keras 3 nodes.")
    return [_map_entries(value, fn) for value in node]


def consumers(config: Dict[str, Any]) -> Dict[str, List[str]]:
    """Layer name -> names of the layers that take its output, once per use (functional config)."""
    result: Dict[str, List[str]] = {entry["name"]: [] for entry in config["layers"]}
    for entry in config["layers"]:

        def collect(inbound: list) -> list:
            result[inbound[0]].append(entry["name"])
            return inbound

        for node in entry["inbound_nodes"]:
            _map_entries(node, collect)
    return result


def inbound_layers(layer: tf.keras.layers.Layer, *,
                   every_call: bool = False) -> List[tf.keras.layers.Layer]:
    """The layers feeding `layer` in the functional graph (none for an input).

    Args:
        layer: A layer of a functional model.
        every_call: Whether to list the layers feeding every call of a shared layer, not only
            its first call.
    """
    nodes = getattr(layer, "_inbound_nodes", [])
    return [parent for node in (nodes if every_call else nodes[:1])
            for parent in tf.nest.flatten(node.inbound_layers)]


def _index(config: Dict[str, Any], name: str) -> int:
    for i, entry in enumerate(config["layers"]):
        if entry["name"] == name:
            return i
    raise BnnError(f"Expected a layer named {name!r} in model {config.get('name')}.")


def layer_entry(config: Dict[str, Any], name: str) -> LayerEntry:
    """The entry of layer `name` in a functional `config` (the dict itself: edits stay).

    Raises:
        BnnError: `config` has no layer named `name`.
    """
    return config["layers"][_index(config, name)]


def _entry(layer: tf.keras.layers.Layer, inbound_nodes: List[Any]) -> LayerEntry:
    """The config entry of `layer`, wired by `inbound_nodes`."""
    entry = tf.keras.layers.serialize(layer)
    entry.pop("build_config", None)  # built again when the rebuilt model calls it
    entry["name"] = layer.name
    entry["inbound_nodes"] = inbound_nodes
    return entry


def _anchor(config: Dict[str, Any], name: str, new_layer: tf.keras.layers.Layer) -> int:
    """The index of layer `name`, where `new_layer` goes; refused when `new_layer`'s name is
    taken (Keras needs unique ones, and a clash would only fail later, inside `from_config`)."""
    if any(entry["name"] == new_layer.name for entry in config["layers"]):
        raise BnnError(f"Cannot add layer {new_layer.name!r} to model {config.get('name')}: it "
                       "already has a layer of that name.")
    return _index(config, name)


def _calls_of(name: str, calls: int) -> List[Any]:
    """Inbound nodes that call a layer once on each of the `calls` outputs of layer `name`."""
    return [[[name, i, 0, {}]] for i in range(calls)]


def replace_layer(config: Dict[str, Any], layer: tf.keras.layers.Layer) -> None:
    """Puts `layer` in place of the layer of the same name, wired like it (in place).

    Raises:
        BnnError: `config` has no layer named `layer.name`.
    """
    index = _index(config, layer.name)
    config["layers"][index] = _entry(
        layer, copy.deepcopy(config["layers"][index]["inbound_nodes"]))


def insert_after(config: Dict[str, Any], name: str, layer: tf.keras.layers.Layer) -> None:
    """Inserts `layer` on the output of layer `name` (in place).

    `layer` is called once per call of `name`, and every layer and model output that took
    `name`'s output takes `layer`'s instead. It follows `name` in the layer list.

    Raises:
        BnnError: no layer `name`, or a layer named `layer.name` already exists.
    """
    index = _anchor(config, name, layer)
    # An input layer has no inbound node but one output, node 0.
    calls = len(config["layers"][index]["inbound_nodes"]) or 1
    entry = _entry(layer, _calls_of(name, calls))

    def redirect(inbound: list) -> list:
        return [layer.name, *inbound[1:]] if inbound[0] == name else inbound

    for other in config["layers"]:
        other["inbound_nodes"] = [_map_entries(node, redirect) for node in other["inbound_nodes"]]
    config["output_layers"] = [redirect(list(output)) for output in config["output_layers"]]
    config["layers"].insert(index + 1, entry)


def insert_before(config: Dict[str, Any], name: str, layer: tf.keras.layers.Layer) -> None:
    """Inserts `layer` between layer `name` and its inputs (in place).

    `layer` takes `name`'s inputs (one call per call of `name`) and `name` takes `layer`'s
    output; other consumers of those inputs are unchanged. It precedes `name` in the layer list.

    Raises:
        BnnError: no layer `name`, or a layer named `layer.name` already exists.
    """
    index = _anchor(config, name, layer)
    target = config["layers"][index]
    entry = _entry(layer, copy.deepcopy(target["inbound_nodes"]))
    target["inbound_nodes"] = _calls_of(layer.name, len(target["inbound_nodes"]))
    config["layers"].insert(index, entry)


def remove_layer(config: Dict[str, Any], name: str) -> None:
    """Takes layer `name` out of the graph (in place): the layers and model outputs that read
    its output read its input instead.

    Raises:
        BnnError: no layer `name`, or one that is called more than once or on several inputs.
    """
    index = _index(config, name)
    nodes = config["layers"][index]["inbound_nodes"]
    if len(nodes) != 1 or not _is_entry(nodes[0][0]) or len(nodes[0]) != 1:
        raise BnnError(f"Cannot remove layer {name!r}: it is called more than once or on "
                       "several inputs.")
    source = list(nodes[0][0][:3])

    def redirect(inbound: list) -> list:
        return [*source, *inbound[3:]] if inbound[0] == name else inbound

    del config["layers"][index]
    for other in config["layers"]:
        other["inbound_nodes"] = [_map_entries(node, redirect) for node in other["inbound_nodes"]]
    config["output_layers"] = [redirect(list(output)) for output in config["output_layers"]]


def _copy_by_variable_name(source: tf.keras.layers.Layer, target: tf.keras.layers.Layer) -> None:
    """Copies each weight of `target` whose short name (kernel, gamma, ...) and shape `source`
    has."""
    by_name = {w.name.split("/")[-1]: w for w in source.weights}
    for weight in target.weights:
        match = by_name.get(weight.name.split("/")[-1])
        if match is not None and match.shape == weight.shape:
            weight.assign(match.numpy())


def copy_weights(
    source: tf.keras.Model,
    target: tf.keras.Model,
    *,
    fresh: Collection[str] = (),
    partial: bool = False,
) -> None:
    """Copies the weights of each layer of `target` from the layer of the same name in `source`.

    Layers that only one side has, layers without weights, and the layers named in `fresh` keep
    the weights they have.

    Args:
        source: The model to copy from.
        target: The model to copy into (modified).
        fresh: Names of `target` layers to leave as initialised (e.g. rewritten ones).
        partial: Where a layer's weights differ in number or shape (a quantizer that carried
            its own weights was dropped), copy those that match by short variable name and
            shape; without it, such a layer is an error.

    Raises:
        BnnError: without `partial`, a layer whose weights do not match its namesake's.
    """
    sources = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        origin = sources.get(layer.name)
        if layer.name in fresh or origin is None or not layer.weights or not origin.weights:
            continue
        if [w.shape for w in origin.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(origin.get_weights())
        elif partial:
            _copy_by_variable_name(origin, layer)
        else:
            raise BnnError(
                f"Cannot copy the weights of layer {layer.name!r}: shapes "
                f"{[tuple(w.shape) for w in origin.weights]} in model {source.name}, "
                f"{[tuple(w.shape) for w in layer.weights]} in the rebuilt one; name the layer "
                "in `fresh` to keep its new weights, or pass `partial=True`."
            )


def rebuild(
    model: tf.keras.Model,
    config: Optional[Dict[str, Any]] = None,
    *,
    edit: Optional[Callable[[LayerEntry], LayerEntry]] = None,
    copy_from: Optional[tf.keras.Model] = None,
    weights: bool = True,
    fresh: Collection[str] = (),
    partial: bool = False,
    purpose: str = "the rewrite",
) -> tf.keras.Model:
    """A new model from (an edited copy of) `model`'s config, with the weights copied by name.

    Args:
        model: A functional or Sequential model; the result has the same kind.
        config: The config to build, e.g. `model.get_config()` after `insert_after`; default
            `model.get_config()`.
        edit: Applied to each layer entry of the config (it may change the entry in place and
            return it, or return a new one).
        copy_from: The model whose weights to copy; default `model`.
        weights: False leaves every layer as initialised.
        fresh: `copy_weights`' layers to leave as initialised.
        partial: `copy_weights`' variable-name matching.
        purpose: What rewrites the model, for the error message.

    Returns:
        The rebuilt, uncompiled model. Layers deserialized without a dtype take the global
        dtype policy in force during the call.

    Raises:
        NotFunctionalError: a subclassed model.
        BnnError: weights that do not match (see `copy_weights`).
    """
    _require_graph(model, purpose)
    config = model.get_config() if config is None else config
    if edit is not None:
        config = {**config, "layers": [edit(entry) for entry in config["layers"]]}
    cls = tf.keras.Sequential if isinstance(model, tf.keras.Sequential) else tf.keras.Model
    rebuilt = cls.from_config(config)
    if weights:
        copy_weights(model if copy_from is None else copy_from, rebuilt, fresh=fresh,
                     partial=partial)
    return rebuilt
