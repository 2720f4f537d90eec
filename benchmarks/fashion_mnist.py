"""Fashion-MNIST benchmark: test accuracy per CPU-minute of BNNs, their float copies and
distilled students, under the same wall-time budget.

Reads the IDX files of Debian's `dataset-fashion-mnist` package (installed with apt-get when
missing) and trains each row with `bnn_keras.training.train` (so every run folder is a normal
one that `bnn convert` / `bnn evaluate` accept), stopped when the row has used its budget of
wall time; its learning rate decays to 0 over that time (cosine). Each binary row is then
converted with Larq Compute Engine, and its flatbuffer is checked: LceBconv2d ops against the
model's binary convolutions, and top-1 agreement with Keras on the 10,000 test images.

Budgets are minutes on the project's reference machine (2 cores, AVX2 only, float32), where
today's default network (QuickNet at section filters 16-128, batch 256, float32) trains at
`REFERENCE_IMAGES_PER_S` images/s. The script first measures that network's steady-state
images/s here and scales every budget by reference / measured, so a 15-minute budget is the
same amount of computation on any machine of this kind; the table shows both clocks.

Each network gives rows by suffix (`VARIANTS`): the BNN, its float copy (`-float`), the BNN
distilled from `--teacher` (`-kd`), and the BNN binarized from its float copy within the same
budget (`-ff`: the float copy trains for `--float-share` of it, then the BNN from its weights).

A curve of test accuracy against minutes is drawn for each run (accuracy.png): the weights are
copied at eight points of the budget and evaluated on the test set after the run, off the clock.

    python benchmarks/fashion_mnist.py --budget 15 --rows quicknet-s2,quicknet-s2-float,resnete
    python benchmarks/fashion_mnist.py --budget 30 --rows quicknet-s2-kd --teacher TEACHER.keras
    python benchmarks/fashion_mnist.py --budget 30 --rows quicknet-s2-stem16-ff --float-share 0.3
    python benchmarks/fashion_mnist.py --budget 1 --rows quicknet-s2 --seeds 0   # a quick look

Every argument is checked before anything is measured, installed, trained or written (the
teacher file loaded, each run's training options checked): a bad one is refused in one line,
`fashion_mnist.py: error: ...`, with exit code 2, and no output folder is left behind.

References:
    - QuickNet: Bannink et al., "Larq Compute Engine" (arXiv 2011.09398).
    - ReActNet: Liu et al., ECCV 2020 (arXiv 2003.03488).
    - Binary ResNetE18: Bethge et al., "Back to Simplicity" (arXiv 1906.08637).
    - Binarizing a trained real-valued network: Martinez et al., "Training Binary Neural
      Networks with Real-to-Binary Convolutions", ICLR 2020 (arXiv 2003.11535).
    - Knowledge distillation: Hinton et al., "Distilling the Knowledge in a Neural Network"
      (arXiv 1503.02531).
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from bnn_keras import files  # noqa: E402  (first: bnn_keras sets up tf-keras for TensorFlow)
import models  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bnn_keras.errors import BnnError  # noqa: E402
from bnn_keras.model_stats import count_binary_convs, model_summary  # noqa: E402
from bnn_keras.options import spell_fields  # noqa: E402
from bnn_keras.training import TrainConfig, train  # noqa: E402
from bnn_keras.training import data as data_lib  # noqa: E402
from bnn_keras.training import recipes  # noqa: E402
from bnn_keras.training.config import MODEL_FILE, RunRecord  # noqa: E402
from bnn_keras.training.precision import PRECISIONS, hardware_summary  # noqa: E402
from bnn_keras.training.starting_point import Teacher  # noqa: E402

# images/s of the default network (below) on the slower of the two AVX2-only 2-core machines
# this project measured it on (float32, batch 256): the machine the budgets are set for.
REFERENCE_IMAGES_PER_S = 184.0
DEFAULT_NETWORK = ("quicknet", {"section_filters": [16, 32, 64, 128]})
DEFAULT_BATCH = 256
# Target of a row: (budget in reference minutes, test accuracy), for the "target" column.
TARGETS = ((15.0, 0.92), (30.0, 0.93))
SNAPSHOTS = 8


@dataclasses.dataclass(frozen=True)
class Row:
    """One configuration of the table.

    Attributes:
        model: Registry name.
        options: Model builder overrides.
        float_copy: Train the float copy (`bnn train --float`) instead of the BNN.
        distill: Distil from `--teacher` (Hinton's soft targets, `--distill-*`).
        float_first: Spend the first `--float-share` of the budget training the float copy,
            then train the BNN from its weights (`bnn train --weights`) for the rest.
        about: A few words for the table.
    """

    model: str
    options: Dict[str, Any]
    float_copy: bool = False
    distill: bool = False
    float_first: bool = False
    about: str = ""


# The rows one network gives, by the suffix of their name: the BNN itself, its float copy,
# the BNN distilled from `--teacher`, and the BNN started from its float copy's weights.
VARIANTS = {
    "": {},
    "-float": {"float_copy": True},
    "-kd": {"distill": True},
    "-ff": {"float_first": True},
}
_VARIANT_ABOUT = {"-float": "float copy", "-kd": "distilled",
                  "-ff": "from its float copy within the budget"}


def network_rows(name: str, model: str, options: Dict[str, Any], about: str,
                 variants: Sequence[str] = ("",)) -> Dict[str, Row]:
    """The rows `name` + suffix of one network, for each suffix of `VARIANTS` in `variants`."""
    return {name + suffix: Row(model, options, **VARIANTS[suffix],
                               about=", ".join([about] + ([_VARIANT_ABOUT[suffix]]
                                                          if suffix else [])))
            for suffix in variants}


_QUICKNET = {"section_filters": [16, 32, 64, 128]}
# Twice the width and half the depth: 1.8x the cost of 16-128 here, 4x the parameters per conv.
_QUICKNET_WIDE = {"section_filters": [32, 64, 128, 256], "section_blocks": [2, 2, 2, 2]}
# 24-192 at half the depth: about the cost of 16-128 here, 2.25x the parameters per conv.
_QUICKNET_24 = {"section_filters": [24, 48, 96, 192], "section_blocks": [2, 2, 2, 2]}
# A stride-2 stem: sections at 14x14, 7x7 and 3x3 (no 28x28 section), 1.45x the default's
# images/s here at the same width per pixel.
_QUICKNET_S2 = {"section_filters": [32, 64, 128], "section_blocks": [4, 4, 4],
                "stem_strides": 2}
# The same at 1.5x the width and 3 blocks per section: about the default's cost here.
_QUICKNET_S2_48 = {"section_filters": [48, 96, 192], "section_blocks": [3, 3, 3],
                   "stem_strides": 2}
# QuickNet-s2 after a 16-wide 3x3 float conv at 28x28 (`stem_input_filters`): 5% more MACs
# (binarized fraction 0.942), about the same images/s here.
_QUICKNET_S2_STEM16 = {**_QUICKNET_S2, "stem_input_filters": 16}
# The same with a 24-wide full-resolution conv (binarized MAC fraction 0.920; 32 would be 0.899).
_QUICKNET_S2_STEM24 = {**_QUICKNET_S2, "stem_input_filters": 24}
# 40-80-160 after the 16-wide conv: 1.56x the binary MACs (binarized fraction 0.953).
_QUICKNET_S2_40_STEM16 = {**_QUICKNET_S2_STEM16, "section_filters": [40, 80, 160]}
_RESNETE = {"stage_filters": [16, 32, 64, 128]}
# ReActNet-A's 14 widths at a quarter (stem 8 ... 256): the cost of the two rows above here.
_REACTNET = {"widths": [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]}
ROWS = {
    **network_rows("quicknet", "quicknet", _QUICKNET, "QuickNet 16-128 (today's default)",
                   ("", "-float", "-kd")),
    **network_rows("quicknet-wide", "quicknet", _QUICKNET_WIDE,
                   "QuickNet 32-256, 2 blocks per section", ("", "-kd")),
    **network_rows("quicknet-24", "quicknet", _QUICKNET_24,
                   "QuickNet 24-192, 2 blocks per section", ("", "-float", "-kd")),
    **network_rows("quicknet-s2", "quicknet", _QUICKNET_S2, "QuickNet 32-128, stride-2 stem",
                   ("", "-float", "-kd", "-ff")),
    **network_rows("quicknet-s2-48", "quicknet", _QUICKNET_S2_48,
                   "QuickNet 48-192, stride-2 stem, 3 blocks per section"),
    **network_rows("quicknet-s2-stem16", "quicknet", _QUICKNET_S2_STEM16,
                   "QuickNet 32-128, 28x28 float conv, stride-2 stem",
                   ("", "-float", "-kd", "-ff")),
    **network_rows("quicknet-s2-stem24", "quicknet", _QUICKNET_S2_STEM24,
                   "QuickNet 32-128, 24-wide 28x28 float conv, stride-2 stem"),
    **network_rows("quicknet-s2-40-stem16", "quicknet", _QUICKNET_S2_40_STEM16,
                   "QuickNet 40-160, 28x28 float conv, stride-2 stem", ("", "-float")),
    **network_rows("resnete", "binary-resnet-e18", _RESNETE, "Binary ResNetE18 16-128",
                   ("", "-kd")),
    **network_rows("reactnet", "reactnet-a", _REACTNET, "ReActNet-A at a quarter width",
                   ("", "-kd")),
}


class ArgumentError(Exception):
    """A bad argument: `main` shows it as one line, argparse's way, and exits with code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, `fashion_mnist.py: error: ...`, exit code 2 (the
    usage it would print first is many lines long: `--help` shows it)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def ensure_fashion_mnist(folder: str) -> None:
    """Installs Debian's dataset-fashion-mnist with apt-get when its IDX files are missing from
    its own folder (`check_data_dir` refuses any other folder without them).

    Raises:
        ArgumentError: the package cannot be installed, or has no IDX files.
    """
    if data_lib.has_idx_files(folder):
        return
    print(f"Fashion-MNIST IDX files not found in {folder}; installing the Debian package "
          "dataset-fashion-mnist (apt-get update && apt-get install -y dataset-fashion-mnist)...")
    try:
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True,
                       stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ArgumentError(f"Could not install dataset-fashion-mnist ({exc}). Install it as "
                            "root, or pass --data-dir with the four Fashion-MNIST IDX files.")
    if not data_lib.has_idx_files(folder):
        raise ArgumentError(f"dataset-fashion-mnist is installed but {folder} has no IDX files; "
                            "pass --data-dir.")


