"""Any float Keras CNN rewritten into a BNN: `bnn_keras.binarize(model)`.

The rewrite follows the rules the BNN literature converged on, so that a user's own float
model becomes a network that trains at 1 bit and that Larq Compute Engine runs with binary
ops:

- Conv2D and Dense layers (and larq's with real weights, as in a float copy of a BNN) become
  `QuantConv2D` (`bnn_keras.layers`': larq's, trained without copying its padded input) and
  larq's `QuantDense`, with binary inputs and weights (`ste_sign` by default; XNOR-Net,
  BinaryNet), their latent weights taken from the float kernels. The first conv or dense layer, which reads the image, and the last dense
  layer, which gives the class scores, stay float (Rastegari et al.'s XNOR-Net and every BNN
  since keep them real: binarizing them costs most accuracy for few operations).
- A BatchNormalization follows each binary layer: the one that already did, else a new one,
  which the bias is folded into (a binary layer has none: LCE's binary conv adds its output
  transform itself; Bethge et al. 2019, "Back to Simplicity").
- A ReLU (or ReLU6) whose output reaches a binary layer, directly or through pooling,
  flattening, padding or dropout, is removed, or replaced by a PReLU or ReActNet's RPReLU:
  `sign(relu(x))` is +1 everywhere, so a sign after a ReLU carries no information.
- With `shortcuts="auto"`, each binary conv whose input and output shapes match (and that
  is called once) gets a real-valued identity shortcut around it, added after its BatchNormalization (Liu et al.'s
  Bi-Real Net keeps such a real path around every binary conv).
- Layers LCE has no binary kernel for (depthwise, separable and transposed convolutions, 1-D
  and 3-D convolutions, grouped convolutions) stay float; the report names each, with why.
- An output layer's own softmax (`Dense(10, activation="softmax")`) becomes a layer of its
  own, so that distillation from the float model can read the logits before it.

The result is a functional, uncompiled model (a Sequential model's layers in functional form),
with the original layer names, and a `BinarizeReport`: layer by layer what changed, the
binarized fraction of the multiply-accumulates, and the LceBconv2d ops and flatbuffer size
`bnn_keras.model_stats` predicts. The weights of the binary layers are the float model's, but
their outputs are not the float layers': the BNN must be trained (best with the float model as
its teacher), and the new BatchNormalizations' statistics are learned then.

References:
    - XNOR-Net: https://arxiv.org/abs/1603.05279
    - Bi-Real Net: https://arxiv.org/abs/1808.00278
    - Back to Simplicity (BinaryDenseNet): https://arxiv.org/abs/1906.08637
    - ReActNet (RPReLU): https://arxiv.org/abs/2003.03488
"""

import copy
import dataclasses
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

import larq as lq
import numpy as np
import tensorflow as tf

from bnn_keras import graph, model_stats
from bnn_keras.errors import BnnError
from bnn_keras.layers import QuantConv2D, RPReLU

__all__ = ["BinarizeOptions", "BinarizeReport", "Binarized", "LayerChange", "binarize",
           "calibrate_batch_norm"]

RELU_CHOICES = ("remove", "prelu", "rprelu")
SHORTCUT_CHOICES = ("none", "auto")

# Layers whose output keeps the sign pattern of their input's (or picks some of its values):
# a ReLU before them still reaches the binary layer after them as non-negative values.
_TRANSPARENT = {"MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                "GlobalMaxPooling2D", "Flatten", "Dropout", "SpatialDropout2D", "Reshape",
                "ZeroPadding2D", "Cropping2D"}
