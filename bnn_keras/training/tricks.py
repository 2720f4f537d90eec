"""The BNN papers' training tricks as a rewrite of any functional Keras model.

`apply_tricks` takes a freshly built functional model, rewrites the entries of
`model.get_config()["layers"]` and rebuilds it (`bnn_keras.graph`), so one set of
options (`bnn train MODEL --input-quantizer approx_sign --regularizer bipolar --bases 2 ...`)
works for every registered model that can take them:

| option | what changes |
|---|---|
| `input_quantizer`, `kernel_quantizer` | the quantizers of every binary convolution |
| `regularizer="bipolar"` / `"bipolar-smooth"` | `kernel_regularizer` of every binary conv |
| `regularizer="bnn+-l1"` / `"bnn+-l2"` | `QuantConv2D` -> `ScaledQuantConv2D`, per-channel alpha |
| `bases=K` | binary `QuantConv2D` -> `MultiBaseQuantConv2D(bases=K)` |
| `activation="prelu"` | `ReLU` / `Activation("relu")` -> `PReLU` (one slope per channel) |
| `scale_output=True` | a `LearnableScale` named `output_scale` in front of the final softmax |

A *binary convolution* is a layer `bnn_keras.binary.is_binary_layer` accepts (a larq `QuantConv2D`,
or subclass, with 1-bit input and kernel quantizers) or a `MultiBaseQuantConv2D` with 1-bit
quantizers. Layer names are kept, so the graph stays readable and weights load by name;
layers whose config is unchanged keep their weights, rewritten layers are initialised afresh.
The regularizer option sets *the* regularizer of the binary kernels: it replaces a kernel
regularizer or BNN+ scale regularizer the model already had (the papers use one instead of the
other, never both).

References:
    - Bi-Real Net (ApproxSign, PReLU): https://arxiv.org/abs/1808.00278
    - BNN+ (SignSwish, scale regularizers): https://arxiv.org/abs/1812.11800
    - ABC-Net (multiple binary bases): https://arxiv.org/abs/1711.11294
    - Tang, Hua, Wang, "How to Train a Compact Binary Neural Network with High Accuracy?",
      AAAI 2017 (bipolar regularizer, PReLU, scale before the softmax, multiple bases).
"""

import copy
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf

from bnn_keras import graph
from bnn_keras import layers as bnn_layers
from bnn_keras import quantizers as bnn_quantizers
from bnn_keras import regularizers as bnn_regularizers
from bnn_keras.errors import BnnError
from bnn_keras.options import option
from bnn_keras.binary import is_binary_layer, quantizer_bits
from bnn_keras.training.precision import precision_policy

__all__ = ["TRICKS", "OUTPUT_SCALE_NAME", "Tricks", "apply_tricks", "binary_conv_names"]

_BINARIZERS = ("ste_sign", "approx_sign", "sign_swish")


@dataclasses.dataclass(frozen=True)
class Tricks:
    """The keyword arguments of `apply_tricks`, each with its help and choices (`bnn train`'s
    trick options are generated from these fields)."""

    input_quantizer: Optional[str] = option(
        choices=_BINARIZERS, help="Activation binarizer of every binary layer (trick).")
    kernel_quantizer: Optional[str] = option(
        choices=_BINARIZERS, help="Weight binarizer of every binary layer (trick).")
    regularizer: Optional[str] = option(
        choices=("bipolar", "bipolar-smooth", "bnn+-l1", "bnn+-l2"),
        help="bipolar: push latent weights to +/-1 (Tang et al.); bnn+-l1/l2: trainable "
             "per-channel scale with the BNN+ regularizer.")
    regularization_factor: float = option(1e-5, help="Strength of --regularizer.")
    bases: int = option(
        1, help="Binary bases per activation (residual binarization): K binary convs summed.")
    activation: Optional[str] = option(
        choices=("relu", "prelu"), help="prelu: replace the model's ReLUs with PReLU (trick).")
    scale_output: bool = option(
        False, show_default=False,
        help="Add a learnable scale before the softmax (trick for a binarized last layer).")

    def recorded(self) -> Dict[str, Any]:
        """The tricks that are on, as a run's config.json records them (defaults left out;
        the regularization factor only with a regularizer)."""
        result = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if getattr(self, f.name) != f.default}
        if self.regularizer:
            result["regularization_factor"] = self.regularization_factor
        else:
            result.pop("regularization_factor", None)
        return result

    @classmethod
    def from_recorded(cls, recorded: Dict[str, Any]) -> "Tricks":
        """The inverse of `recorded` (unknown keys are refused by the dataclass)."""
        return cls(**recorded)


