"""Loading a trained Keras model from a run folder or a model file."""

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
from bnn_keras.training.config import CONFIG_FILE, MODEL_FILE, RunRecord

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclasses.dataclass
class LoadedModel:
    """A Keras model and, when it came from a run folder, that run's config.json.

    Attributes:
        model: The model.
        path: The model file it was loaded from.
        record: The run's validated config.json (`RunRecord`), or None for a model file.
    """

    model: tf.keras.Model
    path: Path
    record: Optional[RunRecord] = None

    @property
    def run_config(self) -> Optional[Dict[str, Any]]:
        """The run's config.json content (`RunRecord.to_dict`), or None for a model file: the
        form the .tflite metadata and the bundle share with a model file's options."""
        return None if self.record is None else self.record.to_dict()


def load_trained_model(path: str) -> LoadedModel:
    """Loads `RUN_DIR/model.keras` (with its config.json) or a Keras model file.

    Raises:
        BnnError: the path does not exist, or is not a Keras model.
    """
    source = Path(path)
    if not source.exists():
        raise BnnError(f"No such model file or run folder: {source}.")
    record = None
    if source.is_dir():
        if (source / MODEL_FILE).is_file():
            if (source / CONFIG_FILE).is_file():
                record = RunRecord.read(source)
            source = source / MODEL_FILE
        elif not (source / "saved_model.pb").is_file():
            raise BnnError(
                f"{source} is neither a run folder (no {MODEL_FILE}) nor a SavedModel folder."
            )
    elif source.suffix not in MODEL_SUFFIXES:
        raise BnnError(
            f"{source} is not a Keras model file; expected a run folder or a "
            f"{'/'.join(MODEL_SUFFIXES)} file."
        )
    try:
        model = tf.keras.models.load_model(source, compile=False)
    except Exception as exc:
        # The whole first line: a cut in the middle of it hides the cause (a missing custom
        # object's name comes last).
        reason = first_line(exc)
        raise BnnError(f"Could not load {source} as a Keras model ({reason}).") from None
    if not isinstance(model, tf.keras.Model):
        raise BnnError(f"{source} does not hold a Keras model.")
    return LoadedModel(model=model, path=source, record=record)