# Float layers with a kernel that LCE has no binary op for, and why.
_KEPT_FLOAT = {
    "DepthwiseConv2D": "a depthwise convolution: LCE has no binary depthwise kernel",
    "SeparableConv2D": "a separable convolution: LCE has no binary depthwise kernel",
    "Conv2DTranspose": "a transposed convolution: LCE has no binary transposed kernel",
    "Conv1D": "a 1-D convolution: LCE binarizes 2-D convolutions only",
    "Conv3D": "a 3-D convolution: LCE binarizes 2-D convolutions only",
}
# Binary convs are bnn_keras' QuantConv2D: larq's, trained without copying the padded input.
_BINARIZABLE = {"Conv2D": QuantConv2D, "Dense": lq.layers.QuantDense,
                # larq's layers with real weights: a float copy of a BNN
                # (`bnn train MODEL --float`), whose input quantizer is None or the float
                # activation that stands in for it.
                "QuantConv2D": QuantConv2D, "QuantDense": lq.layers.QuantDense}


def _is_float_kernel(entry: Dict[str, Any]) -> bool:
    """A Conv2D or Dense layer, or a larq one that computes in float (no kernel quantizer)."""
    if entry["class_name"] in ("Conv2D", "Dense"):
        return True
    return (entry["class_name"] in _BINARIZABLE
            and entry["config"].get("kernel_quantizer") is None)


@dataclasses.dataclass(frozen=True)
class BinarizeOptions:
    """How `binarize` rewrites a model; recorded with a run so that it can be rebuilt.

    Attributes:
        keep_first: Keep the first Conv2D or Dense layer (the one reading the image) float.
        keep_last: Keep the last Dense layer (the classifier) float.
        relu: What becomes of a ReLU that feeds a binary layer: "remove", "prelu" (a PReLU
            with one slope per channel) or "rprelu" (ReActNet's RPReLU).
        shortcuts: "auto" adds a real-valued identity shortcut around each binary conv whose
            input and output shapes match; "none" adds none.
        input_quantizer: The binary layers' activation quantizer (a larq quantizer name).
        kernel_quantizer: Their weight quantizer; None keeps real weights (binary activations
            only: the first of ReActNet's two training steps), without a constraint.
        kernel_constraint: Their latent weight constraint.
    """

    keep_first: bool = True
    keep_last: bool = True
    relu: str = "remove"
    shortcuts: str = "none"
    input_quantizer: str = "ste_sign"
    kernel_quantizer: Optional[str] = "ste_sign"
    kernel_constraint: Optional[str] = "weight_clip"

    def __post_init__(self):
        if self.relu not in RELU_CHOICES:
            raise BnnError(f"Expected `relu` one of {', '.join(RELU_CHOICES)}, got "
                           f"{self.relu!r}.")
        if self.shortcuts not in SHORTCUT_CHOICES:
            raise BnnError(f"Expected `shortcuts` one of {', '.join(SHORTCUT_CHOICES)}, got "
                           f"{self.shortcuts!r}.")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "BinarizeOptions":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BnnError(f"Unknown binarize option(s) {', '.join(unknown)}; expected "
                           f"{', '.join(sorted(known))}.")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class LayerChange:
    """What `binarize` did to one layer: `action` is "binary", "float" (kept float, `reason`
    says why), "added" (a new BatchNormalization, activation or shortcut), "removed" or
    "replaced" (a ReLU before a binary layer)."""

    layer: str
    layer_type: str
    action: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class BinarizeReport:
    """What `binarize` made of a model.

    Attributes:
        options: The options it was given.
        changes: One entry per layer it changed, kept float or added, in layer order.
        binary_layers: Names of the binary layers.
        binary_mac_fraction: Fraction of the model's multiply-accumulates that are binary.
        lce_bconvs: LceBconv2d ops `model_stats` predicts for the converted model.
        binary_convs: The binary Conv2D layers (each should become one LceBconv2d).
        size_range: The predicted LCE flatbuffer size range in bytes
            (`model_stats.predicted_size_range`).
    """

    options: BinarizeOptions
    changes: Tuple[LayerChange, ...]
    binary_layers: Tuple[str, ...]
    binary_mac_fraction: float
    lce_bconvs: int
    binary_convs: int
    size_range: Tuple[int, int]

    def lines(self) -> List[str]:
        """The report for people, one line per change, then the totals."""
        lines = [f"{change.layer} ({change.layer_type}): {change.action}"
                 + (f", {change.reason}" if change.reason else "") for change in self.changes]
        low, high = self.size_range
        lines.append(
            f"{len(self.binary_layers)} binary layers ({self.binary_convs} convolutions), "
            f"{self.binary_mac_fraction:.1%} of the MACs binary; {self.lce_bconvs} LceBconv2d "
            f"ops expected; LCE flatbuffer {model_stats.format_bytes(low)} to "
            f"{model_stats.format_bytes(high)}")
        return lines