# The keyword arguments of `apply_tricks`, in CLI order; a run's config.json records them.
TRICKS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Tricks))

OUTPUT_SCALE_NAME = "output_scale"

_ACTIVATIONS = (None, "relu", "prelu")

# QuantConv2D arguments MultiBaseQuantConv2D has no equivalent for, with the value that makes
# dropping them harmless.
_MULTI_BASE_UNSUPPORTED = {
    "groups": 1,
    "data_format": "channels_last",
    "activation": "linear",
    "bias_regularizer": None,
    "bias_constraint": None,
    "activity_regularizer": None,
}
_MULTI_BASE_ARGS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "pad_values",
    "dilation_rate",
    "use_bias",
    "input_quantizer",
    "kernel_quantizer",
    "kernel_initializer",
    "kernel_regularizer",
    "kernel_constraint",
    "name",
    "trainable",
    "dtype",
)


def binary_conv_names(model: tf.keras.Model) -> List[str]:
    """Names of the top-level layers `apply_tricks` treats as binary convolutions, in order."""
    return [layer.name for layer in model.layers if is_binary_layer(layer)]


def _is_relu(layer: tf.keras.layers.Layer) -> bool:
    """A plain ReLU: `Activation("relu")` or `ReLU()` without cap, threshold or leak."""
    if type(layer) is tf.keras.layers.Activation:
        return getattr(layer.activation, "__name__", None) == "relu"
    if type(layer) is tf.keras.layers.ReLU:
        config = layer.get_config()
        # ReLU6-style caps are part of the model's function (e.g. DoReFa's [0, 1] clip).
        return (
            config.get("max_value") is None
            and not config.get("negative_slope")
            and not config.get("threshold")
        )
    return False


def _is_softmax_layer(layer: tf.keras.layers.Layer) -> bool:
    return (
        type(layer) is tf.keras.layers.Activation
        and getattr(layer.activation, "__name__", None) == "softmax"
    )


def _has_softmax_activation(layer: tf.keras.layers.Layer) -> bool:
    """A Dense / conv layer with a built-in softmax activation."""
    return (
        not isinstance(layer, tf.keras.layers.Activation)
        and getattr(getattr(layer, "activation", None), "__name__", None) == "softmax"
    )


def _nested_models(model: tf.keras.Model) -> List[tf.keras.Model]:
    return [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]


def _build(cls: type, config: Dict[str, Any]) -> tf.keras.layers.Layer:
    """A `cls` layer built from `config` (which names it)."""
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as error:
        raise BnnError(
            f"Cannot rewrite layer {config['name']!r} into {cls.__name__}: {error}"
        ) from error


def _quantizer_config(identifier: Any, option: str, dtype: Any) -> Dict[str, Any]:
    """A fresh serialized 1-bit quantizer whose dtype is the one of the quantizer it replaces."""
    try:
        quantizer = bnn_quantizers.get(identifier)
    except ValueError as error:
        raise BnnError(f"`{option}` {identifier}: {error}") from error
    if quantizer_bits(quantizer) != 1:
        raise BnnError(
            f"`{option}` {identifier}: expected a 1-bit quantizer (ste_sign, approx_sign, "
            f"sign_swish), got one with precision {quantizer_bits(quantizer)}."
        )
    config = tf.keras.utils.serialize_keras_object(quantizer)
    config.pop("build_config", None)
    inner = config.get("config", {})
    # Without a name each layer's quantizer gets a unique one when it is deserialized.
    inner.pop("name", None)
    if dtype is not None:
        inner["dtype"] = copy.deepcopy(dtype)
    return config


def _old_quantizer_dtype(config: Dict[str, Any], key: str) -> Any:
    old = config.get(key)
    if isinstance(old, dict) and isinstance(old.get("config"), dict) and "dtype" in old["config"]:
        return old["config"]["dtype"]
    # A quantizer inside the layer computes at the layer's precision.
    return config.get("dtype")


def _resolve_regularizer(regularizer: Any, factor: float) -> Any:
    try:
        resolved = bnn_regularizers.get(regularizer, factor=factor)
    except ValueError as error:
        raise BnnError(f"`regularizer` {regularizer}: {error}") from error
    if not callable(resolved) and not isinstance(resolved, bnn_regularizers.BnnPlusRegularizer):
        raise BnnError(f"`regularizer` {regularizer}: expected a regularizer, got {resolved!r}.")
    return resolved


