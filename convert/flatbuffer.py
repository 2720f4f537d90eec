"""Reading TFLite flatbuffers with TensorFlow's generated schema (never by hand-parsing bytes)."""

import collections
from typing import Counter, Dict, List

from bnn_keras.errors import BnnError
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.python import schema_util

# A TFLite flatbuffer carries this 4-byte file identifier at offset 4.
TFLITE_IDENTIFIER = b"TFL3"

_BUILTIN_NAMES: Dict[int, str] = {
    code: name for name, code in vars(schema_fb.BuiltinOperator).items() if not name.startswith("_")
}


class InvalidFlatbufferError(BnnError):
    """The bytes are not a readable TFLite flatbuffer."""


def read_model(data: bytes, *, source: str = "the input") -> "schema_fb.ModelT":
    """Parses and fully unpacks a TFLite flatbuffer.

    Unpacking every table (not just the root) is what surfaces truncation and most corruption
    as an exception here, before a native interpreter ever sees the bytes.

    Args:
        data: The flatbuffer bytes.
        source: How to name the input in error messages (usually the file path).

    Returns:
        The unpacked `ModelT` object tree.

    Raises:
        InvalidFlatbufferError: the bytes are not a TFLite model.
    """
    if len(data) < 8 or not schema_fb.Model.ModelBufferHasIdentifier(data, 0):
        raise InvalidFlatbufferError(
            f"{source} is not a TFLite flatbuffer (no 'TFL3' identifier); "
            "pass a .tflite file written by `bnn convert`."
        )
    try:
        model = schema_fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as exc:  # corrupt offsets raise IndexError, struct.error, UnicodeError...
        raise InvalidFlatbufferError(
            f"{source} is a damaged TFLite flatbuffer ({type(exc).__name__}); convert the model again."
        ) from None
    if not model.subgraphs or not model.operatorCodes:
        raise InvalidFlatbufferError(f"{source} is a TFLite flatbuffer with no operators.")
    return model


def readable_tensor_names(data: bytes, model_name: str) -> bytes:
    """Renames internal tensors after the Keras layer and op that produce them.

    The converter names each tensor after every TF op fused into it, prefixed with the model
    name (`binary_densenet28/block4_layer5_conv/QuantConv2D;binary_densenet28/...`), cut at 50
    characters. Keeping the first op's path without the model prefix
    (`block4_layer5_conv/QuantConv2D`) reads better in Netron and takes fewer bytes. Tensors
    with other names (model inputs/outputs, constants) keep theirs.

    Returns:
        The re-serialised flatbuffer.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = read_model(data)
    prefix = f"{model_name}/"
    for subgraph in model.subgraphs:
        keep = set(subgraph.inputs.tolist() if subgraph.inputs is not None else []) | set(
            subgraph.outputs.tolist() if subgraph.outputs is not None else [])
        taken = {bytes(t.name) for t in subgraph.tensors}
        for index, tensor in enumerate(subgraph.tensors):
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            if index in keep or not name.startswith(prefix):
                continue
            short = name.split(";")[0][len(prefix):].encode()
            if short and short not in taken:
                taken.add(short)
                tensor.name = short
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_name(opcode: "schema_fb.OperatorCodeT") -> str:
    """The op's name: the builtin enum name (`CONV_2D`) or a custom op's code (`LceBconv2d`)."""
    code = schema_util.get_builtin_code_from_operator_code(opcode)
    if code == schema_fb.BuiltinOperator.CUSTOM:
        custom = opcode.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def op_histogram(data: bytes, *, source: str = "the input") -> Counter[str]:
    """Counts each operator in all subgraphs of a flatbuffer, e.g. `{"LceBconv2d": 23, ...}`."""
    model = read_model(data, source=source)
    names = [op_name(opcode) for opcode in model.operatorCodes]
    counts: Counter[str] = collections.Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            if op.opcodeIndex >= len(names):
                raise InvalidFlatbufferError(f"{source} is a damaged TFLite flatbuffer.")
            counts[names[op.opcodeIndex]] += 1
    return counts


# LCE's ops; everything else in a converted model computes in float (or int8).
LCE_OPS = ("LceQuantize", "LceDequantize", "LceBconv2d", "LceBMaxPool2d")
_BINARY_CONSUMERS = ("LceQuantize", "LceBconv2d")


def missed_fusions(data: bytes, *, source: str = "the input") -> List[str]:
    """Float ops sitting directly between a binary convolution and the next binarization.

    LCE fuses BatchNorm, scaling and most activations that follow an LceBconv2d into the op's
    post-multiplier/bias, and a following sign into its binary output. An op that still sits
    between `LceBconv2d` and `LceQuantize`/`LceBconv2d`, with constants as its other inputs,
    was not fused: it costs a float pass over the feature map and a separate quantization.
    An op on two activations (a residual ADD of the conv output and its shortcut) is not counted.

    Returns:
        One description per such op, e.g. `"op 12 MUL (LceBconv2d -> MUL -> LceQuantize)"`.
    """
    model = read_model(data, source=source)
    names = [op_name(opcode) for opcode in model.operatorCodes]
    found = []
    for subgraph in model.subgraphs:
        ops = subgraph.operators or []
        producer = {}
        consumers: Dict[int, List[int]] = collections.defaultdict(list)
        for index, op in enumerate(ops):
            for tensor in op.outputs if op.outputs is not None else []:
                producer[int(tensor)] = index
            for tensor in op.inputs if op.inputs is not None else []:
                consumers[int(tensor)].append(index)
        graph_inputs = {int(t) for t in (subgraph.inputs if subgraph.inputs is not None else [])}
        for index, op in enumerate(ops):
            name = names[op.opcodeIndex]
            if name in LCE_OPS:
                continue
            inputs = [int(t) for t in (op.inputs if op.inputs is not None else []) if t >= 0]
            fed_by_bconv = any(
                t in producer and names[ops[producer[t]].opcodeIndex] == "LceBconv2d"
                for t in inputs
            )
            # An op on two activations (a residual ADD of the conv output and a shortcut, the
            # sum of several binary bases) is real work; only an op whose other inputs are
            # constants could have been fused.
            if sum(t in producer or t in graph_inputs for t in inputs) > 1:
                continue
            next_ops = [
                names[ops[c].opcodeIndex]
                for t in (op.outputs if op.outputs is not None else []) for c in consumers[int(t)]
            ]
            feeds_binary = [n for n in next_ops if n in _BINARY_CONSUMERS]
            if fed_by_bconv and feeds_binary:
                found.append(f"op {index} {name} (LceBconv2d -> {name} -> {feeds_binary[0]})")
    return found