class Binarized(NamedTuple):
    """`binarize`'s result: the BNN and what was done to make it."""

    model: tf.keras.Model
    report: BinarizeReport


def binarize(model: tf.keras.Model, options: Optional[BinarizeOptions] = None, *,
             dtype: Optional[str] = None, **changes: Any) -> Binarized:
    """Rewrites a float functional or Sequential Keras model into a BNN (see the module
    docstring for the rules).

    Args:
        model: A float Keras model built from inputs and outputs, or a Sequential model with
            an input shape. It is not changed.
        options: How to rewrite it; default `BinarizeOptions()`.
        dtype: A Keras dtype policy name (e.g. "mixed_bfloat16") for every layer but the
            final softmax, which stays float32; None keeps each layer's own.
        **changes: Single options instead of, or over, `options` (e.g. `shortcuts="auto"`).

    Returns:
        `Binarized(model, report)`: an uncompiled functional model, and a `BinarizeReport`.

    Raises:
        graph.NotFunctionalError: a subclassed model (no layer graph to rewrite).
        BnnError: a model with no layer to binarize, or an unknown option.
    """
    options = dataclasses.replace(options or BinarizeOptions(), **changes)
    source = graph.functional(model, "binarize")
    config = source.get_config()
    entries = config["layers"]
    kernels = [entry for entry in entries
               if _is_float_kernel(entry) or entry["class_name"] in _KEPT_FLOAT]
    plan = _plan(kernels, options)
    binary = [name for name, (action, _) in plan.items() if action == "binary"]
    if not binary:
        raise BnnError(f"Model {model.name!r} has no Conv2D or Dense layer that binarize may "
                       "binarize (the first and last are kept float); nothing to do.")
    report: List[LayerChange] = []
    folds: Dict[str, Tuple[str, bool]] = {}  # binary layer -> (its BatchNormalization, new?)
    own_activations: Dict[str, str] = {}  # the activation moved after a binary layer's BN -> it
    for entry in kernels:
        action, reason = plan[entry["name"]]
        report.append(LayerChange(entry["name"], entry["class_name"], action, reason))
        if action == "binary":
            norm, new, activation = _binarize_layer(config, entry, options, report)
            folds[entry["name"]] = (norm, new)
            if activation is not None:
                own_activations[activation] = entry["name"]
    relus = _relus_before_binary(config, set(binary))
    # A removed layer is reported after the layer whose output it took.
    removed_after = {name: _inputs(config, name)[0] for name in relus
                     if _is_relu(graph.layer_entry(config, name))}
    added = {change.layer: change for change in report if change.action == "added"}
    # The rank of each ReLU's output, for a PReLU's one slope per channel.
    ranks = {layer.name: len(layer.output_shape) for layer in source.layers
             if not isinstance(layer.output_shape, list)}
    ranks.update({act: ranks[conv] for act, conv in own_activations.items()})
    for name in relus:
        change = _rewrite_relu(config, name, options.relu, ranks.get(name))
        if name in own_activations:
            # A binary layer's own ReLU, moved after its BatchNormalization above: say once
            # what became of it.
            report.remove(added[name])
            if change.action == "removed":
                continue
            kind = _class_of(config, name)  # the replacement's
            change = LayerChange(name, kind, "added",
                                 f"in place of {own_activations[name]}'s own ReLU, after its "
                                 f"BatchNormalization: {_RELU_WHY}")
        report.append(change)
    if options.shortcuts == "auto":
        for name in binary:
            layer = source.get_layer(name)
            if (_class_of(config, name) == "QuantConv2D" and len(layer.inbound_nodes) == 1
                    and tuple(layer.input_shape) == tuple(layer.output_shape)):
                report.append(_add_shortcut(config, name, folds[name][0]))
    for output in list(config["output_layers"]):
        change = _split_softmax(config, output[0])
        if change is not None:
            report.append(change)
    if dtype is not None:
        # The outputs keep their dtype: the classifier's softmax stays float32.
        outputs = {output[0] for output in config["output_layers"]}
        for entry in config["layers"]:
            if entry["class_name"] != "InputLayer" and entry["name"] not in outputs:
                entry["config"]["dtype"] = dtype
    new_layers = {change.layer for change in report if change.action == "added"}
    rebuilt = graph.rebuild(source, config, fresh=new_layers, partial=True,
                            purpose="binarize")
    _fold_biases(source, rebuilt, folds)
    return Binarized(rebuilt, _report(rebuilt, options, report, binary, removed_after))