def _validate(
    bases: int,
    activation: Optional[str],
    regularization_factor: float,
) -> None:
    if not isinstance(bases, int) or isinstance(bases, bool) or bases < 1:
        raise BnnError(f"`bases`: expected an integer >= 1, got {bases!r}.")
    if activation not in _ACTIVATIONS:
        raise BnnError(f"`activation`: expected 'relu' or 'prelu', got {activation!r}.")
    try:
        factor_ok = float(regularization_factor) >= 0.0
    except (TypeError, ValueError):
        factor_ok = False
    if not factor_ok:
        raise BnnError(
            f"`regularization_factor`: expected a number >= 0, got {regularization_factor!r}."
        )


def _rewrite_binary_conv(
    entry: Dict[str, Any],
    layer: tf.keras.layers.Layer,
    *,
    input_quantizer: Any,
    kernel_quantizer: Any,
    regularizer: Any,
    regularizer_option: Any,
    bases: int,
    model_name: str,
) -> tf.keras.layers.Layer:
    config = copy.deepcopy(entry["config"])
    name = config["name"]
    if input_quantizer is not None:
        config["input_quantizer"] = _quantizer_config(
            input_quantizer, "input_quantizer", _old_quantizer_dtype(config, "input_quantizer")
        )
    if kernel_quantizer is not None:
        config["kernel_quantizer"] = _quantizer_config(
            kernel_quantizer, "kernel_quantizer", _old_quantizer_dtype(config, "kernel_quantizer")
        )

    bnn_plus = isinstance(regularizer, bnn_regularizers.BnnPlusRegularizer)
    if regularizer is not None and not bnn_plus:
        config["kernel_regularizer"] = tf.keras.utils.serialize_keras_object(regularizer)
        if isinstance(layer, bnn_layers.ScaledQuantConv2D):
            config["scale_regularizer"] = None

    if isinstance(layer, bnn_layers.MultiBaseQuantConv2D):
        if bnn_plus:
            raise BnnError(
                f"`regularizer` {regularizer_option}: layer {name!r} of model {model_name} has "
                f"{layer.bases} binary bases; the BNN+ scale needs a single-base convolution "
                "(use `regularizer` bipolar)."
            )
        if bases > 1:
            config["bases"] = bases
        return _build(bnn_layers.MultiBaseQuantConv2D, config)

    if bnn_plus:
        # BNN+ regularizes alpha against |w|: it replaces any kernel regularizer.
        config["kernel_regularizer"] = None
        if config.get("scale") is None:
            config["scale"] = "per_channel"
        config["scale_regularizer"] = tf.keras.utils.serialize_keras_object(regularizer)
        config["regularization_factor"] = regularizer.factor
        return _build(bnn_layers.ScaledQuantConv2D, config)

    if bases > 1:
        if isinstance(layer, bnn_layers.ScaledQuantConv2D) and layer.scale is not None:
            raise BnnError(
                f"`bases` {bases}: layer {name!r} of model {model_name} is a BNN+ scaled "
                "binary convolution; multiple bases do not carry a BNN+ scale alpha."
            )
        unsupported = {
            key: config.get(key)
            for key, default in _MULTI_BASE_UNSUPPORTED.items()
            if key in config and config.get(key) != default
        }
        if config.get("use_bias") and config.get("bias_initializer", {}).get("class_name") not in (
            None, "Zeros"
        ):
            unsupported["bias_initializer"] = config["bias_initializer"]
        if unsupported:
            raise BnnError(
                f"`bases` {bases}: layer {name!r} of model {model_name} uses "
                f"{unsupported}, which MultiBaseQuantConv2D does not support."
            )
        multi = {key: config[key] for key in _MULTI_BASE_ARGS if key in config}
        multi["bases"] = bases
        return _build(bnn_layers.MultiBaseQuantConv2D, multi)

    return _build(type(layer), config)


def _prelu(entry: Dict[str, Any], layer: tf.keras.layers.Layer) -> tf.keras.layers.PReLU:
    rank = len(layer.get_output_at(0).shape)
    # One slope per channel, shared over the spatial axes (Bi-Real Net, Tang et al.).
    shared_axes = list(range(1, rank - 1)) or None
    config = {
        **tf.keras.layers.PReLU(shared_axes=shared_axes).get_config(),
        "name": entry["config"]["name"],
        "trainable": entry["config"].get("trainable", True),
        "dtype": copy.deepcopy(entry["config"].get("dtype")),
    }
    return _build(tf.keras.layers.PReLU, config)


