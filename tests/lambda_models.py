"""Model files that carry code: a Lambda layer whose function writes a marker file when it runs.

The marker's path is a constant of the lambda's bytecode (Keras marshals the code, not its
globals), so a file that runs the lambda on load writes the marker wherever it is loaded. Tests
build such files once per module and check that loading them never writes the marker.
"""

from pathlib import Path
from typing import Dict

import bnn_keras  # noqa: F401  (must precede tensorflow)
import tensorflow as tf

FORMATS = ("h5", "keras", "saved_model", "renamed")


def marker_writing_lambda(marker: Path):
    """A lambda x: x that appends a line to `marker` each time it runs."""
    return eval(f"lambda x: (open({str(marker)!r}, 'a').write('ran\\n'), x)[1]")  # noqa: S307


def lambda_model(marker: Path) -> tf.keras.Model:
    """Dense(3) then a Lambda named 'evil' that writes `marker`: 4 inputs, 3 outputs."""
    inputs = tf.keras.Input((4,))
    x = tf.keras.layers.Dense(3, name="dense")(inputs)
    outputs = tf.keras.layers.Lambda(marker_writing_lambda(marker), name="evil")(x)
    return tf.keras.Model(inputs, outputs, name="with_lambda")


def save_lambda_models(folder: Path, marker: Path) -> Dict[str, Path]:
    """The Lambda model as .h5, .keras, a SavedModel folder and a .h5 renamed to .keras (which
    tf-keras loads as HDF5), with no marker left behind (building and saving run the lambda).

    Returns:
        {format: path} for `FORMATS`.
    """
    model = lambda_model(marker)
    paths = {"h5": folder / "evil.h5", "keras": folder / "evil.keras",
             "saved_model": folder / "evil_saved_model", "renamed": folder / "renamed.keras"}
    model.save(paths["h5"])
    model.save(paths["keras"])
    model.save(paths["saved_model"], save_format="tf")
    paths["renamed"].write_bytes(paths["h5"].read_bytes())
    marker.unlink(missing_ok=True)
    return paths