def _class_of(config: Dict[str, Any], name: str) -> str:
    """The class name of layer `name` in `config`."""
    return graph.layer_entry(config, name)["class_name"]


def _plan(kernels: List[Dict[str, Any]], options: BinarizeOptions) -> Dict[str, Tuple[str, str]]:
    """{layer: (action, reason)} for every layer with a kernel, in layer order."""
    plan = {}
    binarizable = [entry for entry in kernels if entry["class_name"] in _BINARIZABLE]
    first = binarizable[0]["name"] if binarizable else None
    dense = [entry for entry in binarizable if entry["class_name"] in ("Dense", "QuantDense")]
    last = dense[-1]["name"] if dense else None
    for entry in kernels:
        name, kind = entry["name"], entry["class_name"]
        layer_config = entry["config"]
        if kind in _KEPT_FLOAT:
            plan[name] = ("float", _KEPT_FLOAT[kind])
        elif name == first and options.keep_first:
            plan[name] = ("float", "the first layer (it reads the image)")
        elif name == last and options.keep_last:
            plan[name] = ("float", "the last dense layer (the classifier)")
        elif kind in ("Conv2D", "QuantConv2D") and int(layer_config.get("groups", 1) or 1) > 1:
            plan[name] = ("float", "a grouped convolution: bnn binarizes ungrouped ones only")
        else:
            plan[name] = ("binary", "")
    return plan


def _binarize_layer(config: Dict[str, Any], entry: Dict[str, Any], options: BinarizeOptions,
                    report: List[LayerChange]) -> Tuple[str, bool, Optional[str]]:
    """Replaces a Conv2D or Dense entry by its larq layer; puts a BatchNormalization after it
    (unless one is its only consumer) and its own activation after that. Returns the name of
    its BatchNormalization, whether it is new, and the name of the activation layer added."""
    name = entry["name"]
    layer_config = copy.deepcopy(entry["config"])
    activation = layer_config.get("activation", "linear")
    layer_config.update(
        activation="linear", use_bias=False, input_quantizer=options.input_quantizer,
        kernel_quantizer=options.kernel_quantizer,
        kernel_constraint=options.kernel_constraint if options.kernel_quantizer else None,
        # L2 on latent binary weights pulls them to 0, where their signs flip at every step.
        kernel_regularizer=None, bias_regularizer=None, bias_constraint=None)
    if entry["class_name"] in ("Conv2D", "QuantConv2D") and layer_config.get("padding") == "same":
        layer_config["pad_values"] = 1.0  # a padded binary input stays binary: no correction op
    cls = _BINARIZABLE[entry["class_name"]]
    graph.replace_layer(config, cls.from_config(layer_config))
    following = graph.consumers(config)[name]
    if len(following) == 1 and _class_of(config, following[0]) == "BatchNormalization":
        norm, new = following[0], False
    else:
        norm, new = _unique(config, f"{name}_bn"), True
        graph.insert_after(config, name, tf.keras.layers.BatchNormalization(
            name=norm, dtype=layer_config.get("dtype")))
        report.append(LayerChange(norm, "BatchNormalization", "added",
                                  f"after the binary {name}"))
    if activation not in (None, "linear"):
        act = _unique(config, f"{name}_{_activation_name(activation)}")
        graph.insert_after(config, norm, tf.keras.layers.Activation(
            activation, name=act, dtype=layer_config.get("dtype")))
        report.append(LayerChange(act, "Activation", "added",
                                  f"{name}'s own activation, after its BatchNormalization"))
        return norm, new, act
    return norm, new, None


