"""int8 for the float layers of a binary network, and int8 model input/output.

LCE keeps binary convolutions as `LceBconv2d` whatever the precision of the rest; the float parts
(stem and transition convolutions, BatchNorms that do not fold into a convolution, pooling, the
classifier) become int8 TFLite builtins only when every tensor between them carries a value range.
TFLite takes those ranges from `FakeQuantWithMinMaxVars` nodes (quantization-aware training), so
`prepare_int8` rebuilds a trained model with a `FakeQuant` layer after each tensor that needs one,
calibrates the ranges on representative data and optionally fine-tunes with them in place.
`convert_int8` then converts it with LCE, with float32 or int8 model I/O, and
`quantize_inputs`/`dequantize_outputs` map float data to and from an int8-I/O flatbuffer using the
scale/zero point stored in the flatbuffer itself.
"""

import copy
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import larq_compute_engine as lce
import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.model_stats import is_binary_conv
from convert.converter import IO_TYPES, TARGETS, ConversionError, as_float32
from convert.flatbuffer import read_model, readable_tensor_names
from convert.range_balance import balance_concat_ranges

__all__ = [
    "FakeQuant",
    "check_io_types",
    "FineTune",
    "IoQuantization",
    "convert_int8",
    "dequantize_outputs",
    "io_quantization",
    "prepare_int8",
    "quantize_inputs",
    "shared_range_groups",
    "centre_binarization_thresholds",
]

FAKE_QUANT_SUFFIX = "_fq"

# Layers TFLite folds into the convolution/dense/BN that feeds them: a fake-quant node between
# the two would keep them apart (an unfused MUL/ADD or activation pass).
_FOLDING_FOLLOWERS = (tf.keras.layers.BatchNormalization, tf.keras.layers.Activation,
                      tf.keras.layers.ReLU, tf.keras.layers.Rescaling)