def _insert_output_scale(config: Dict[str, Any], model: tf.keras.Model) -> None:
    """Puts `LearnableScale(name="output_scale")` in front of the model's final softmax."""
    names = {layer.name for layer in model.layers}
    if OUTPUT_SCALE_NAME in names:
        raise BnnError(
            f"`scale_output`: model {model.name} already has a layer named {OUTPUT_SCALE_NAME!r}."
        )
    output_names = [item[0] for item in config["output_layers"]]
    softmax = [
        n for n in output_names
        if _is_softmax_layer(model.get_layer(n)) or _has_softmax_activation(model.get_layer(n))
    ]
    if len(softmax) != 1:
        raise BnnError(
            f"`scale_output`: expected one softmax output in model {model.name}, found "
            f"{len(softmax)} (outputs: {', '.join(output_names)}); the scale goes in front of "
            "the softmax."
        )
    softmax_name = softmax[0]
    softmax_layer = model.get_layer(softmax_name)
    entry = next(e for e in config["layers"] if e["name"] == softmax_name)

    if _is_softmax_layer(softmax_layer):
        producers = {node[0] for call in entry["inbound_nodes"] for node in call}
        for producer in producers:
            if isinstance(model.get_layer(producer), bnn_layers.LearnableScale):
                raise BnnError(
                    f"`scale_output`: model {model.name} already scales its logits "
                    f"(LearnableScale {producer!r} feeds the softmax {softmax_name!r})."
                )
        dtype = _producer_dtype(config, producers) or entry["config"].get("dtype")
        graph.insert_before(config, softmax_name, _build(
            bnn_layers.LearnableScale, {"name": OUTPUT_SCALE_NAME, "dtype": copy.deepcopy(dtype)}))
        return

    # A Dense/conv with a built-in softmax: split it into logits -> scale -> softmax, the new
    # softmax taking over the model output (kept in float32 as models/common.py does).
    entry["config"]["activation"] = "linear"
    new_softmax_name = f"{softmax_name}_softmax"
    if new_softmax_name in names:
        raise BnnError(
            f"`scale_output`: model {model.name} already has a layer named {new_softmax_name!r}."
        )
    graph.insert_after(config, softmax_name, _build(
        bnn_layers.LearnableScale,
        {"name": OUTPUT_SCALE_NAME, "dtype": copy.deepcopy(entry["config"].get("dtype"))}))
    graph.insert_after(config, OUTPUT_SCALE_NAME, _build(
        tf.keras.layers.Activation,
        {"name": new_softmax_name, "activation": "softmax", "dtype": "float32"}))


def _producer_dtype(config: Dict[str, Any], producers: set) -> Any:
    for entry in config["layers"]:
        if entry["name"] in producers:
            return entry["config"].get("dtype")
    return None