def steady_images_per_second(model_name: str, options: Dict[str, Any], batch_size: int, *,
                             warmup: int = 5, steps: int = 50) -> float:
    """Images/s of `fit` steps after warm-up (tracing excluded), float32, on cached random data.

    Only the convolutions' cost matters here, so random 28x28x1 images measure it as well as
    the real ones.
    """
    tf.keras.backend.clear_session()
    tf.keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = rng.random((batch_size * 4, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch_size * 4)
    model = models.create_model(model_name, input_shape=(28, 28, 1), num_classes=10, **options)
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().repeat()
    marks: List[float] = []

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch in (warmup - 1, warmup + steps - 1):
                marks.append(time.perf_counter())

    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[Clock()])
    tf.keras.backend.clear_session()
    return steps * batch_size / (marks[1] - marks[0])


class TimeScaledSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times `factor`, a variable set from outside the training step."""

    def __init__(self, schedule: tf.keras.optimizers.schedules.LearningRateSchedule,
                 factor: tf.Variable):
        self.schedule, self.factor = schedule, factor

    def __call__(self, step):
        return self.schedule(step) * self.factor


# The shapes of the rate's decay over a row's budget.
DECAYS = ("cosine", "linear")


class TimeDecay(tf.keras.callbacks.Callback):
    """Decay of the learning rates to 0 over `seconds` of wall time: cosine, or linear (the
    schedule Li et al. found best for a fixed budget, "Budgeted Training: Rethinking Deep
    Neural Network Training Under Resource Constraints", ICLR 2020).

    A run stopped by a time budget does not know its step count in advance, so its rate
    decays over the time instead: each optimizer's own schedule (the run's constant rate) is
    multiplied by a factor set before every step. Assigning the optimizer's `learning_rate`
    would not do: Keras recomputes a scheduled rate from the step count at every update. Each
    optimizer of a split one (larq's `CaseOptimizer`, e.g. Adam for the binary weights and SGD
    for the rest) decays from its own peak. The run's schedules are put back when training
    ends, so the saved model.keras has the run's own optimizer configuration.

    The time counts from `started` (a `clock` reading taken before `train`, so that work
    done before `fit`, such as a teacher's pass, counts), or else from the start of `fit`.
    """

    def __init__(self, seconds: float, shape: str = "cosine",
                 clock: Callable[[], float] = time.perf_counter,
                 started: Optional[float] = None):
        super().__init__()
        if shape not in DECAYS:
            raise ValueError(f"Expected a decay shape in {DECAYS}, got {shape!r}.")
        self.seconds, self.shape, self.clock, self.started = seconds, shape, clock, started
        self.factor = tf.Variable(1.0, trainable=False, dtype=tf.float32)
        self.schedules: List[tuple] = []  # (optimizer, the run's schedule)

    def _optimizers(self) -> List[Any]:
        return list(getattr(self.model.optimizer, "optimizers", [self.model.optimizer]))

    def on_train_begin(self, logs=None):
        if self.started is None:
            self.started = self.clock()
        self.factor.assign(1.0)
        self.schedules = []
        for optimizer in self._optimizers():
            schedule = tf.keras.optimizers.schedules.deserialize(
                optimizer.get_config()["learning_rate"])
            self.schedules.append((optimizer, schedule))
            optimizer.learning_rate = TimeScaledSchedule(schedule, self.factor)

    def on_train_batch_begin(self, batch, logs=None):
        progress = min(1.0, (self.clock() - self.started) / self.seconds)
        self.factor.assign(0.5 * (1 + math.cos(math.pi * progress)) if self.shape == "cosine"
                           else 1.0 - progress)

    def on_train_end(self, logs=None):
        for optimizer, schedule in self.schedules:
            optimizer.learning_rate = schedule


class TimeBudget(tf.keras.callbacks.Callback):
    """Stops `fit` once `seconds` of training have passed; counts the images trained on and
    copies the weights at `snapshots` evenly spaced times after `first_mark` seconds (for the
    accuracy-vs-time curve).
    The time counts from `started` (a `time.perf_counter` reading taken before `train`), or
    else from the start of `fit`."""

    def __init__(self, seconds: float, batch_size: int, snapshots: int = SNAPSHOTS,
                 started: Optional[float] = None, first_mark: float = 0.0):
        super().__init__()
        self.seconds, self.batch_size = seconds, batch_size
        # Evenly spaced over [first_mark, seconds]: after a `-ff` row's float stage.
        self.marks = [first_mark + (seconds - first_mark) * (i + 1) / snapshots
                      for i in range(snapshots - 1)]
        self.snapshots: List[tuple] = []  # (seconds, images, weights)
        self.started, self.elapsed = started, 0.0
        self.images = 0

    def on_train_begin(self, logs=None):
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.images += self.batch_size
        self.elapsed = time.perf_counter() - self.started
        if self.marks and self.elapsed >= self.marks[0]:
            self.marks.pop(0)
            # Copying ~1 M floats takes milliseconds; the evaluation happens after the run.
            self.snapshots.append((self.elapsed, self.images, self.model.get_weights()))
        if self.elapsed >= self.seconds:
            self.model.stop_training = True


def test_arrays(splits: data_lib.DataSplits, run_dir: Path):
    """The test split normalized as the run normalized it: (x, y) arrays."""
    normalization = RunRecord.read(run_dir).normalization
    images, labels = zip(*[(x, y) for x, y in splits.test.as_numpy_iterator()])
    return normalization.apply(np.stack(images)).astype(np.float32), np.asarray(labels)


def top1(model: tf.keras.Model, x: np.ndarray) -> np.ndarray:
    """The class each image is given."""
    return model.predict(x, batch_size=500, verbose=0).argmax(-1)


def accuracy(model: tf.keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(top1(model, x) == y))


def check_flatbuffer(model: tf.keras.Model, x: np.ndarray, keras_top1: np.ndarray,
                     run_dir: Path) -> Dict[str, Any]:
    """Converts a BNN with LCE and checks its flatbuffer against the Keras model, whose
    classes of `x` are `keras_top1`."""
    from convert.converter import convert_to_flatbuffer
    from convert.flatbuffer import op_histogram
    from convert.isolated import isolated_predict

    flatbuffer = convert_to_flatbuffer(model, target="arm64")
    files.write_bytes(run_dir / "model.tflite", flatbuffer.data)
    lce_top1 = isolated_predict(flatbuffer, x, timeout=1800).reshape(len(x), -1).argmax(-1)
    return {
        "lce_bconv2d": op_histogram(flatbuffer.data).get("LceBconv2d", 0),
        "binary_convs": count_binary_convs(model),
        "agreement": float(np.mean(keras_top1 == lce_top1)),
        "tflite_bytes": len(flatbuffer.data),
    }


def teacher_of(row: Row, seed: int, args: argparse.Namespace,
               earlier: Sequence[Dict[str, Any]]):
    """The teacher of a distilled row and the wall time its training counts: (path, seconds).

    `--teacher ROW` is that row's run of the same seed in this invocation (trained before, its
    time added to the student's); a path is a shipped teacher, whose time is not counted.
    """
    if not row.distill:
        return None, 0.0
    if args.teacher in ROWS:
        for result in earlier:
            if result["row"] == args.teacher and result["seed"] == seed:
                return result["run_dir"], result["wall_time_s"]
        raise AssertionError("check_teachers lets no such run start")
    return args.teacher, 0.0


def check_teachers(runs: Sequence[tuple], teacher: Optional[str]) -> None:
    """Refuses, before any training, a distilled run without a teacher: no `--teacher`, or a
    teacher row without a run of the same seed listed before it.

    Raises:
        ArgumentError: naming the run.
    """
    for i, (name, seed) in enumerate(runs):
        if not ROWS[name].distill:
            continue
        if teacher is None:
            raise ArgumentError(f"Row {name} distils from a teacher: give --teacher (a row of "
                                "this invocation, a run folder or a Keras model file).")
        if teacher in ROWS and (teacher, seed) not in runs[:i]:
            raise ArgumentError(f"--teacher {teacher}: list that row with seed {seed} before "
                                f"{name} in --rows.")


def row_config(row: Row, seed: int, args: argparse.Namespace, *, float_copy: bool,
               weights: Optional[str] = None, teacher: Optional[str] = None) -> TrainConfig:
    """The `TrainConfig` of one run of a row (or of a `-ff` row's float stage)."""
    return TrainConfig(
        model=row.model, model_options=dict(row.options), dataset="fashion_mnist",
        data_dir=args.data_dir, image_size=28,
        # An upper bound: the budget stops the run, and validation (monitoring only; the test
        # accuracy is measured at the end) never runs inside it.
        epochs=1000, validation_freq=1000, batch_size=args.batch_size,
        optimizer=args.optimizer, learning_rate=args.lr,
        float_learning_rate=args.float_lr if args.optimizer == "adam-sgd" else None,
        schedule="constant", seed=seed, precision=args.precision,
        label_smoothing=args.label_smoothing,
        augment=args.augment != "none", float_copy=float_copy, weights=weights,
        teacher=teacher,
        distill_loss=args.distill_loss if teacher else None,
        distill_weight=args.distill_weight if teacher else None,
        distill_temperature=args.distill_temperature if teacher else None,
        distill_cache=bool(teacher) and args.distill_cache,
    )


def float_stage(name: str, row: Row, seed: int, seconds: float, args: argparse.Namespace,
                splits: data_lib.DataSplits, started: float):
    """The first stage of a `-ff` row: its float copy, trained for `seconds` from `started`
    with the rate decayed to 0 over them; the BNN then starts from its weights, as
    Real-to-Binary's and ReActNet's binarization starts from a trained real-valued network
    (Martinez et al., ICLR 2020; Liu et al., ECCV 2020), here within the row's budget.

    Returns:
        (its run folder, its model after training, the images it trained on).
    """
    run_dir = Path(args.output) / f"{name}-seed{seed}-float-stage"
    timer = TimeBudget(seconds, args.batch_size, started=started)
    result = train(row_config(row, seed, args, float_copy=True), None, run_dir, splits=splits,
                   verbose=2, callbacks=[TimeDecay(seconds, args.decay, started=started), timer])
    return run_dir, result.model, timer.images


def run_row(name: str, row: Row, seed: int, budget_s: float, args: argparse.Namespace,
            splits: data_lib.DataSplits, earlier: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Trains one row for `budget_s` seconds of wall time and measures it."""
    run_dir = Path(args.output) / f"{name}-seed{seed}"
    teacher, teacher_time_s = teacher_of(row, seed, args, earlier)
    cached = row.distill and args.distill_cache
    # A cached teacher's pass over the training set, and a `-ff` row's float stage, happen
    # before the BNN's `fit`: start the clocks before them, so that they count in the budget.
    started = time.perf_counter() if cached or row.float_first else None
    weights, float_model, float_stage_s, float_images = None, None, 0.0, 0
    if row.float_first:
        float_dir, float_model, float_images = float_stage(
            name, row, seed, budget_s * args.float_share, args, splits, started)
        weights = str(float_dir / MODEL_FILE)
        float_stage_s = time.perf_counter() - started
    config = row_config(row, seed, args, float_copy=row.float_copy, weights=weights,
                        teacher=teacher)
    # The BNN's rate decays over what is left of the budget, from a peak at its start.
    decay_started = None if started is None else time.perf_counter()
    decay = TimeDecay(budget_s - float_stage_s, args.decay, started=decay_started)
    timer = TimeBudget(budget_s, args.batch_size, started=started, first_mark=float_stage_s)
    result = train(config, None, run_dir, splits=splits, verbose=2, callbacks=[decay, timer])
    x, y = test_arrays(splits, run_dir)
    # The snapshots are of the fitted model (a distilled row's holds the student's layers and
    # its teacher, or the cached teacher logits' input); the student shares its variables.
    fitted = timer.model
    final_weights = fitted.get_weights()
    curve = []
    # Images count from the start of the row (a `-ff` row's float stage included).
    for seconds, images, snapshot in timer.snapshots:
        fitted.set_weights(snapshot)
        curve.append((seconds, float_images + images, accuracy(result.model, x, y)))
    fitted.set_weights(final_weights)
    final_top1 = top1(result.model, x)
    curve.append((timer.elapsed, float_images + timer.images, float(np.mean(final_top1 == y))))
    stats = model_summary(result.model)
    row_result = {
        "row": name, "seed": seed,
        "about": row.about + (", teacher's logits cached" if cached else ""), "model": row.model,
        "options": row.options, "float_copy": row.float_copy, "distill": row.distill,
        "optimizer": args.optimizer, "learning_rate": args.lr,
        "float_learning_rate": config.float_learning_rate,
        "batch_size": args.batch_size,
        "decay": args.decay,
        "augment": args.augment,
        "label_smoothing": args.label_smoothing,
        "test_accuracy": curve[-1][2],
        "wall_time_s": timer.elapsed,
        "teacher": teacher,
        "teacher_time_s": teacher_time_s,
        "distill_cache": cached,
        "float_first": row.float_first,
        "float_share": args.float_share if row.float_first else None,
        "float_stage_s": float_stage_s,
        "float_stage_accuracy": (None if float_model is None else accuracy(float_model, x, y)),
        "images_per_s": curve[-1][1] / timer.elapsed,
        "epochs": curve[-1][1] / splits.num_train,
        "binary_mac_fraction": stats.binary_mac_fraction,
        "params": stats.total_params,
        "curve": curve,
        "run_dir": str(run_dir),
    }
    if not row.float_copy:
        row_result.update(check_flatbuffer(result.model, x, final_top1, run_dir))
    return row_result


def reference_minutes(seconds: float, scale: float) -> float:
    """Seconds here as minutes on the reference machine."""
    return seconds / scale / 60


def optimizer_text(result: Dict[str, Any]) -> str:
    """"Adam 0.005, 256" or "Adam 0.005 + SGD 0.1, 256", then what else differs from the
    defaults ("Adam 0.01, 128, label smoothing 0.1"). results.json files of before these
    fields: Adam 2e-3, the default then, at a constant rate (see benchmarks/README.md)."""
    if "optimizer" not in result:
        return "Adam 0.002 (constant), 256"
    rates = f"Adam {result['learning_rate']:g}"
    if result["optimizer"] == "adam-sgd":
        rates += f" + SGD {result['float_learning_rate']:g}"
    return ", ".join([rates, str(result["batch_size"]), *training_changes(result)])


def training_changes(result: Dict[str, Any]) -> List[str]:
    """What a run changed from the default training besides its rate and batch size: "label
    smoothing 0.1", "linear decay", "crop_flip", "float copy for 30% of the budget (91.50%)"
    (a `-ff` row's float stage and its test accuracy); nothing for results.json files without
    these fields."""
    changes = []
    if result.get("label_smoothing"):
        changes.append(f"label smoothing {result['label_smoothing']:g}")
    if result.get("decay", "cosine") != "cosine":
        changes.append(f"{result['decay']} decay")
    if result.get("augment", "none") != "none":
        changes.append(result["augment"])
    if result.get("float_first"):
        changes.append(f"float copy for {result['float_share']:.0%} of the budget "
                       f"({result['float_stage_accuracy']:.2%})")
    return changes


def print_table(results: Sequence[Dict[str, Any]]) -> None:
    print("| row | seed | rate, batch | test acc. | wall here | = reference min (with teacher) | "
          "images/s | epochs | binary-MAC fraction | LceBconv2d | Keras/LCE agreement | "
          ".tflite bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lce = (f"{r['lce_bconv2d']} / {r['binary_convs']}" if "lce_bconv2d" in r else "-")
        agree = f"{r['agreement']:.2%}" if "agreement" in r else "-"
        size = f"{r['tflite_bytes']:,}" if "tflite_bytes" in r else "-"
        print(f"| {r['row']} ({r['about']}) | {r['seed']} | {optimizer_text(r)} | "
              f"{r['test_accuracy']:.2%} | {r['wall_time_s'] / 60:.1f} min | "
              f"{reference_minutes(r['wall_time_s'], r['scale']):.1f}"
              + (f" ({reference_minutes(r['wall_time_s'] + r['teacher_time_s'], r['scale']):.1f})"
                 if r["teacher_time_s"] else "") + " | "
              f"{r['images_per_s']:.0f} | {r['epochs']:.2f} | {r['binary_mac_fraction']:.3f} | "
              f"{lce} | {agree} | {size} |")


def plot(results: Sequence[Dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy against reference minutes, one line per run (each with its `scale`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(results):
        # A distilled row starts when its teacher (trained in this invocation) has finished.
        minutes = [reference_minutes(r["teacher_time_s"] + s, r["scale"]) for s, _, _ in r["curve"]]
        style = ":" if r["distill"] else "--" if r["float_copy"] else "-"
        ax.plot(minutes, [100 * a for _, _, a in r["curve"]], style, marker="o", markersize=3,
                color=colors[i % len(colors)],
                label=", ".join([f"{r['row']} seed {r['seed']} ({r['budget']:g} min",
                                 f"batch {r.get('batch_size', 256)}", *training_changes(r)]) + ")")
    for budget, target in TARGETS:
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=0.8)
        ax.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("wall minutes on the reference machine (2 cores, AVX2, float32)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    # From a little below the lowest final accuracy: early points and dips of unstable runs
    # may leave the plot, the end of every run stays in it.
    lowest = min(100 * r["curve"][-1][2] for r in results)
    ax.set_ylim(max(0.0, min(85.0, math.floor(lowest) - 2)), 94)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def read_results(paths: Sequence[str]) -> List[tuple]:
    """The results.json files of earlier invocations, each with the line that says which
    machine measured it: [(line, its results)], read before anything is printed or written.

    Raises:
        ArgumentError: a file that is not a results.json of this benchmark.
    """
    measured = []
    for path in paths:
        try:
            content = json.loads(Path(path).read_text())
            # results.json files written before the machine was recorded name none.
            line = (f"- {path}: {content.get('machine', 'machine not recorded')}; default "
                    f"network {content['default_images_per_s']:.0f} images/s, so "
                    f"{content['budget']:g} reference minutes = "
                    f"{content['budget'] * content['scale']:.2f} min there")
            measured.append((line, list(content["results"])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ArgumentError(f"--combine {path}: not a results.json of this benchmark "
                                f"({error}); give the results.json of an OUTPUT folder.")
    return measured


def combine(measured: Sequence[tuple], output: Path) -> None:
    """One table and one PNG of the runs of several invocations (`read_results`), after a line
    per invocation saying which machine measured it: their rows' minutes "here" were minutes
    there."""
    results = []
    for line, rows in measured:
        print(line)
        results += rows
    print()
    print_table(results)
    output.mkdir(parents=True, exist_ok=True)
    plot(results, output / "accuracy.png",
         "Fashion-MNIST, test accuracy against wall time on the reference machine")
    print(f"\n{output / 'accuracy.png'}")


# ----------------------------------------------------------------------------------------------
# The arguments, all checked before anything is measured, installed, trained or written

# numpy's generator, which Keras seeds, takes seeds from 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# How this script spells the `TrainConfig` fields it sets, for the messages of its checks.
FIELD_FLAGS = {
    "learning_rate": "--lr", "float_learning_rate": "--float-lr", "batch_size": "--batch-size",
    "label_smoothing": "--label-smoothing", "precision": "--precision", "augment": "--augment",
    "seed": "--seeds", "teacher": "--teacher", "distill_loss": "--distill-loss",
    "distill_weight": "--distill-weight", "distill_temperature": "--distill-temperature",
    "distill_cache": "--distill-cache",
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")


def parse_seeds(text: str, separator: str) -> Optional[List[int]]:
    """The seeds in `text` ("0,1,2"), or None when one of them is not an integer from 0 to
    `MAX_SEED` (or is missing)."""
    items = [item.strip() for item in text.split(separator)]
    if not all(item.isascii() and item.isdigit() for item in items):
        return None
    seeds = [int(item) for item in items]
    return seeds if max(seeds) <= MAX_SEED else None


def parse_runs(rows: str, seeds: Sequence[int]) -> List[tuple]:
    """The (row name, seed) pairs of `--rows`, in order: each row with `seeds`, or with its
    own (`ROW@S1+S2`).

    Raises:
        ArgumentError: no row, an unknown row, bad seeds after @, or a run listed twice (both
            would train into one run folder).
    """
    specs = [spec.strip() for spec in rows.split(",") if spec.strip()]
    if not specs:
        raise ArgumentError(f"--rows {rows!r} names no row; give one or more of "
                            f"{', '.join(ROWS)}, separated by commas.")
    runs: List[tuple] = []
    for spec in specs:
        name, at, only = (part.strip() for part in spec.partition("@"))
        if name not in ROWS:
            raise ArgumentError(f"--rows: unknown row {name!r}; choose from {', '.join(ROWS)}.")
        row_seeds = parse_seeds(only, "+") if at else seeds
        if row_seeds is None:
            raise ArgumentError(f"--rows {spec}: give the seeds after @ as integers from 0 to "
                                f"{MAX_SEED} separated by +, e.g. {name}@0+1.")
        for seed in row_seeds:
            if (name, seed) in runs:
                raise ArgumentError(f"--rows lists {name} with seed {seed} twice; list each run "
                                    "once.")
            runs.append((name, seed))
    return runs


def check_numbers(args: argparse.Namespace) -> None:
    """Refuses a budget, speed or fraction out of range and any number that is not finite
    (the training checks the ranges of its own options, `check_training_options`): a budget of
    nan would never be reached, so the run would train for its 1,000 epochs."""
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise ArgumentError(f"--budget {args.budget:g}: give a finite number of reference "
                            "minutes > 0, e.g. 15.")
    speed = args.default_images_per_s
    if speed is not None and not (math.isfinite(speed) and speed > 0):
        raise ArgumentError(f"--default-images-per-s {speed:g}: give the default network's "
                            "images/s here, a finite number > 0.")
    if not 0 < args.float_share < 1:
        raise ArgumentError(f"--float-share {args.float_share:g}: give a fraction of the budget "
                            "between 0 and 1, e.g. 0.3.")
    for flag, value in (("--lr", args.lr), ("--float-lr", args.float_lr),
                        ("--label-smoothing", args.label_smoothing),
                        ("--distill-weight", args.distill_weight),
                        ("--distill-temperature", args.distill_temperature)):
        if value is not None and not math.isfinite(value):
            raise ArgumentError(f"{flag} {value:g}: give a finite number.")


def check_training_options(runs: Sequence[tuple], args: argparse.Namespace) -> None:
    """Each run's `TrainConfig` (and a `-ff` row's float stage's) passes the training's own
    checks, which would otherwise fail only when that run starts, after the earlier runs.

    Raises:
        ArgumentError: the training's message, with this script's options.
    """
    for name, seed in runs:
        row = ROWS[name]
        configs = [row_config(row, seed, args, float_copy=row.float_copy,
                              teacher=args.teacher if row.distill else None)]
        if row.float_first:
            configs.append(row_config(row, seed, args, float_copy=True))
        for config in configs:
            try:
                config.validate()
            except BnnError as exc:
                raise ArgumentError(spell_fields(str(exc), FIELD_FLAGS)) from None


def check_teacher_file(teacher: Optional[str], precision: str) -> None:
    """A `--teacher` that is not a row must be a finished run folder or a Keras model file
    that loads; checked here, since a distilled run starts after the runs before it.

    Raises:
        ArgumentError: it does not exist, or is not a run folder or a loadable model.
    """
    if teacher is None or teacher in ROWS:
        return
    if not Path(teacher).exists():
        raise ArgumentError(f"--teacher {teacher} does not exist; give a row of this "
                            "invocation, a run folder of bnn train or a Keras model file "
                            "(.keras, .h5).")
    try:
        Teacher.of_path(teacher).load(precision)
    except BnnError as exc:
        message = spell_fields(str(exc), FIELD_FLAGS)
        raise ArgumentError(message if "--teacher" in message else
                            f"--teacher {teacher}: {message}") from None
    finally:
        tf.keras.backend.clear_session()


def check_data_dir(folder: str) -> None:
    """The IDX files must be in `folder`, unless it is the Debian package's own folder, where
    `ensure_fashion_mnist` installs them (apt-get cannot put them anywhere else).

    Raises:
        ArgumentError: a folder without them.
    """
    if data_lib.has_idx_files(folder) or (
            Path(folder).resolve() == Path(data_lib.DEBIAN_FASHION_MNIST_DIR).resolve()):
        return
    raise ArgumentError(f"--data-dir {folder} has no Fashion-MNIST IDX files "
                        f"({', '.join(_IDX_FILES)}, each may be .gz); give the folder that "
                        "holds them.")


def check_output(output: Path) -> None:
    """`--output` must be a new (or empty) folder that can be created: the run folders of an
    earlier invocation are never written into.

    Raises:
        ArgumentError: a file, a folder with files in it, or an unwritable location.
    """
    if output.exists():
        if not output.is_dir():
            raise ArgumentError(f"--output {output} is not a folder; give a new folder.")
        if any(output.iterdir()):
            raise ArgumentError(f"--output {output} is not empty; give a new folder.")
    try:
        files.check_writable_folder(output, what="--output")
    except BnnError as exc:
        raise ArgumentError(str(exc)) from None


def check_arguments(args: argparse.Namespace) -> List[tuple]:
    """Checks every argument of a benchmark run, creating and changing nothing.

    Returns:
        The (row name, seed) runs, in order.

    Raises:
        ArgumentError: one line saying which argument is wrong and what to give instead.
    """
    check_numbers(args)
    seeds = parse_seeds(args.seeds, ",")
    if seeds is None:
        raise ArgumentError(f"--seeds {args.seeds!r}: give seeds as integers from 0 to "
                            f"{MAX_SEED} separated by commas, e.g. 0,1,2.")
    runs = parse_runs(args.rows, seeds)
    check_teachers(runs, args.teacher)
    check_training_options(runs, args)
    check_teacher_file(args.teacher, args.precision)
    check_data_dir(args.data_dir)
    check_output(Path(args.output))
    return runs


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = OneLineParser(prog=Path(__file__).name,
                           description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--rows", default="quicknet-s2-float,quicknet-s2",
                        help=f"comma list of {', '.join(ROWS)}; ROW@S1+S2 runs that row with "
                             "these seeds only")
    parser.add_argument("--seeds", default="0", help="comma list of seeds, one run of each row "
                        "per seed")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="minutes of wall time on the reference machine per run")
    parser.add_argument("--default-images-per-s", type=float, default=None,
                        help="skip measuring the default network here: use this images/s")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    # 1e-2 was best for quicknet-s2 at 15 minutes (91.8% against 91.1% at 5e-3, 91.2% at 2e-2).
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam peak rate (of the binary "
                        "weights with --optimizer adam-sgd), decayed to 0 over the budget")
    parser.add_argument("--decay", default="cosine", choices=DECAYS,
                        help="the shape of the rate's decay over the budget")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "adam-sgd"),
                        help="adam-sgd: Adam for the binary weights, SGD with momentum 0.9 "
                             "at --float-lr for the rest (QuickNet's recipe)")
    parser.add_argument("--float-lr", type=float, default=recipes.Recipe.float_learning_rate,
                        help="SGD peak rate of the float weights with --optimizer adam-sgd "
                             "[default: %(default)g]")
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--augment", default="none", choices=("none", "crop_flip"),
                        help="crop_flip: a random crop after 3-pixel reflection padding and a "
                             "random horizontal flip")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS,
                        help="float32 (the reference machine's), mixed_bfloat16 or auto")
    parser.add_argument("--teacher", default=None,
                        help="what the -kd rows distil from: a row of this invocation (e.g. "
                             "quicknet-float: its run of the same seed, its time counted), or "
                             "a run folder or Keras model file (a shipped teacher, not counted)")
    parser.add_argument("--distill-loss", default="kl", choices=("kl", "distribution"))
    parser.add_argument("--distill-weight", type=float, default=None)
    parser.add_argument("--distill-temperature", type=float, default=None)
    parser.add_argument("--distill-cache", action="store_true",
                        help="the -kd rows compute the teacher's logits on the training set "
                             "once, before training (counted in their budget), instead of at "
                             "every step")
    parser.add_argument("--float-share", type=float, default=0.3,
                        help="the -ff rows train their float copy for this fraction of the "
                             "budget, then the BNN from its weights for the rest "
                             "[default: %(default)g]")
    parser.add_argument("--data-dir", default=data_lib.DEBIAN_FASHION_MNIST_DIR,
                        help="the folder of the four Fashion-MNIST IDX files [default: "
                             "%(default)s, installed with apt-get when missing]")
    parser.add_argument("--output", default=f"/tmp/bnn-fashion-mnist-{int(time.time())}",
                        help="new folder for the run folders, results.json and accuracy.png")
    parser.add_argument("--combine", nargs="+", metavar="RESULTS_JSON", default=None,
                        help="train nothing: print one table and draw one PNG (in --output) "
                             "of the runs in these results.json files")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    output = Path(args.output)
    try:
        if args.combine:
            check_output(output)
            measured = read_results(args.combine)
        else:
            runs = check_arguments(args)
            ensure_fashion_mnist(args.data_dir)
    except ArgumentError as exc:
        parser.error(str(exc))
    if args.combine:
        combine(measured, output)
        return

    default_ips = args.default_images_per_s or steady_images_per_second(
        DEFAULT_NETWORK[0], DEFAULT_NETWORK[1], DEFAULT_BATCH)
    scale = REFERENCE_IMAGES_PER_S / default_ips
    budget_s = args.budget * 60 * scale
    load = os.getloadavg()[0]
    machine = hardware_summary()
    print(f"Default network here: {default_ips:.0f} images/s (reference machine: "
          f"{REFERENCE_IMAGES_PER_S:.0f}); budget {args.budget:g} reference minutes = "
          f"{budget_s / 60:.2f} min here. Load average {load:.2f}.", flush=True)

    splits = data_lib.load_dataset("fashion_mnist", args.data_dir)
    # Fashion-MNIST has no standard augmentation in bnn (MNIST's digits must not be flipped).
    splits = dataclasses.replace(splits, augmentation=args.augment)
    # Made once every check has passed and the data is loaded: a refusal leaves no folder.
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for name, seed in runs:
        results.append(run_row(name, ROWS[name], seed, budget_s, args, splits, results))
        results[-1].update(scale=scale, budget=args.budget)
        shown = {k: v for k, v in results[-1].items() if k != "curve"}
        print(json.dumps(shown), flush=True)
        files.write_json(output / "results.json", {
            "machine": machine, "default_images_per_s": default_ips, "scale": scale,
            "budget": args.budget, "results": results})

    rates = (f"Adam {args.lr:g}" if args.optimizer == "adam" else
             f"Adam {args.lr:g} (binary weights) + SGD {args.float_lr:g} (the rest)")
    title = (f"Fashion-MNIST, {args.budget:g} reference minutes per run, batch {args.batch_size}, "
             f"{rates} {args.decay} over the budget, {args.precision}")
    print(f"\n{title}; measured on {machine}, default network {default_ips:.0f} "
          f"images/s here (x{1 / scale:.2f} the reference machine's {REFERENCE_IMAGES_PER_S:.0f}); "
          f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
          + (f"; teacher {args.teacher} ({args.distill_loss})" if args.teacher else "") + "\n")
    print_table(results)
    plot(results, output / "accuracy.png", title)
    print(f"\nRun folders, results.json and accuracy.png in {output}")


if __name__ == "__main__":
    main()