_FOLDABLE_ACTIVATIONS = ("linear", "relu", "relu6")
# Layers whose int8 kernels use their input's scale and zero point for their output: the range
# propagates through them, so a fake-quant node after them would only add a requantization.
_SAME_SCALE = (
    tf.keras.layers.MaxPooling2D, tf.keras.layers.Reshape, tf.keras.layers.Flatten,
    tf.keras.layers.Dropout, tf.keras.layers.ZeroPadding2D, tf.keras.layers.SpatialDropout2D,
)


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class FakeQuant(tf.keras.layers.Layer):
    """8-bit fake quantization between calibrated bounds (`fake_quant_with_min_max_vars`).

    In the forward pass values are clipped to [min, max] (nudged so that 0 is exact) and rounded
    to one of 256 levels; gradients pass straight through inside the range. The bounds are
    non-trainable variables set by `prepare_int8`'s calibration, and they are what LCE's converter
    reads as the tensor's int8 scale and zero point.

    Args:
        **kwargs: Keras layer arguments (`name`, ...).
    """

    def build(self, input_shape: tf.TensorShape) -> None:
        self.min_value = self.add_weight(
            name="min", shape=(), initializer=tf.keras.initializers.Constant(-6.0), trainable=False
        )
        self.max_value = self.add_weight(
            name="max", shape=(), initializer=tf.keras.initializers.Constant(6.0), trainable=False
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, self.min_value, self.max_value, num_bits=8, narrow_range=False
        )

    @property
    def step(self) -> float:
        """The int8 scale: one of the 255 steps between the bounds (nudging keeps it)."""
        return (float(self.max_value) - float(self.min_value)) / 255.0

    def set_range(self, low: float, high: float) -> None:
        """Sets the bounds, widened to contain 0 (int8 needs an exact zero) and never empty."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        if high - low < 1e-6:
            high = low + 1e-6
        self.min_value.assign(low)
        self.max_value.assign(high)


@dataclasses.dataclass
class FineTune:
    """Quantization-aware fine-tuning with the fake-quant nodes in place.

    Attributes:
        data: `(x, y)` arrays with integer or one-hot labels, or a `tf.data.Dataset` of batched
            `(x, y)` pairs.
        epochs: Passes over `data`.
        learning_rate: Adam's learning rate; small, since the weights are already trained.
        batch_size: Batch size for array data.
    """

    data: Union[Tuple[np.ndarray, np.ndarray], tf.data.Dataset]
    epochs: int = 1
    learning_rate: float = 1e-4
    batch_size: int = 32

    def validate(self) -> None:
        if self.epochs < 1:
            raise BnnError(f"Expected fine-tune epochs >= 1, got {self.epochs}.")
        if not self.learning_rate > 0:
            raise BnnError(f"Expected a fine-tune learning rate > 0, got {self.learning_rate}.")
        if self.batch_size < 1:
            raise BnnError(f"Expected a fine-tune batch size >= 1, got {self.batch_size}.")


def _folds(layer: tf.keras.layers.Layer, follower: tf.keras.layers.Layer) -> bool:
    """Whether TFLite/LCE fuses `follower` into `layer` (conv+BN, conv+ReLU, BN+ReLU)."""
    if not isinstance(follower, _FOLDING_FOLLOWERS):
        return False
    if isinstance(follower, tf.keras.layers.Activation):
        name = tf.keras.activations.serialize(follower.activation)
        if name not in _FOLDABLE_ACTIVATIONS:
            return False
    if isinstance(follower, tf.keras.layers.Rescaling):
        # `balance_concat_ranges`' constant scale: a MUL that LCE folds into the convolution.
        return isinstance(layer, tf.keras.layers.Conv2D)
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        return not isinstance(follower, tf.keras.layers.BatchNormalization)
    return isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense,
                              tf.keras.layers.DepthwiseConv2D))


def _consumers(config: Dict[str, Any]) -> Dict[str, List[str]]:
    """Layer name -> names of the layers that take its output (functional config)."""
    consumers: Dict[str, List[str]] = {layer["name"]: [] for layer in config["layers"]}
    for layer in config["layers"]:
        for node in layer["inbound_nodes"]:
            for inbound in _node_inputs(node):
                consumers[inbound[0]].append(layer["name"])
    return consumers


def _node_inputs(node: Any) -> List[list]:
    """The `[layer_name, node_index, tensor_index, kwargs]` entries of one inbound node."""
    if isinstance(node, dict):  # Keras 3-style nodes; tf-keras writes lists
        raise BnnError("Expected a tf-keras functional model config; got Keras 3 nodes.")
    return list(node)


def fake_quant_points(model: tf.keras.Model) -> List[str]:
    """Names of the layers whose output gets a fake-quant node.

    Every model input, and every layer output except where TFLite fuses the next layer into
    this one (conv -> BN -> ReLU keep one range, after the chain), where the next op reuses its
    input's scale (max pool, reshape, dropout), or where the model ends in a softmax (TFLite
    fixes its int8 output range to [0, 1) itself).
    """
    by_name = {layer.name: layer for layer in model.layers}
    consumers = _consumers(model.get_config())
    points = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.InputLayer):
            points.append(layer.name)
            continue
        followers = [by_name[name] for name in consumers[layer.name]]
        if isinstance(layer, _SAME_SCALE):
            continue
        if isinstance(layer, tf.keras.layers.Activation) and (
            tf.keras.activations.serialize(layer.activation) == "softmax"
        ):
            continue
        if len(followers) == 1 and _folds(layer, followers[0]):
            continue
        points.append(layer.name)
    return points


def _with_fake_quant(config: Dict[str, Any], points: Sequence[str]) -> Dict[str, Any]:
    """A functional model config with a FakeQuant layer on the output of each of `points`."""
    config = copy.deepcopy(config)
    names = {layer["name"] for layer in config["layers"]}
    renamed: Dict[str, str] = {}
    for point in points:
        fq_name = point + FAKE_QUANT_SUFFIX
        while fq_name in names:
            fq_name += "_"
        names.add(fq_name)
        renamed[point] = fq_name
    shared = [layer["name"] for layer in config["layers"]
              if layer["name"] in renamed and len(layer["inbound_nodes"]) > 1]
    if shared:
        raise BnnError(f"Expected each layer called once, but {', '.join(shared)} is shared; "
                       "int8 preparation handles plain functional models only.")

    def redirect(entry: list) -> list:
        if entry[0] in renamed:
            return [renamed[entry[0]], 0, entry[2], *entry[3:]]
        return entry

    layers = []
    for layer in config["layers"]:
        layer = dict(layer)
        layer["inbound_nodes"] = [
            [redirect(list(entry)) for entry in _node_inputs(node)]
            for node in layer["inbound_nodes"]
        ]
        layers.append(layer)
        if layer["name"] in renamed:
            layers.append({
                "class_name": "bnn_keras>FakeQuant",
                "config": {"name": renamed[layer["name"]], "trainable": True, "dtype": "float32"},
                "name": renamed[layer["name"]],
                "inbound_nodes": [[[layer["name"], 0, 0, {}]]],
            })
    config["layers"] = layers
    config["output_layers"] = [redirect(list(entry)) for entry in config["output_layers"]]
    return config


def _batches(x: np.ndarray, batch_size: int = 64):
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def _inbound_layers(layer: tf.keras.layers.Layer) -> List[tf.keras.layers.Layer]:
    inbound = layer.inbound_nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _range_source(layer: tf.keras.layers.Layer) -> Optional["FakeQuant"]:
    """The FakeQuant whose range a tensor carries: itself, or the last one before same-scale ops."""
    while not isinstance(layer, FakeQuant):
        if not isinstance(layer, _SAME_SCALE):
            return None
        layer = _inbound_layers(layer)[0]
    return layer


def shared_range_groups(model: tf.keras.Model) -> List[List[str]]:
    """FakeQuant layers that must share one range: the inputs and output of each concatenation.

    TFLite's int8 CONCATENATION requires the same scale and zero point on all operands and the
    result (the converter fails otherwise), so in a DenseNet all concatenations of a dense block
    and the binary convolutions feeding them end up on one range.

    Returns:
        Groups of FakeQuant layer names, each with more than one member.
    """
    parent: Dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.Concatenate):
            continue
        members = [_range_source(inbound) for inbound in _inbound_layers(layer)]
        members += [consumer for consumer in (node.outbound_layer for node in layer.outbound_nodes)
                    if isinstance(consumer, FakeQuant)]
        names = [member.name for member in members if member is not None]
        for name in names[1:]:
            parent[find(name)] = find(names[0])
    groups: Dict[str, List[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return [sorted(group) for group in groups.values() if len(group) > 1]


def _min_max(model: tf.keras.Model, tensors: Sequence[tf.Tensor],
             representative_x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    probe = tf.keras.Model(model.inputs, list(tensors))
    lows = np.full(len(tensors), np.inf)
    highs = np.full(len(tensors), -np.inf)
    for batch in _batches(np.asarray(representative_x, np.float32)):
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for i, value in enumerate(outputs):
            lows[i] = min(lows[i], float(tf.reduce_min(value)))
            highs[i] = max(highs[i], float(tf.reduce_max(value)))
    return lows, highs


def _set_ranges(prepared: tf.keras.Model, lows: np.ndarray, highs: np.ndarray) -> None:
    fake_quants = [layer for layer in prepared.layers if isinstance(layer, FakeQuant)]
    index = {layer.name: i for i, layer in enumerate(fake_quants)}
    lows, highs = lows.copy(), highs.copy()
    for group in shared_range_groups(prepared):
        members = [index[name] for name in group]
        lows[members], highs[members] = lows[members].min(), highs[members].max()
    for layer, low, high in zip(fake_quants, lows, highs):
        layer.set_range(low, high)


def _calibrate_from(original: tf.keras.Model, prepared: tf.keras.Model,
                    representative_x: np.ndarray) -> None:
    """Sets each FakeQuant range to the min/max of the float tensor it follows in `original`.

    The float twin is measured rather than the prepared model itself: there each tensor depends
    on the ranges of the fake-quant nodes upstream, which this very pass changes. Ranges that
    must be equal (`shared_range_groups`) become the union of their members' ranges.
    """
    fake_quants = [layer for layer in prepared.layers if isinstance(layer, FakeQuant)]
    tensors = [original.get_layer(_inbound_layers(layer)[0].name).output for layer in fake_quants]
    _set_ranges(prepared, *_min_max(original, tensors, representative_x))


def _fine_tune(model: tf.keras.Model, fine_tune: FineTune) -> None:
    fine_tune.validate()
    data = fine_tune.data
    if isinstance(data, tf.data.Dataset):
        y_probe = next(iter(data))[1]
        dataset = data
    else:
        x, y = data
        y_probe = np.asarray(y)
        dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), y_probe)).shuffle(
            len(y_probe), seed=0).batch(fine_tune.batch_size)
    one_hot = len(np.shape(y_probe)) == 2 and np.shape(y_probe)[-1] > 1
    # Our models end in softmax; the loss takes probabilities.
    loss = (tf.keras.losses.CategoricalCrossentropy() if one_hot
            else tf.keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=tf.keras.optimizers.Adam(fine_tune.learning_rate), loss=loss,
                  metrics=["accuracy"])
    model.fit(dataset, epochs=fine_tune.epochs, verbose=0)


def prepare_int8(
    model: tf.keras.Model,
    representative_x: np.ndarray,
    *,
    fine_tune: Optional[FineTune] = None,
) -> tf.keras.Model:
    """A copy of a trained larq model with calibrated fake-quant nodes for int8 conversion.

    Binary convolutions are untouched (LCE turns them into `LceBconv2d`); the tensors around
    the float layers get `FakeQuant` nodes (see `fake_quant_points`), so LCE's converter emits
    int8 CONV_2D, FULLY_CONNECTED, MEAN, ... and int8 inputs/outputs for the binary ops. The
    original model is not modified.

    Args:
        model: A trained functional or Sequential Keras model (mixed precision is rebuilt in
            float32 first).
        representative_x: Preprocessed inputs (N, H, W, C) like the deployment data; a few
            hundred real images calibrate well, random noise does not.
        fine_tune: Quantization-aware fine-tuning after calibration (ranges fixed meanwhile);
            the ranges are calibrated again afterwards, since the weights (and so the
            activations) moved.

    Returns:
        The prepared, uncompiled (or fine-tune-compiled) Keras model, weights copied by layer name.

    Raises:
        BnnError: no representative data, a shape mismatch, or a model with shared layers.

    References:
        - [Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
          Inference](https://arxiv.org/abs/1712.05877)
    """
    representative_x = np.asarray(representative_x, np.float32)
    expected = tuple(model.input_shape[1:])
    if representative_x.ndim != len(expected) + 1 or representative_x.shape[1:] != expected:
        raise BnnError(f"Expected representative_x of shape (N, {', '.join(map(str, expected))}), "
                       f"got {representative_x.shape}.")
    if len(representative_x) == 0:
        raise BnnError("Expected at least one representative input.")
    model = as_float32(model)
    # Sequential models are functional graphs underneath; this gives their functional config.
    functional = tf.keras.Model(model.inputs, model.outputs, name=model.name)
    # Concatenations share one int8 scale across their inputs: bring binary-conv outputs to
    # the range of the float features they are concatenated with (exact in float).
    functional, _ = balance_concat_ranges(functional, representative_x)
    config = _with_fake_quant(functional.get_config(), fake_quant_points(functional))
    prepared = tf.keras.Model.from_config(config)
    for layer in functional.layers:
        if layer.weights:
            prepared.get_layer(layer.name).set_weights(layer.get_weights())
    _calibrate_from(functional, prepared, representative_x)
    if fine_tune is not None:
        _fine_tune(prepared, fine_tune)
        twin = tf.keras.Model.from_config(functional.get_config())
        for layer in twin.layers:
            if layer.weights:
                layer.set_weights(prepared.get_layer(layer.name).get_weights())
        _calibrate_from(twin, prepared, representative_x)
    centre_binarization_thresholds(prepared)
    return prepared


def centre_binarization_thresholds(prepared: tf.keras.Model) -> List[str]:
    """Moves int8's binarization threshold back to 0 where a BatchNorm feeds binary convolutions.

    A binary convolution binarizes its int8 input by comparing it with the zero point, so every
    value in (-scale/2, 0) that rounds to the zero point becomes +1 where the float model has
    -1: in effect the threshold of the sign moves from 0 to -scale/2. Measured on a small
    digits model: 2% of the stem's activations flipped, and int8 accuracy fell from 91.1% to
    83.6%. Subtracting scale/2 from the BatchNorm's offset before the fake-quant node makes the
    rounded value reach the zero point exactly when the float value is >= 0, so the int8 signs
    are the float signs (91.4%, top-1 agreement with float 88% -> 97%).

    Only where the shift changes nothing else: the FakeQuant's every consumer is a binary
    convolution and its producer a BatchNorm with an offset (`center=True`). A tensor that
    also feeds a float path (a ResNet's shortcut) keeps its values and the -scale/2 threshold.

    Args:
        prepared: A model from `prepare_int8` with calibrated ranges; modified in place.

    Returns:
        Names of the BatchNorm layers whose offset was shifted.
    """
    shifted = []
    for fake_quant in prepared.layers:
        if not isinstance(fake_quant, FakeQuant):
            continue
        producer = _inbound_layers(fake_quant)[0]
        consumers = [node.outbound_layer for node in fake_quant.outbound_nodes]
        if not (isinstance(producer, tf.keras.layers.BatchNormalization) and producer.center
                and consumers and all(is_binary_conv(layer) for layer in consumers)):
            continue
        producer.beta.assign_sub(tf.fill(tf.shape(producer.beta), fake_quant.step / 2.0))
        shifted.append(producer.name)
    return shifted


def _io_types(flatbuffer: bytes) -> Tuple[int, int]:
    model = read_model(flatbuffer)
    subgraph = model.subgraphs[0]
    return (subgraph.tensors[subgraph.inputs[0]].type, subgraph.tensors[subgraph.outputs[0]].type)


def convert_int8(
    model: tf.keras.Model,
    representative_x: Optional[np.ndarray] = None,
    *,
    target: str = "arm64",
    int8_io: bool = False,
    fine_tune: Optional[FineTune] = None,
) -> bytes:
    """Converts a model to a flatbuffer whose float layers run in int8.

    Args:
        model: A trained model; it is prepared with `prepare_int8` unless it already contains
            `FakeQuant` layers (then `representative_x` may be None).
        representative_x: Calibration inputs for `prepare_int8`.
        target: "arm64", "arm" or "xcore".
        int8_io: int8 model input and output (scale/zero point in the flatbuffer; see
            `quantize_inputs`) instead of float32 ones.
        fine_tune: Passed to `prepare_int8`.

    Returns:
        The flatbuffer bytes, internal tensors named after their Keras layers.

    Raises:
        BnnError: bad options or inputs, or an int8-I/O request that LCE did not honour.
        ConversionError: LCE failed to convert the model.
    """
    if target not in TARGETS:
        raise BnnError(f"Expected target one of {', '.join(TARGETS)}, got {target!r}.")
    if any(isinstance(layer, FakeQuant) for layer in model.layers):
        if fine_tune is not None:
            raise BnnError("Expected fine_tune only for a model without FakeQuant layers; "
                           "pass it to prepare_int8 instead.")
    else:
        if representative_x is None:
            raise BnnError("Expected representative_x to calibrate the int8 ranges of a model "
                           "without FakeQuant layers.")
        model = prepare_int8(model, representative_x, fine_tune=fine_tune)
    io_type = IO_TYPES["int8" if int8_io else "float32"]
    try:
        flatbuffer = lce.convert_keras_model(
            model, target=TARGETS[target], inference_input_type=io_type,
            inference_output_type=io_type,
        )
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConversionError(f"LCE could not convert the model: {first_line}") from exc
    check_io_types(flatbuffer, "int8" if int8_io else "float32")
    return readable_tensor_names(flatbuffer, model.name)


def check_io_types(flatbuffer: bytes, expected: str) -> None:
    """Raises if the flatbuffer's first input/output are not of the `expected` IO type.

    LCE converts a model without quantization ranges (no fake-quant nodes, no
    `experimental_default_int8_range`) to float32 I/O even when int8 I/O is asked for, with only
    a "Saved-model conversion failed" warning; this turns that into an error.

    Raises:
        BnnError: the types differ.
    """
    from tensorflow.lite.python import schema_py_generated as schema_fb

    names = {schema_fb.TensorType.FLOAT32: "float32", schema_fb.TensorType.INT8: "int8"}
    got = tuple(names.get(t, f"type {t}") for t in _io_types(flatbuffer))
    if got != (expected, expected):
        raise BnnError(
            f"Expected {expected} model input and output, but LCE produced {got[0]} input and "
            f"{got[1]} output. int8 I/O needs quantization ranges at the model input and output: "
            "convert with convert.quantize.convert_int8 (fake-quant nodes), not a float model."
        )


@dataclasses.dataclass(frozen=True)
class IoQuantization:
    """Affine int8 parameters of a model input or output: real = scale * (q - zero_point).

    `scale` is None for a float tensor (no conversion needed).
    """

    dtype: str
    scale: Optional[float]
    zero_point: int


def io_quantization(flatbuffer: bytes) -> Tuple[IoQuantization, IoQuantization]:
    """(input, output) quantization of the main subgraph's first input and output tensors."""
    from tensorflow.lite.python import schema_py_generated as schema_fb

    model = read_model(flatbuffer)
    subgraph = model.subgraphs[0]
    params = []
    for index in (subgraph.inputs[0], subgraph.outputs[0]):
        tensor = subgraph.tensors[index]
        if tensor.type == schema_fb.TensorType.FLOAT32:
            params.append(IoQuantization("float32", None, 0))
            continue
        if tensor.type != schema_fb.TensorType.INT8:
            raise BnnError(f"Expected a float32 or int8 model input/output, got tensor type "
                           f"{tensor.type}.")
        quant = tensor.quantization
        if quant is None or quant.scale is None or len(quant.scale) != 1:
            raise BnnError("The int8 model input/output has no per-tensor scale; it cannot be "
                           "fed float data.")
        zero_point = int(quant.zeroPoint[0]) if quant.zeroPoint is not None else 0
        params.append(IoQuantization("int8", float(quant.scale[0]), zero_point))
    return params[0], params[1]


def quantize_inputs(x: np.ndarray, flatbuffer: bytes) -> np.ndarray:
    """Float inputs -> what the flatbuffer's input takes (int8 with its scale/zero point).

    Float-input flatbuffers get `x` back as float32, so callers need not branch.
    """
    params, _ = io_quantization(flatbuffer)
    x = np.asarray(x, np.float32)
    if params.scale is None:
        return x
    q = np.round(x / params.scale) + params.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_outputs(y: np.ndarray, flatbuffer: bytes) -> np.ndarray:
    """Flatbuffer outputs -> float32 (int8 outputs mapped back through their scale/zero point)."""
    _, params = io_quantization(flatbuffer)
    if params.scale is None:
        return np.asarray(y, np.float32)
    return ((np.asarray(y).astype(np.float32) - params.zero_point) * params.scale).astype(
        np.float32)
