"""Our run metadata (normalization, class names, data set) inside the .tflite itself.

TFLite flatbuffers carry named metadata buffers (the schema's `Model.metadata`); the TFLite
runtime ignores names it does not know. Storing the preprocessing there means a .tflite on its
own is enough for `bnn evaluate` and `bnn predict` to feed it exactly what training fed Keras.
"""

import json
from typing import Any, Dict, Optional

from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from convert.flatbuffer import read_model

METADATA_NAME = "bnn_run"


def embed_metadata(flatbuffer: bytes, metadata: Dict[str, Any]) -> bytes:
    """Returns `flatbuffer` with `metadata` (JSON-serialisable) stored under `bnn_run`.

    An existing `bnn_run` entry is replaced. Operators, tensors and weights are re-serialised
    unchanged by TensorFlow's own flatbuffer utilities.
    """
    model = read_model(flatbuffer)
    payload = json.dumps(metadata, sort_keys=True).encode()
    buffer = schema_fb.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema_fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME]
    model.metadata = kept + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(flatbuffer: bytes) -> Optional[Dict[str, Any]]:
    """The `bnn_run` metadata of a flatbuffer, or None when it has none."""
    model = read_model(flatbuffer)
    for entry in model.metadata or []:
        if _name(entry) == METADATA_NAME:
            data = model.buffers[entry.buffer].data
            try:
                return json.loads(bytes(data).decode())
            except (TypeError, ValueError, UnicodeDecodeError):
                return None
    return None


def _name(entry: "schema_fb.MetadataT") -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


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
