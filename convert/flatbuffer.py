"""A TFLite flatbuffer, parsed once, with everything bnn reads from or writes into it.

The bytes are read with TensorFlow's generated schema (never by hand-parsing). Unpacking the whole
object tree costs about 30 ms for the 1.96 MB demo model (150 ms the first time in a process), and
commands used to repeat it 7 to 16 times, so a `Flatbuffer` keeps the bytes and
their tree together and is passed along: its operator histogram, I/O quantization, input spec,
bnn metadata and content-hash check all read that one tree. Rewriting (readable tensor names,
embedding metadata) returns a new `Flatbuffer` built from the rewritten tree, without parsing the
serialized bytes again, and leaves the original unchanged.

The bnn metadata (`bnn_run`) stores the run's preprocessing inside the file: TFLite flatbuffers
carry named metadata buffers (the schema's `Model.metadata`) that the TFLite runtime ignores
when it does not know their name, so a .tflite on its own is enough for `bnn evaluate` and
`bnn predict` to feed it exactly what training fed Keras. The metadata also carries a SHA-256 of
the whole file (`content_sha256`), so that a bit flipped on disk or in a copy, which TFLite's
schema cannot notice in a weight buffer, is reported instead of silently changing the model's
answers. The digest is computed over the file with the digest itself replaced by a fixed
placeholder of the same length, so it can be written in place without moving any offset.
"""

import collections
import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Counter, Dict, List, Optional, Tuple, Union

import numpy as np

from bnn_keras.errors import BnnError
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.python import schema_util

# A TFLite flatbuffer carries this 4-byte file identifier at offset 4.
TFLITE_IDENTIFIER = b"TFL3"

# The name `bnn convert` gives a flatbuffer whose outputs disagreed with its Keras model's
# (`convert.workflow`): FILE.tflite.unverified. Readers warn about such a file.
UNVERIFIED_SUFFIX = ".unverified"
METADATA_NAME = "bnn_run"
DIGEST_KEY = "content_sha256"
_PLACEHOLDER = "0" * 64
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

# LCE's ops; everything else in a converted model computes in float (or int8).
LCE_OPS = ("LceQuantize", "LceDequantize", "LceBconv2d", "LceBMaxPool2d")
_BINARY_CONSUMERS = ("LceQuantize", "LceBconv2d")

_BUILTIN_NAMES: Dict[int, str] = {
    code: name for name, code in vars(schema_fb.BuiltinOperator).items() if not name.startswith("_")
}
_TENSOR_TYPES: Dict[int, str] = {
    code: name for name, code in vars(schema_fb.TensorType).items() if not name.startswith("_")
}
_IO_TYPE_NAMES = {schema_fb.TensorType.FLOAT32: "float32", schema_fb.TensorType.INT8: "int8"}


class InvalidFlatbufferError(BnnError):
    """The bytes are not a readable TFLite flatbuffer."""


@dataclasses.dataclass(frozen=True)
class IoQuantization:
    """Affine int8 parameters of a model input or output: real = scale * (q - zero_point).

    `scale` is None for a float tensor (no conversion needed).
    """

    dtype: str
    scale: Optional[float]
    zero_point: int


def read_model(data: bytes, *, source: str = "the input") -> "schema_fb.ModelT":
    """Parses and fully unpacks a TFLite flatbuffer.

    Unpacking every table (not just the root) is what surfaces truncation and most corruption
    as an exception here, before a native interpreter ever sees the bytes. `Flatbuffer(data)`
    does this once and keeps the result; prefer it to calling this again on the same bytes.

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


def op_name(opcode: "schema_fb.OperatorCodeT") -> str:
    """The op's name: the builtin enum name (`CONV_2D`) or a custom op's code (`LceBconv2d`)."""
    code = schema_util.get_builtin_code_from_operator_code(opcode)
    if code == schema_fb.BuiltinOperator.CUSTOM:
        custom = opcode.customCode
        return custom.decode() if isinstance(custom, bytes) else str(custom)
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def _indices(vector) -> List[int]:
    """A tensor-index vector of the object tree (None, a NumPy array or a list) as ints."""
    return [] if vector is None else [int(i) for i in vector]


def _digest_field(hex_digest: str) -> bytes:
    """The digest's key and value exactly as `json.dumps` writes them into the payload."""
    return json.dumps({DIGEST_KEY: hex_digest})[1:-1].encode()