def _activation_name(activation: Any) -> str:
    if isinstance(activation, str):
        return activation
    if isinstance(activation, dict):
        return str(activation.get("config", {}).get("name", activation.get("class_name")))
    return "activation"


def _unique(config: Dict[str, Any], name: str) -> str:
    taken = {entry["name"] for entry in config["layers"]}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


_RELUS = ("relu", "relu6")
_RELU_WHY = "it feeds a binary layer's sign, which would be +1 everywhere after it"


def _is_relu(entry: Dict[str, Any]) -> bool:
    """A ReLU layer (`ReLU`, or `Activation("relu")`)."""
    if entry["class_name"] == "ReLU":
        return True
    return entry["class_name"] == "Activation" and entry["config"].get("activation") in _RELUS


def _has_fused_relu(entry: Dict[str, Any]) -> bool:
    """A layer that applies a ReLU itself (`Conv2D(..., activation="relu")`)."""
    return entry["class_name"] != "Activation" and entry["config"].get("activation") in _RELUS


def _relus_before_binary(config: Dict[str, Any], binary: Set[str]) -> List[str]:
    """The ReLU layers whose output reaches a binary layer's input quantizer, directly or
    through `_TRANSPARENT` layers."""
    following = graph.consumers(config)
    kinds = {entry["name"]: entry["class_name"] for entry in config["layers"]}

    def reaches_binary(name: str) -> bool:
        for consumer in following[name]:
            if consumer in binary:
                return True
            if kinds[consumer] in _TRANSPARENT and reaches_binary(consumer):
                return True
        return False

    return [entry["name"] for entry in config["layers"]
            if (_is_relu(entry) or _has_fused_relu(entry)) and reaches_binary(entry["name"])]


def _rewrite_relu(config: Dict[str, Any], name: str, how: str,
                  rank: Optional[int]) -> LayerChange:
    """Removes or replaces the ReLU layer `name`, or the ReLU that layer `name` applies itself
    (its activation becomes linear, and a replacement follows it). `rank` is the rank of its
    output: a PReLU gets one slope per channel (shared over the other axes but the batch)."""
    entry = graph.layer_entry(config, name)
    kind = entry["class_name"]
    dtype = entry["config"].get("dtype")
    why = _RELU_WHY
    fused = not _is_relu(entry)
    if fused:
        entry["config"]["activation"] = "linear"
    elif how == "remove":
        graph.remove_layer(config, name)
    if how == "remove":
        return LayerChange(name, kind, "relu removed" if fused else "removed", why)
    new_name = _unique(config, f"{name}_{how}") if fused else name
    if how == "prelu":
        # One slope per channel, 0.25 to start (PyTorch's default, which ReActNet keeps).
        replacement = tf.keras.layers.PReLU(
            alpha_initializer=tf.keras.initializers.Constant(0.25),
            shared_axes=list(range(1, rank - 1)) if rank and rank > 2 else None,
            name=new_name, dtype=dtype)
    else:
        replacement = RPReLU(name=new_name, dtype=dtype)
    if fused:
        graph.insert_after(config, name, replacement)
        return LayerChange(new_name, type(replacement).__name__, "added",
                           f"in place of {name}'s own ReLU: {why}")
    graph.replace_layer(config, replacement)
    return LayerChange(name, kind, "replaced", f"by {type(replacement).__name__}: {why}")