def apply_tricks(
    model: tf.keras.Model,
    *,
    input_quantizer: Optional[str] = None,
    kernel_quantizer: Optional[str] = None,
    regularizer: Optional[str] = None,
    regularization_factor: float = 1e-5,
    bases: int = 1,
    activation: Optional[str] = None,
    scale_output: bool = False,
) -> tf.keras.Model:
    """Rebuilds a functional model with the BNN papers' training tricks switched on.

    Meant for a freshly built, untrained model: rewritten layers get fresh initial weights
    (layers whose config is unchanged keep theirs). The rebuilt model is uncompiled.

    Args:
        model: A functional (or Sequential) `tf.keras.Model`.
        input_quantizer: Activation binarizer of every binary convolution: `"ste_sign"`,
            `"approx_sign"` (Bi-Real Net) or `"sign_swish"` (BNN+); anything
            `bnn_keras.quantizers.get` resolves to a 1-bit quantizer.
        kernel_quantizer: Weight binarizer of every binary convolution (same choices).
        regularizer: `"bipolar"` / `"bipolar-smooth"` (Tang et al.) as the kernel regularizer
            of every binary convolution, or `"bnn+-l1"` / `"bnn+-l2"`, which turns each binary
            `QuantConv2D` into a `ScaledQuantConv2D` with a per-channel alpha regularized
            towards |w| (BNN+). Replaces the binary kernels' existing regularizer.
        regularization_factor: lambda of the regularizer alias.
        bases: K > 1 turns each binary `QuantConv2D` into `MultiBaseQuantConv2D(bases=K)`
            (ABC-Net's residual binarization; K LceBconv2d after conversion), or sets K on an
            existing multi-base layer.
        activation: `"prelu"` replaces every plain ReLU (`Activation("relu")`, `ReLU()`; not
            capped ones) by a `PReLU` with one slope per channel; `None` or `"relu"` leaves the
            activations as built.
        scale_output: Insert `LearnableScale(name="output_scale")` in front of the final
            softmax (an `Activation("softmax")` output layer, or a layer with a softmax
            activation, which is split into logits -> scale -> `<name>_softmax`).

    Returns:
        The rebuilt model, or `model` itself when every option is at its default.

    Raises:
        BnnError: an option that cannot apply to this model (no binary convolution, no ReLU,
            no softmax, a subclassed model, bases > 1 with a BNN+ regularizer, ...) or an
            unknown option value; the message names the option and the model.

    References:
        - Bi-Real Net: https://arxiv.org/abs/1808.00278
        - BNN+: https://arxiv.org/abs/1812.11800
        - ABC-Net: https://arxiv.org/abs/1711.11294
        - Tang, Hua, Wang, "How to Train a Compact Binary Neural Network with High
          Accuracy?", AAAI 2017.
    """
    _validate(bases, activation, regularization_factor)
    source = graph.functional(model, purpose="the training tricks")
    prelu = activation == "prelu"
    if (
        input_quantizer is None and kernel_quantizer is None and regularizer is None
        and bases == 1 and not prelu and not scale_output
    ):
        return model

    resolved_regularizer = (
        None if regularizer is None else _resolve_regularizer(regularizer, regularization_factor)
    )
    if isinstance(resolved_regularizer, bnn_regularizers.BnnPlusRegularizer) and bases > 1:
        raise BnnError(
            f"`bases` {bases} cannot be combined with `regularizer` {regularizer}: the BNN+ "
            "scale alpha belongs to a single binary kernel; use `regularizer` bipolar with "
            "multiple bases."
        )

    name = model.name
    binary = {layer.name: layer for layer in source.layers if is_binary_layer(layer)}
    relus = {layer.name: layer for layer in source.layers if _is_relu(layer)} if prelu else {}
    for nested in _nested_models(source):
        if any(is_binary_layer(layer) for layer in nested.layers) or (
            prelu and any(_is_relu(layer) for layer in nested.layers)
        ):
            raise BnnError(
                f"Model {name} nests model {nested.name!r}, whose layers the training tricks "
                "cannot rewrite: build the model as one flat functional graph."
            )
    binary_options = [
        (f"`input_quantizer` {input_quantizer}", input_quantizer is not None),
        (f"`kernel_quantizer` {kernel_quantizer}", kernel_quantizer is not None),
        (f"`regularizer` {regularizer}", regularizer is not None),
        (f"`bases` {bases}", bases > 1),
    ]
    for flag_text, given in binary_options:
        if given and not binary:
            raise BnnError(
                f"{flag_text}: model {name} has no binary convolution (a QuantConv2D with 1-bit "
                "input and kernel quantizers) to rewrite."
            )
    if prelu and not relus:
        has_prelu = any(isinstance(layer, tf.keras.layers.PReLU) for layer in source.layers)
        raise BnnError(
            f"`activation` prelu: model {name} has no ReLU to replace"
            + (" (it already uses PReLU)." if has_prelu else ".")
        )

    config = source.get_config()
    changed = set()
    for entry in list(config["layers"]):
        layer_name = entry["config"]["name"]
        if layer_name in binary and (
            input_quantizer is not None or kernel_quantizer is not None
            or regularizer is not None or bases > 1
        ):
            graph.replace_layer(config, _rewrite_binary_conv(
                entry,
                binary[layer_name],
                input_quantizer=input_quantizer,
                kernel_quantizer=kernel_quantizer,
                regularizer=resolved_regularizer,
                regularizer_option=regularizer,
                bases=bases,
                model_name=name,
            ))
            changed.add(layer_name)
        elif layer_name in relus:
            graph.replace_layer(config, _prelu(entry, relus[layer_name]))
            changed.add(layer_name)
    if scale_output:
        _insert_output_scale(config, source)

    # Layers deserialized without a dtype entry would take the global policy: rebuild under
    # the policy the model was built with, whatever the caller's global policy is now.
    # Untouched layers keep their weights, so a seeded model's stay bit-identical.
    with precision_policy(source.dtype_policy):
        return graph.rebuild(source, config, fresh=changed, purpose="the training tricks")