def _entry_name(entry: "schema_fb.MetadataT") -> str:
    name = entry.name
    # A damaged name is just not ours; it must not stop reading the file.
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _parse_payload(payload: Optional[bytes]) -> Optional[Dict[str, Any]]:
    if payload is None:
        return None
    try:
        meta = json.loads(payload.decode())
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


class Flatbuffer:
    """A TFLite flatbuffer: its bytes and their unpacked object tree, parsed once.

    Construct one from bytes (`Flatbuffer(data)`, validated against the schema), from a file
    (`Flatbuffer.from_file`, which also checks the content hash), or accept any of these with
    `Flatbuffer.wrap`. Treat `model` as read-only: the rewriting methods return a new object.

    Attributes:
        data: The flatbuffer bytes.
        model: The unpacked `ModelT` object tree of `data`.
        source: How the flatbuffer is named in error messages (a file path, or "the input").
    """

    def __init__(self, data: Union[bytes, bytearray, memoryview], *, source: str = "the input"):
        """Parses `data`.

        Raises:
            InvalidFlatbufferError: the bytes are not a TFLite model.
        """
        self.data = bytes(data)
        self.source = source
        self.model = read_model(self.data, source=source)

    @classmethod
    def _serialized(cls, model: "schema_fb.ModelT", *, source: str) -> "Flatbuffer":
        """A flatbuffer serialized from `model`, which is kept as its tree (no parse)."""
        from tensorflow.lite.tools import flatbuffer_utils

        return cls._of(bytes(flatbuffer_utils.convert_object_to_bytearray(model)), model,
                       source=source)

    @classmethod
    def _of(cls, data: bytes, model: "schema_fb.ModelT", *, source: str) -> "Flatbuffer":
        """Pairs bytes with the tree they were just serialized from."""
        flatbuffer = cls.__new__(cls)
        flatbuffer.data, flatbuffer.model, flatbuffer.source = data, model, source
        return flatbuffer

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Flatbuffer":
        """Reads a .tflite file, checks it against the TFLite schema and against the SHA-256
        that `bnn convert` stores in its metadata (files without one are accepted).

        Raises:
            BnnError: missing/unreadable file, bytes that are not a valid TFLite flatbuffer, or
                a file whose content no longer matches its recorded hash (damaged on disk or in a
                copy).
        """
        file = Path(path)
        if not file.is_file():
            raise BnnError(f"No such .tflite file: {file}.")
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise BnnError(
                f"Could not read {file}: {exc.strerror or type(exc).__name__}.") from None
        flatbuffer = cls(data, source=str(file))
        flatbuffer.check_content_digest()
        return flatbuffer

    @classmethod
    def wrap(cls, value: Union["Flatbuffer", bytes, bytearray, memoryview, str, os.PathLike],
             *, source: str = "the input") -> "Flatbuffer":
        """`value` itself when it is a `Flatbuffer`, else its bytes parsed, or a file read with
        `from_file` (content hash checked).

        Raises:
            BnnError: as `Flatbuffer(...)` or `from_file`.
        """
        if isinstance(value, Flatbuffer):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(value, source=source)
        return cls.from_file(value)

    def __len__(self) -> int:
        return len(self.data)

    def __bytes__(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"Flatbuffer({self.source}, {len(self.data):,} bytes)"

    # -- what it computes with -----------------------------------------------------------------

    @functools.cached_property
    def _op_names(self) -> List[str]:
        return [op_name(opcode) for opcode in self.model.operatorCodes]

    @property
    def ops(self) -> Counter[str]:
        """How often each operator occurs in all subgraphs, e.g. `{"LceBconv2d": 23, ...}`.

        Raises:
            InvalidFlatbufferError: an operator refers to an opcode that does not exist.
        """
        names = self._op_names
        counts: Counter[str] = collections.Counter()
        for subgraph in self.model.subgraphs:
            for op in subgraph.operators or []:
                if op.opcodeIndex >= len(names):
                    raise InvalidFlatbufferError(f"{self.source} is a damaged TFLite flatbuffer.")
                counts[names[op.opcodeIndex]] += 1
        return counts

    def missed_fusions(self) -> List[str]:
        """Float ops sitting directly between a binary convolution and the next binarization.

        LCE fuses BatchNorm, scaling and most activations that follow an LceBconv2d into the
        op's post-multiplier/bias, and a following sign into its binary output. An op that still
        sits between `LceBconv2d` and `LceQuantize`/`LceBconv2d`, with constants as its other
        inputs, was not fused: it costs a float pass over the feature map and a separate
        quantization. An op on two activations (a residual ADD of the conv output and its
        shortcut) is not counted.

        Returns:
            One description per such op, e.g. `"op 12 MUL (LceBconv2d -> MUL -> LceQuantize)"`.
        """
        names = self._op_names
        found = []
        for subgraph in self.model.subgraphs:
            ops = subgraph.operators or []
            producer = {}
            consumers: Dict[int, List[int]] = collections.defaultdict(list)
            for index, op in enumerate(ops):
                for tensor in _indices(op.outputs):
                    producer[tensor] = index
                for tensor in _indices(op.inputs):
                    consumers[tensor].append(index)
            graph_inputs = set(_indices(subgraph.inputs))
            for index, op in enumerate(ops):
                name = names[op.opcodeIndex]
                if name in LCE_OPS:
                    continue
                inputs = [t for t in _indices(op.inputs) if t >= 0]
                fed_by_bconv = any(
                    t in producer and names[ops[producer[t]].opcodeIndex] == "LceBconv2d"
                    for t in inputs
                )
                # An op on two activations (a residual ADD of the conv output and a shortcut,
                # the sum of several binary bases) is real work; only an op whose other inputs
                # are constants could have been fused.
                if sum(t in producer or t in graph_inputs for t in inputs) > 1:
                    continue
                next_ops = [names[ops[c].opcodeIndex]
                            for t in _indices(op.outputs) for c in consumers[t]]
                feeds_binary = [n for n in next_ops if n in _BINARY_CONSUMERS]
                if fed_by_bconv and feeds_binary:
                    found.append(f"op {index} {name} (LceBconv2d -> {name} -> {feeds_binary[0]})")
        return found

    def _io_tensors(self) -> Tuple["schema_fb.TensorT", "schema_fb.TensorT"]:
        """The main subgraph's first input and output tensors."""
        subgraph = self.model.subgraphs[0]
        return subgraph.tensors[subgraph.inputs[0]], subgraph.tensors[subgraph.outputs[0]]

    def io_types(self) -> Tuple[str, str]:
        """Types of the first input and output: "float32", "int8" or "type N"."""
        return tuple(_IO_TYPE_NAMES.get(t.type, f"type {t.type}") for t in self._io_tensors())

    def check_io_types(self, input_type: str, output_type: Optional[str] = None) -> None:
        """Raises if the first input/output are not of the expected types ("float32"/"int8";
        `output_type` defaults to `input_type`).

        LCE converts a model without quantization ranges (no fake-quant nodes, no
        `experimental_default_int8_range`) to float32 I/O even when int8 I/O is asked for, with
        only a "Saved-model conversion failed" warning; this turns that into an error.

        Raises:
            BnnError: the types differ.
        """
        expected = (input_type, output_type or input_type)
        got = self.io_types()
        if got != expected:
            wanted = (f"{expected[0]} model input and output" if expected[0] == expected[1]
                      else f"{expected[0]} model input and {expected[1]} output")
            raise BnnError(
                f"Expected {wanted}, but LCE produced {got[0]} input and {got[1]} output. int8 "
                "I/O needs quantization ranges at the model input and output: convert with "
                "convert.int8.convert_int8 (fake-quant nodes), not a float model."
            )

    def io_quantization(self) -> Tuple[IoQuantization, IoQuantization]:
        """(input, output) quantization of the main subgraph's first input and output tensors.

        Raises:
            BnnError: a type other than float32/int8, or int8 without a per-tensor scale.
        """
        params = []
        for tensor in self._io_tensors():
            if tensor.type == schema_fb.TensorType.FLOAT32:
                params.append(IoQuantization("float32", None, 0))
                continue
            if tensor.type != schema_fb.TensorType.INT8:
                raise BnnError(f"Expected a float32 or int8 model input/output, got tensor type "
                               f"{tensor.type}.")
            quant = tensor.quantization
            if quant is None or quant.scale is None or len(quant.scale) != 1:
                raise BnnError("The int8 model input/output has no per-tensor scale; it cannot "
                               "be fed float data.")
            zero_point = int(quant.zeroPoint[0]) if quant.zeroPoint is not None else 0
            params.append(IoQuantization("int8", float(quant.scale[0]), zero_point))
        return params[0], params[1]

    def quantize_inputs(self, x: np.ndarray) -> np.ndarray:
        """Float inputs -> what the input takes (int8 with its scale/zero point).

        Float-input flatbuffers get `x` back as float32, so callers need not branch.
        """
        params, _ = self.io_quantization()
        x = np.asarray(x, np.float32)
        if params.scale is None:
            return x
        q = np.round(x / params.scale) + params.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize_outputs(self, y: np.ndarray) -> np.ndarray:
        """Outputs -> float32 (int8 outputs mapped back through their scale/zero point)."""
        _, params = self.io_quantization()
        if params.scale is None:
            return np.asarray(y, np.float32)
        return ((np.asarray(y).astype(np.float32) - params.zero_point) * params.scale).astype(
            np.float32)

    def input_spec(self) -> Tuple[Tuple[int, ...], np.dtype]:
        """(shape without batch, NumPy dtype) of the model's only input.

        Raises:
            BnnError: not exactly one input, an index out of range, or an unsupported type.
        """
        subgraph = self.model.subgraphs[0]
        if subgraph.inputs is None or len(subgraph.inputs) != 1:
            raise BnnError("Expected a model with exactly one input.")
        index = int(subgraph.inputs[0])
        if not 0 <= index < len(subgraph.tensors or []):
            raise BnnError("The flatbuffer's input tensor index is out of range; convert the "
                           "model again.")
        tensor = subgraph.tensors[index]
        name = _TENSOR_TYPES.get(tensor.type)
        dtype = {"FLOAT32": np.float32, "INT8": np.int8, "UINT8": np.uint8}.get(name)
        if dtype is None:
            raise BnnError(f"Unsupported model input type {name or tensor.type}.")
        shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
        return shape[1:], np.dtype(dtype)

    def output_count(self) -> int:
        """Values in one example of the model's (first) output: its number of classes.

        Raises:
            BnnError: the model has no output tensor.
        """
        subgraph = self.model.subgraphs[0]
        if subgraph.outputs is None or not len(subgraph.outputs):
            raise BnnError("The .tflite has no output tensor; convert the model again.")
        shape = subgraph.tensors[int(subgraph.outputs[0])].shape
        return int(np.prod(shape[1:])) if shape is not None and len(shape) > 1 else 1

    # -- the bnn metadata ----------------------------------------------------------------------

    def _payload(self) -> Optional[bytes]:
        """The raw `bnn_run` bytes, or None when the flatbuffer has no such entry."""
        model = self.model
        for entry in model.metadata or []:
            if _entry_name(entry) == METADATA_NAME:
                if not 0 <= entry.buffer < len(model.buffers or []):
                    return b""
                data = model.buffers[entry.buffer].data
                return b"" if data is None else bytes(bytearray(data))
        return None

    @property
    def metadata(self) -> Optional[Dict[str, Any]]:
        """The `bnn_run` metadata (a new dict, without its digest), or None when there is none."""
        meta = _parse_payload(self._payload())
        if meta is not None:
            meta.pop(DIGEST_KEY, None)
        return meta

    def check_content_digest(self) -> bool:
        """Checks the bytes against the SHA-256 their bnn metadata carries.

        Returns:
            True when the digest matched; False when the file carries none (written by an older
            bnn or another tool), which is accepted.

        Raises:
            InvalidFlatbufferError: the bnn metadata is unreadable, or the digest does not match.
        """
        source, data = self.source, self.data
        payload = self._payload()
        if payload is None:
            return False
        meta = _parse_payload(payload)
        if meta is None:
            raise InvalidFlatbufferError(
                f"{source} is damaged: its bnn metadata is not readable; convert the model again.")
        recorded = meta.get(DIGEST_KEY)
        if recorded is None:
            return False
        field = _digest_field(str(recorded))
        at = data.find(field)
        actual = None
        if isinstance(recorded, str) and _HEX_DIGEST.fullmatch(recorded) and at >= 0:
            restored = data[:at] + _digest_field(_PLACEHOLDER) + data[at + len(field):]
            actual = hashlib.sha256(restored).hexdigest()
        if actual != recorded:
            raise InvalidFlatbufferError(
                f"{source} is damaged: its content hash does not match (sha256 "
                f"{actual or 'unknown'} instead of the recorded {str(recorded)[:64]}); convert "
                "the model again.")
        return True

    # -- rewriting (new objects; this one is left unchanged) -----------------------------------

    def with_metadata(self, metadata: Dict[str, Any]) -> "Flatbuffer":
        """This flatbuffer with `metadata` (JSON-serialisable) stored under `bnn_run`.

        An existing `bnn_run` entry is replaced, and a SHA-256 of the resulting file is stored
        with it (`content_sha256`, checked by `check_content_digest`). Operators, tensors and
        weights are re-serialised unchanged by TensorFlow's own flatbuffer utilities.
        """
        from tensorflow.lite.tools import flatbuffer_utils

        metadata = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
        payload = json.dumps({**metadata, DIGEST_KEY: _PLACEHOLDER}, sort_keys=True).encode()
        buffer = schema_fb.BufferT()
        buffer.data = list(payload)
        entry = schema_fb.MetadataT()
        entry.name = METADATA_NAME
        # A shallow copy: the new buffer and entry go into new lists, the rest is shared.
        model = copy.copy(self.model)
        model.buffers = [*(self.model.buffers or []), buffer]
        entry.buffer = len(model.buffers) - 1
        kept = [m for m in (self.model.metadata or []) if _entry_name(m) != METADATA_NAME]
        model.metadata = kept + [entry]
        data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
        placeholder = _digest_field(_PLACEHOLDER)
        at = data.find(placeholder)
        if at < 0 or data.find(placeholder, at + 1) >= 0:  # cannot happen: the payload is verbatim
            raise RuntimeError("The metadata digest placeholder is not unique in the flatbuffer.")
        digest = _digest_field(hashlib.sha256(data).hexdigest())
        # The tree keeps what the file now holds: the payload with the digest in place.
        buffer.data = list(payload.replace(placeholder, digest))
        return Flatbuffer._of(data[:at] + digest + data[at + len(placeholder):], model,
                              source=self.source)

    def renamed(self, model_name: str) -> "Flatbuffer":
        """This flatbuffer with internal tensors named after the Keras layer and op that
        produce them.

        The converter names each tensor after every TF op fused into it, prefixed with the model
        name (`binary_densenet28/block4_layer5_conv/QuantConv2D;binary_densenet28/...`), cut at
        50 characters. Keeping the first op's path without the model prefix
        (`block4_layer5_conv/QuantConv2D`) reads better in Netron and takes fewer bytes. Tensors
        with other names (model inputs/outputs, constants) keep theirs.
        """
        prefix = f"{model_name}/"
        model = copy.copy(self.model)
        model.subgraphs = []
        for original in self.model.subgraphs:
            subgraph = copy.copy(original)
            subgraph.tensors = list(original.tensors)
            keep = set(_indices(subgraph.inputs)) | set(_indices(subgraph.outputs))
            taken = {bytes(t.name) for t in subgraph.tensors}
            for index, tensor in enumerate(subgraph.tensors):
                name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
                if index in keep or not name.startswith(prefix):
                    continue
                short = name.split(";")[0][len(prefix):].encode()
                if short and short not in taken:
                    taken.add(short)
                    tensor = copy.copy(tensor)
                    tensor.name = short
                    subgraph.tensors[index] = tensor
            model.subgraphs.append(subgraph)
        return Flatbuffer._serialized(model, source=self.source)


FlatbufferLike = Union[Flatbuffer, bytes, bytearray, memoryview]


# Byte-level functions, kept for callers that hold bytes; each parses once.


def readable_tensor_names(data: FlatbufferLike, model_name: str) -> bytes:
    """`Flatbuffer.renamed` on bytes; returns the re-serialised flatbuffer."""
    return Flatbuffer.wrap(data).renamed(model_name).data


def op_histogram(data: FlatbufferLike, *, source: str = "the input") -> Counter[str]:
    """Counts each operator in all subgraphs of a flatbuffer, e.g. `{"LceBconv2d": 23, ...}`."""
    return Flatbuffer.wrap(data, source=source).ops


def missed_fusions(data: FlatbufferLike, *, source: str = "the input") -> List[str]:
    """`Flatbuffer.missed_fusions` on bytes."""
    return Flatbuffer.wrap(data, source=source).missed_fusions()