def _split_softmax(config: Dict[str, Any], name: str) -> Optional[LayerChange]:
    """Gives an output layer's own softmax (`Dense(10, activation="softmax")`) a layer of its
    own, the same function: distillation and the training losses read the logits before it."""
    entry = graph.layer_entry(config, name)
    if entry["class_name"] == "Activation" or entry["config"].get("activation") != "softmax":
        return None
    entry["config"]["activation"] = "linear"
    softmax = _unique(config, f"{name}_softmax")
    # float32 whatever the policy: a softmax over bfloat16 logits loses the small probabilities.
    graph.insert_after(config, name, tf.keras.layers.Activation("softmax", name=softmax,
                                                                dtype="float32"))
    return LayerChange(softmax, "Activation", "added",
                       f"{name}'s own softmax as a layer of its own (distillation reads the "
                       "logits before it)")


def _add_shortcut(config: Dict[str, Any], name: str, norm: str) -> LayerChange:
    """Adds `Add([norm's output, name's input])` after `norm`, the binary conv's
    BatchNormalization: a real-valued identity shortcut around the conv."""
    conv = graph.layer_entry(config, name)
    conv_input = copy.deepcopy(conv["inbound_nodes"][0][0])
    add = _unique(config, f"{name}_shortcut")
    graph.insert_after(config, norm, tf.keras.layers.Add(name=add,
                                                         dtype=conv["config"].get("dtype")))
    entry = graph.layer_entry(config, add)
    entry["inbound_nodes"] = [[[norm, 0, 0, {}], conv_input]]
    return LayerChange(add, "Add", "added", f"a real-valued identity shortcut around {name}")


def _fold_biases(source: tf.keras.Model, rebuilt: tf.keras.Model,
                 folds: Dict[str, Tuple[str, bool]]) -> None:
    """Moves each binarized layer's float bias into its BatchNormalization: a new one adds it as
    its offset (beta); an existing one subtracts it from its moving mean, which is exact."""
    for name, (norm_name, new) in folds.items():
        bias = getattr(source.get_layer(name), "bias", None)
        if bias is None:
            continue
        norm = rebuilt.get_layer(norm_name)
        b = bias.numpy()
        if new:
            norm.beta.assign(b.astype(norm.beta.dtype.as_numpy_dtype))
        else:
            norm.moving_mean.assign((norm.moving_mean.numpy() - b).astype(np.float32))


def _inputs(config: Dict[str, Any], name: str) -> List[str]:
    """The names of the layers whose outputs layer `name` reads (its first call)."""
    nodes = graph.layer_entry(config, name)["inbound_nodes"]
    return [entry[0] for entry in nodes[0]] if nodes else []


def _report(model: tf.keras.Model, options: BinarizeOptions, changes: List[LayerChange],
            binary: List[str], removed_after: Dict[str, str]) -> BinarizeReport:
    stats = model_stats.model_summary(model)
    # In the rebuilt model's layer order; a removed layer after the layer it read.
    order = {layer.name: float(i) for i, layer in enumerate(model.layers)}
    for name, before in removed_after.items():
        order[name] = order.get(before, -1.0) + 0.5
    changes = sorted(changes, key=lambda change: order.get(change.layer, -1.0))
    convs = sum(isinstance(model.get_layer(name), lq.layers.QuantConv2D) for name in binary)
    return BinarizeReport(
        options=options, changes=tuple(changes), binary_layers=tuple(binary),
        binary_mac_fraction=stats.binary_mac_fraction, lce_bconvs=stats.lce_bconvs,
        binary_convs=convs, size_range=model_stats.predicted_size_range(stats))


def calibrate_batch_norm(model: tf.keras.Model, images: Any) -> None:
    """Sets every BatchNormalization's moving mean and variance to its statistics on `images`
    (one forward pass in training mode, each layer normalized as training normalizes it).

    A binarized model's BatchNormalizations hold the float layers' statistics, or none (new
    ones start at mean 0, variance 1), while binary layers output values of another scale:
    with the default momentum (0.99), inference is off for hundreds of steps. Calibrating
    once on a batch of training images before training starts fixes that.

    Args:
        model: The model (changed in place).
        images: A batch of input images, preprocessed as training preprocesses them.
    """
    norms = [layer for layer in model.layers
             if isinstance(layer, tf.keras.layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    try:
        for norm in norms:
            norm.momentum = 0.0  # the moving statistics become this batch's
        model(images, training=True)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
