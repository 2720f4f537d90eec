"""Our run metadata (normalization, class names, data set) inside the .tflite itself.

TFLite flatbuffers carry named metadata buffers (the schema's `Model.metadata`); the TFLite
runtime ignores names it does not know. Storing the preprocessing there means a .tflite on its
own is enough for `bnn evaluate` and `bnn predict` to feed it exactly what training fed Keras.

The metadata also carries a SHA-256 of the whole file (`content_sha256`), so that a bit flipped
on disk or in a copy, which TFLite's schema cannot notice in a weight buffer, is reported
instead of silently changing the model's answers. The digest is computed over the file with the
digest itself replaced by a fixed placeholder of the same length, so it can be written in place
without moving any offset.
"""

import hashlib
import json
import re
from typing import Any, Dict, Optional

from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from convert.flatbuffer import InvalidFlatbufferError, read_model

METADATA_NAME = "bnn_run"
DIGEST_KEY = "content_sha256"
_PLACEHOLDER = "0" * 64
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _digest_field(hex_digest: str) -> bytes:
    """The digest's key and value exactly as `json.dumps` writes them into the payload."""
    return json.dumps({DIGEST_KEY: hex_digest})[1:-1].encode()


def embed_metadata(flatbuffer: bytes, metadata: Dict[str, Any]) -> bytes:
    """Returns `flatbuffer` with `metadata` (JSON-serialisable) stored under `bnn_run`.

    An existing `bnn_run` entry is replaced, and a SHA-256 of the resulting file is stored with
    it (`content_sha256`, checked by `check_content_digest`). Operators, tensors and weights are
    re-serialised unchanged by TensorFlow's own flatbuffer utilities.
    """
    model = read_model(flatbuffer)
    metadata = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    payload = json.dumps({**metadata, DIGEST_KEY: _PLACEHOLDER}, sort_keys=True).encode()
    buffer = schema_fb.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME]
    model.metadata = kept + [entry]
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    placeholder = _digest_field(_PLACEHOLDER)
    at = data.find(placeholder)
    if at < 0 or data.find(placeholder, at + 1) >= 0:  # cannot happen: the payload is verbatim
        raise RuntimeError("The metadata digest placeholder is not unique in the flatbuffer.")
    digest = hashlib.sha256(data).hexdigest()
    return data[:at] + _digest_field(digest) + data[at + len(placeholder):]


def _payload(model: "schema_fb.ModelT") -> Optional[bytes]:
    """The raw `bnn_run` bytes of an unpacked model, or None when it has no such entry."""
    for entry in model.metadata or []:
        if _name(entry) == METADATA_NAME:
            if not 0 <= entry.buffer < len(model.buffers or []):
                return b""
            data = model.buffers[entry.buffer].data
            return b"" if data is None else bytes(bytearray(data))
    return None


def _parse(payload: Optional[bytes]) -> Optional[Dict[str, Any]]:
    if payload is None:
        return None
    try:
        meta = json.loads(payload.decode())
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def read_metadata(flatbuffer: bytes) -> Optional[Dict[str, Any]]:
    """The `bnn_run` metadata of a flatbuffer (without its digest), or None when it has none."""
    meta = _parse(_payload(read_model(flatbuffer)))
    if meta is not None:
        meta.pop(DIGEST_KEY, None)
    return meta


def check_content_digest(flatbuffer: bytes, *, source: str = "the input") -> bool:
    """Checks the file against the SHA-256 its bnn metadata carries.

    Returns:
        True when the digest matched; False when the file carries none (written by an older bnn
        or another tool), which is accepted.

    Raises:
        InvalidFlatbufferError: the bnn metadata is unreadable, or the digest does not match.
    """
    payload = _payload(read_model(flatbuffer, source=source))
    if payload is None:
        return False
    meta = _parse(payload)
    if meta is None:
        raise InvalidFlatbufferError(
            f"{source} is damaged: its bnn metadata is not readable; convert the model again.")
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:
        return False
    field = _digest_field(str(recorded))
    at = flatbuffer.find(field)
    actual = None
    if isinstance(recorded, str) and _HEX_DIGEST.fullmatch(recorded) and at >= 0:
        restored = flatbuffer[:at] + _digest_field(_PLACEHOLDER) + flatbuffer[at + len(field):]
        actual = hashlib.sha256(restored).hexdigest()
    if actual != recorded:
        raise InvalidFlatbufferError(
            f"{source} is damaged: its content hash does not match (sha256 {actual or 'unknown'} "
            f"instead of the recorded {str(recorded)[:64]}); convert the model again.")
    return True


def _name(entry: "schema_fb.MetadataT") -> str:
    name = entry.name
    # A damaged name is just not ours; it must not stop reading the file.
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


# Keys of a run's config.json that a deployed model needs to be fed and read correctly.
RUN_KEYS = ("model", "dataset", "data_dir", "input_shape", "num_classes", "class_names",
            "normalization", "pixel_max")


def run_metadata(run_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The part of a run's config.json worth shipping inside the .tflite, plus versions."""
    import larq_compute_engine

    import bnn_keras

    meta = {key: run_config[key] for key in RUN_KEYS if run_config and key in run_config}
    meta["bnn_version"] = bnn_keras.__version__
    meta["lce_version"] = larq_compute_engine.__version__
    return meta
