"""Training a BNN with Keras `fit` into a self-describing run folder.

A run folder holds everything needed to continue, convert or evaluate the run later:

    RUN_DIR/
        model.keras     the trained model (`tf.keras.models.load_model` after `import bnn_keras`)
        config.json     every option used, the resolved precision, input shape, class names,
                        the input normalization, and library versions
        history.csv     per-epoch loss/accuracy (rewritten atomically after every epoch)
        metrics.json    final train/test accuracy, wall time and throughput

The model itself comes from a `build_model(input_shape, num_classes)` callable, so this module
does not depend on any model family (the CLI passes `models.create_model`).
"""

import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from bnn_keras import data as data_lib
from bnn_keras import files
from bnn_keras.errors import BnnError
from bnn_keras.precision import precision_policy, resolve_precision

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"

BuildModel = Callable[[Tuple[int, int, int], int], tf.keras.Model]


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; written to `config.json`.

    Attributes:
        model: Registry name of the model (recorded; the builder is passed separately).
        dataset: Data set name, see `bnn_keras.data.list_datasets()`.
        data_dir: Where the data set lives or is downloaded to.
        image_size: Side of the square model input; None uses the data set's default.
        epochs: Number of epochs.
        batch_size: Global batch size.
        learning_rate: Adam learning rate. The BNN papers advise a low rate: a large one flips
            too many latent weight signs per step.
        steps_per_epoch: Limit each epoch to this many batches (quick experiments, tests).
        seed: Seeds weights, shuffling and augmentation.
        precision: "auto", "mixed_bfloat16" or "float32", see `bnn_keras.precision`.
        augment: Use the data set's standard augmentation; None means its default.
        model_options: Extra keyword arguments for the model builder (recorded only).
    """

    model: str = "binary-densenet28"
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    image_size: Optional[int] = None
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    steps_per_epoch: Optional[int] = None
    seed: int = 0
    precision: str = "auto"
    augment: Optional[bool] = None
    model_options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        """Raises `BnnError` naming the first option that is out of range."""
        checks = [
            ("epochs", self.epochs, self.epochs >= 1),
            ("batch_size", self.batch_size, self.batch_size >= 1),
            ("learning_rate", self.learning_rate, self.learning_rate > 0),
            ("image_size", self.image_size, self.image_size is None or self.image_size >= 4),
            ("steps_per_epoch", self.steps_per_epoch,
             self.steps_per_epoch is None or self.steps_per_epoch >= 1),
        ]
        for name, value, ok in checks:
            if not ok:
                raise BnnError(f"Expected a positive {name} (image_size >= 4), got {value!r}.")
        resolve_precision(self.precision)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the run folder, the trained model and its final metrics."""

    run_dir: Path
    model: tf.keras.Model
    metrics: Dict[str, Any]
    history: Dict[str, List[float]]


class HistoryWriter(tf.keras.callbacks.Callback):
    """Rewrites `history.csv` atomically after every epoch, so it is never half-written."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.rows: List[Dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        files.write_text(self.path, buffer.getvalue())


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """The `config.json` of a run folder.

    Raises:
        BnnError: there is no readable config.json.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BnnError(f"{path} is missing or not valid JSON ({exc.__class__.__name__}).") from None


def library_versions() -> Dict[str, str]:
    """Versions of the stack, recorded so a run can be reproduced."""
    import larq_compute_engine
    import tf_keras

    import larq

    return {
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "larq": getattr(larq, "__version__", "unknown"),
        "larq_compute_engine": larq_compute_engine.__version__,
    }


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise BnnError(f"Run folder {run_dir} already exists and is not empty; choose another --output.")
    run_dir.mkdir(parents=True, exist_ok=True)


def input_shape_for(config: TrainConfig, splits: data_lib.DataSplits) -> Tuple[int, int, int]:
    """The model input shape: the chosen (or data set default) side, native channels."""
    height, width, channels = splits.image_shape
    side = config.image_size or splits.default_image_size
    return (side, side, channels) if side else (height, width, channels)


def train(
    config: TrainConfig,
    build_model: BuildModel,
    run_dir: Path,
    *,
    splits: Optional[data_lib.DataSplits] = None,
    verbose: int = 1,
    callbacks: Optional[List[tf.keras.callbacks.Callback]] = None,
) -> TrainResult:
    """Trains a model and writes the run folder.

    Args:
        config: The run's options.
        build_model: `build_model(input_shape, num_classes)` returning an uncompiled model.
        run_dir: Folder to create (must be new or empty).
        splits: Pre-loaded data (otherwise `config.dataset` is loaded).
        verbose: Keras `fit` verbosity (1 = progress bar).
        callbacks: Extra Keras callbacks.

    Returns:
        A `TrainResult`.

    Raises:
        BnnError: bad options, unavailable data, or a run folder that is already used.
    """
    config.validate()
    run_dir = Path(run_dir)
    splits = splits or data_lib.load_dataset(config.dataset, config.data_dir)
    _prepare_run_dir(run_dir)

    precision = resolve_precision(config.precision)
    input_shape = input_shape_for(config, splits)
    augment = (splits.augmentation != "none") if config.augment is None else config.augment
    pipeline_options = dict(
        batch_size=config.batch_size,
        normalization=splits.normalization,
        image_size=input_shape[:2],
        seed=config.seed,
    )
    train_ds = data_lib.make_pipeline(
        splits.train, training=True, augmentation=splits.augmentation if augment else "none",
        **pipeline_options,
    )
    test_ds = data_lib.make_pipeline(splits.test, **pipeline_options)

    tf.keras.utils.set_random_seed(config.seed)
    with precision_policy(precision):
        model = build_model(input_shape, splits.num_classes)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    run_config = {
        **dataclasses.asdict(config),
        "precision_resolved": precision,
        "augment_resolved": augment,
        "input_shape": list(input_shape),
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
        "normalization": splits.normalization.to_dict(),
        "num_train": splits.num_train,
        "num_test": splits.num_test,
        "versions": library_versions(),
    }
    files.write_json(run_dir / CONFIG_FILE, run_config)

    started = time.perf_counter()
    history = model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=test_ds,
        callbacks=[HistoryWriter(run_dir / HISTORY_FILE), *(callbacks or [])],
        verbose=verbose,
    )
    fit_seconds = time.perf_counter() - started

    with files.atomic_path(run_dir / MODEL_FILE) as tmp:
        model.save(tmp)

    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    steps = config.steps_per_epoch or -(-splits.num_train // config.batch_size)
    images_seen = min(steps * config.batch_size, splits.num_train) * config.epochs
    metrics = {
        # Keras' running mean over the last epoch (with augmentation when it is on).
        "train_accuracy": float(history.history["accuracy"][-1]),
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "epochs": config.epochs,
        "wall_time_s": round(fit_seconds, 3),
        "images_per_s": round(images_seen / fit_seconds, 2),
        "params": int(model.count_params()),
    }
    files.write_json(run_dir / METRICS_FILE, metrics)
    return TrainResult(run_dir=run_dir, model=model, metrics=metrics, history=history.history)
