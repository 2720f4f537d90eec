"""Our run metadata (normalization, class names, data set) inside the .tflite itself.

What goes in is chosen here (`run_metadata`: the model's name, its `ModelInput` and the library
versions); how it is stored, read back and checked against the
file's SHA-256 is `convert.flatbuffer.Flatbuffer` (`with_metadata`, `metadata`,
`check_content_digest`). The functions below do the same on bytes, for callers that hold bytes.
"""

from typing import Any, Dict, Mapping, Optional, Union

from bnn_keras.training.data.preprocessing import ModelInput
from convert.flatbuffer import DIGEST_KEY, METADATA_NAME, Flatbuffer, FlatbufferLike

__all__ = ["DIGEST_KEY", "METADATA_NAME", "check_content_digest", "embed_metadata",
           "read_metadata", "run_metadata"]


def embed_metadata(flatbuffer: FlatbufferLike, metadata: Dict[str, Any]) -> bytes:
    """Returns `flatbuffer` with `metadata` (JSON-serialisable) stored under `bnn_run`, and a
    SHA-256 of the result (see `Flatbuffer.with_metadata`)."""
    return Flatbuffer.wrap(flatbuffer).with_metadata(metadata).data


def read_metadata(flatbuffer: FlatbufferLike) -> Optional[Dict[str, Any]]:
    """The `bnn_run` metadata of a flatbuffer (without its digest), or None when it has none."""
    return Flatbuffer.wrap(flatbuffer).metadata


def check_content_digest(flatbuffer: FlatbufferLike, *, source: str = "the input") -> bool:
    """Checks the file against the SHA-256 its bnn metadata carries (see
    `Flatbuffer.check_content_digest`).

    Returns:
        True when the digest matched; False when the file carries none.

    Raises:
        InvalidFlatbufferError: the bnn metadata is unreadable, or the digest does not match.
    """
    return Flatbuffer.wrap(flatbuffer, source=source).check_content_digest()


def run_metadata(model_input: Optional[Union[ModelInput, Mapping[str, Any]]], *,
                 model: Optional[str] = None) -> Dict[str, Any]:
    """What a deployed model needs to be fed and read (its `ModelInput`, and the registry name
    of a run's model), plus versions.

    Args:
        model_input: The model's input, or a mapping that describes it (a run's config.json,
            or `ModelInput.to_metadata()`, whose `model` key is read too); None for versions
            only.
        model: The registry name of the run's model [default: the mapping's `model`].

    Raises:
        BnnError: a mapping without an input shape or normalization.
    """
    import larq_compute_engine

    import bnn_keras

    meta: Dict[str, Any] = {}
    if isinstance(model_input, Mapping):
        model = model if model is not None else model_input.get("model")
        model_input = ModelInput.from_mapping(model_input)
    if model is not None:
        meta["model"] = model
    if model_input is not None:
        meta.update(model_input.to_metadata())
    meta["bnn_version"] = bnn_keras.__version__
    meta["lce_version"] = larq_compute_engine.__version__
    return meta
