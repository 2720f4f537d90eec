"""Our run metadata (normalization, class names, data set) inside the .tflite itself.

What goes in is chosen here (`run_metadata`); how it is stored, read back and checked against the
file's SHA-256 is `convert.flatbuffer.Flatbuffer` (`with_metadata`, `metadata`,
`check_content_digest`). The functions below do the same on bytes, for callers that hold bytes.
"""

from typing import Any, Dict, Optional

from convert.flatbuffer import DIGEST_KEY, METADATA_NAME, Flatbuffer, FlatbufferLike

__all__ = ["DIGEST_KEY", "METADATA_NAME", "RUN_KEYS", "check_content_digest", "embed_metadata",
           "read_metadata", "run_metadata"]

# Keys of a run's config.json that a deployed model needs to be fed and read correctly.
RUN_KEYS = ("model", "dataset", "data_dir", "input_shape", "num_classes", "class_names",
            "normalization", "pixel_max")


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


def run_metadata(run_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The part of a run's config.json worth shipping inside the .tflite, plus versions."""
    import larq_compute_engine

    import bnn_keras

    meta = {key: run_config[key] for key in RUN_KEYS if run_config and key in run_config}
    meta["bnn_version"] = bnn_keras.__version__
    meta["lce_version"] = larq_compute_engine.__version__
    return meta
