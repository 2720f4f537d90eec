"""The run's best epoch: which one it is, and its weights, kept until the run ends.

A run validates on the test split after the epochs `validation_freq` picks; the best epoch
is the first one with the highest `val_accuracy` (the model in training precision, as
validated: under mixed precision, the bfloat16 model). While `fit` runs, `BestEpochKeeper`
saves the weights of each new best epoch into RUN_DIR/best/epoch-N.npz (`get_weights`'s
arrays in order: NumPy's writer fails with an OSError on a full disk, where HDF5's crashed). At the end, the run's
`keep` option (`--keep last|best`) decides which of the last and the best epoch model.keras
holds; the other is saved beside it (best.keras or last.keras), so both stay reachable
(`bnn convert RUN/best.keras` reads the run folder's input description like model.keras).

The weights file of an epoch is written before that epoch's backup is committed. So after an
interruption the folder may hold the file of an epoch that a resume trains again: the keeper
ignores files after the epoch it resumes from, and once an epoch is committed
(`commit`), removes every file but the best one.

Choosing an epoch by its test accuracy selects on the test split: the kept model's test
accuracy is then an optimistic estimate of accuracy on new data.
"""

import io
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from bnn_keras import files
from bnn_keras.errors import BnnError
from bnn_keras.training.run_files import BEST_MODEL_FILE, LAST_MODEL_FILE

BEST_DIR = "best"
# The model file that holds the epoch `keep` did not choose, by the epoch it holds.
OTHER_MODEL_FILES = {"best": BEST_MODEL_FILE, "last": LAST_MODEL_FILE}
KEEP_CHOICES = ("last", "best")

_WEIGHTS_NAME = re.compile(r"^epoch-(\d+)\.npz$")


def best_row(rows: List[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """The first row with the highest `val_accuracy` among history.csv's `rows` (None when no
    epoch was validated)."""
    validated = [row for row in rows if "val_accuracy" in row]
    if not validated:
        return None
    return max(validated, key=lambda row: (row["val_accuracy"], -row["epoch"]))


def weights_path(run_dir: Path, epoch: int) -> Path:
    """Where the weights of `epoch` (1-based) are kept while it is the best."""
    return Path(run_dir) / BEST_DIR / f"epoch-{epoch}.npz"


def kept_weights(run_dir: Path) -> Dict[int, Path]:
    """{epoch: weights file} of the files in RUN_DIR/best."""
    folder = Path(run_dir) / BEST_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _WEIGHTS_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def check_best_kept(run_dir: Path, rows: List[Dict[str, float]], keep: str) -> None:
    """Refuses to resume a `keep="best"` run whose best epoch so far has no weights file
    (removed by hand, or written by a bnn that kept none): it could not end with that epoch.

    Args:
        run_dir: The run folder.
        rows: history.csv's rows of the complete epochs.
        keep: The run's `keep`.
    """
    best = best_row(rows)
    if keep != "best" or best is None:
        return
    epoch = int(best["epoch"])
    if not weights_path(run_dir, epoch).is_file():
        raise BnnError(
            f"{run_dir} keeps its best epoch (`keep` best), and its best so far, epoch {epoch}, "
            f"has no weights file ({weights_path(run_dir, epoch)} is missing), so the run "
            "could not end with it; start a new run, or copy the folder back as it was.")


class BestEpochKeeper(tf.keras.callbacks.Callback):
    """Saves the weights of each new best epoch into RUN_DIR/best (see the module docstring).

    Put it before `EpochCommit`, which calls `commit` once the epoch's backup is saved.

    Args:
        run_dir: The run folder.
        model: The model whose weights are kept (the student of a distilled run), whatever
            model `fit` trains.
        rows: history.csv's rows of the epochs before the first one `fit` trains (empty for
            a new run).
    """

    def __init__(self, run_dir: Path, model: tf.keras.Model,
                 rows: Optional[List[Dict[str, float]]] = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.kept_model = model
        best = best_row(rows or [])
        self.best_epoch: Optional[int] = None if best is None else int(best["epoch"])
        self.best_accuracy: Optional[float] = None if best is None else best["val_accuracy"]

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        accuracy = (logs or {}).get("val_accuracy")
        if accuracy is None:
            return
        accuracy = float(accuracy)
        if self.best_accuracy is not None and accuracy <= self.best_accuracy:
            return
        # Made in memory, then written in one call: a full disk fails the write with an
        # OSError, and no half-written archive is left for the interpreter to close at exit.
        buffer = io.BytesIO()
        np.savez(buffer, *self.kept_model.get_weights())
        files.write_bytes(weights_path(self.run_dir, epoch + 1), buffer.getvalue())
        self.best_epoch, self.best_accuracy = epoch + 1, accuracy

    def commit(self, epoch: int) -> None:
        """Called once epoch `epoch` (0-based) is committed: only the best epoch's file stays."""
        for kept_epoch, path in kept_weights(self.run_dir).items():
            if kept_epoch != self.best_epoch:
                path.unlink()

    def best_model(self) -> tf.keras.Model:
        """An uncompiled copy of the kept model with the best epoch's weights."""
        copy = tf.keras.models.clone_model(self.kept_model)
        copy.set_weights(read_weights(weights_path(self.run_dir, self.best_epoch)))
        return copy


def read_weights(path: Path) -> List[np.ndarray]:
    """The arrays of a weights file `BestEpochKeeper` wrote, in `get_weights` order."""
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
