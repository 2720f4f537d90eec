"""Training a BNN with Keras `fit` into a self-describing run folder.

A run folder holds everything needed to continue, convert or evaluate the run later:

    RUN_DIR/
        model.keras     the trained model (`tf.keras.models.load_model` after `import bnn_keras`):
                        its last epoch, or its best with `keep` best (`best_epoch`)
        best.keras      the best epoch when it is not the last (last.keras with `keep` best)
        best/           the weights of the best epoch so far, while the run goes on
        config.json     every option used, the resolved precision, input shape, class names,
                        the input normalization, and library versions
                        (`bnn_keras.training.config.RunRecord` writes and reads it)
        history.csv     per-epoch loss/accuracy/flip ratios (rewritten atomically every epoch)
        flips.csv       per-layer sign-flip ratios (`SignFlipTracker`), flips.png at the end
        status.json     running / interrupted / failed / finished, and epochs completed
                        (a report for people; resuming reads the files themselves)
        backup/         the last complete epoch (weights, optimizer state, epoch counter),
                        Keras' BackupAndRestore; `resume` continues an interrupted run from
                        it, or extends a finished one to more epochs
        metrics.json    final train/test accuracy, wall time and throughput
        .bnn.lock       held by the process that trains in the folder (`bnn_keras.training.run_lock`)

A run is finished when model.keras and metrics.json are there for its recorded epochs; both
are written, with the final status, in one step that Ctrl-C and SIGTERM cannot split.

`train` and `resume_training` go through the same steps, one function each:
`_prepare_folder` (an unused folder, or the record and start epoch of the run to resume),
`_load_data`, `_build`, `_compile`, `_record` (config.json), `_fit` and `_finish`. A resume
takes the folder's lock first; a new run loads its data and builds its model before it creates
the folder, so that a data set, model option or weights file that is refused leaves nothing.

The model comes from a `build_model(input_shape, num_classes)` callable, or, when none is
given, from the registry (`starting_point.registry_model`: `models.create_model` with the
config's model options and weights file, then its training tricks); with `float_copy`, its
float copy (`bnn_keras.training.baselines.float_equivalent`) is trained instead.

With `teacher`, the model is the student of `bnn_keras.distillation`: `fit` trains
`distillation_model(student, teacher)`, which holds the frozen teacher (so the epoch backup
holds it too), while the run folder's model.keras, the sign-flip tracker and the test accuracy
are the student's. The teacher (`starting_point.Teacher`) is a run folder (whose data must be
the student's) or a model file, checked before the run folder is created, then copied into it
(RUN_DIR/inputs, `run_inputs`) with its file's sha256; a resume loads that copy and refuses one
that changed, so neither moving the run nor changing the original affects it. With `distill_cache`
(no augmentation), the teacher's logits on the training set are computed once, before `fit`,
and travel with the images (`cached_distillation_model`): the fitted model holds no teacher.

history.csv and metrics.json carry each epoch's wall time and the run's wall time at its end
(earlier sessions of a resumed run included), and metrics.json the time the run took to
reach its best test accuracy.
"""

import contextlib
import csv
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from bnn_keras import files
from bnn_keras.binary import quantized_kernel_layers
from bnn_keras.errors import BnnError, first_line
from bnn_keras.training import data as data_lib
from bnn_keras.training import best_epoch, binarized, distribute, recipes, run_lock, signals
from bnn_keras.training.config import (
    BACKUP_DIR, HISTORY_FILE, METRICS_FILE, MODEL_FILE, RunRecord, TrainConfig, resolve_recipe,
)
from bnn_keras.training.precision import (
    as_float32, precision_policy, resolve_precision, warn_if_emulated_bf16,
)
from bnn_keras.training.progress import check_resumable
from bnn_keras.training.report import plan_lines
from bnn_keras.training import run_inputs
from bnn_keras.training.starting_point import BuildModel, Start, Teacher, registry_model
from bnn_keras.training.run_callbacks import (
    EPOCH_TIME_KEY, RUN_TIME_KEY, CompactProgbar, EpochTimer, NonFiniteLossError, StatusWriter,
    run_folder_callbacks, run_time_at, write_status,
)



@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the run folder, the trained model and its final metrics."""

    run_dir: Path
    model: tf.keras.Model
    metrics: Dict[str, Any]
    history: Dict[str, List[float]]


class TrainingInterruptedError(BnnError):
    """Ctrl-C or SIGTERM during a run: the last complete epoch is kept for `--resume` (before
    `fit`, the run folder is left as it was)."""

    exit_code = 130  # the shell's convention for SIGINT


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


def input_shape_for(config: TrainConfig, splits: data_lib.DataSplits) -> Tuple[int, int, int]:
    """The model input shape: the chosen (or data set default) side, native channels."""
    height, width, channels = splits.image_shape
    side = config.image_size or splits.default_image_size
    return (side, side, channels) if side else (height, width, channels)


def train(
    config: TrainConfig,
    build_model: Optional[BuildModel],
    run_dir: Path,
    *,
    splits: Optional[data_lib.DataSplits] = None,
    verbose: int = 1,
    callbacks: Optional[List[tf.keras.callbacks.Callback]] = None,
    resume: bool = False,
    recipe: Optional[recipes.Recipe] = None,
    report: Optional[Callable[[str], None]] = None,
) -> TrainResult:
    """Trains a model and writes the run folder.

    The process holds the run folder's lock (`bnn_keras.training.run_lock`) from start to end, so a
    second run on the same folder is refused at once. Ctrl-C/SIGTERM and non-finite losses
    stop training with the last complete epoch kept in RUN_DIR/backup; `resume_training`
    (`bnn train --resume RUN_DIR`) continues from it and ends with the same number of epochs
    as an uninterrupted run. Finishing (model.keras, metrics.json, the final status) is one
    step that Ctrl-C and SIGTERM do not split: they are deferred until it is done. The backup
    of the last epoch stays in the finished run, so `resume_training(..., epochs=M)` can
    extend it.

    Messages name the `TrainConfig` fields in backticks (`bnn_keras.options.spell_fields`).

    With `config.teacher`, the model is distilled from that run folder or model file
    (`bnn_keras.distillation`); the teacher is checked against the data and the model before
    the run folder is created, then copied into it with its sha256 (`run_inputs`), and a resume
    reads that copy. The returned model, model.keras and the flip tracker are the student's. With
    `config.float_copy`, the model's float copy is trained instead.

    With `config.weights`, the run starts from that weights file (`registry_model`); the
    file is checked against the model before the run folder is created, and its sha256 and
    the variant it selected are recorded and the file is copied into the run folder
    (`run_inputs`), so a resume rebuilds that model and continues from the run's own epoch
    backup (or, before the first complete epoch, from that copy).

    Args:
        config: The run's options.
        build_model: `build_model(input_shape, num_classes)` returning an uncompiled model,
            or None for the registry model `config.model` (`registry_model`; the only choice
            with `config.weights`).
        run_dir: Folder to create (must be new or empty), or to continue when `resume`.
        splits: Pre-loaded data (otherwise `config.dataset` is loaded).
        verbose: Keras `fit` verbosity (1 = progress bar).
        callbacks: Extra Keras callbacks.
        resume: Continue the run in `run_dir` (use `resume_training`).
        recipe: The recipe to train with instead of the one `config.recipe` resolves to (a
            stage of a staged recipe, `bnn_keras.training.stages`, whose step boundaries and
            factors no option holds); its epochs and batch size become `config`'s. A resume
            is given the same recipe again.
        report: Called with each line of the run's plan (`plan_lines`: data and where it comes
            from, model, recipe, precision) before the first epoch; None says nothing.

    Returns:
        A `TrainResult`.

    Raises:
        BnnError: bad options, unavailable data, a weights file or teacher that does not fit
            the model or data, or a run folder that is already used.
        RunFolderBusyError: another process is training in `run_dir`.
        TrainingInterruptedError: Ctrl-C or SIGTERM while the run is prepared or trains.
        NonFiniteLossError: the loss became NaN/inf.
    """
    return _run(config, build_model, Path(run_dir), resume=resume, previous=None, splits=splits,
                verbose=verbose, callbacks=callbacks, fixed_recipe=recipe, report=report)


def resume_training(
    run_dir: Path, build_model: Optional[BuildModel] = None, *, epochs: Optional[int] = None,
    record: Optional[RunRecord] = None, teacher: Optional[str] = None, **kwargs
) -> TrainResult:
    """Continues a run from its last complete epoch, with its recorded options.

    Args:
        run_dir: The run folder.
        build_model: As for `train` (None: the registry model the run recorded, as the
            variant it was built as).
        epochs: A new total number of epochs (at least the completed ones): extends a finished
            or interrupted run; recorded in config.json. None keeps the recorded number.
        record: The run's `RunRecord`, when the caller has already read it (it is not read
            again; a config.json that changed since is refused).
        teacher: For a distilled run of an earlier bnn, which kept no copy of its teacher
            (`run_inputs`): the teacher's run folder or model file, by any path; used only
            when its sha256 is the recorded one.
        **kwargs: Passed on to `train`.

    Raises:
        BnnError: not a run folder, the run already finished (and `epochs` does not extend it),
            or `epochs` is below the completed epochs.
    """
    run_dir = Path(run_dir)
    record = RunRecord.read(run_dir) if record is None else record
    config = record.config
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    return _run(config, build_model, run_dir, resume=True, previous=record,
                fixed_recipe=kwargs.pop("recipe", None), teacher_source=teacher, **kwargs)


@dataclasses.dataclass
class _Data:
    """What the data step hands to the others: the splits, the input pipelines and sizes."""

    splits: data_lib.DataSplits
    input_shape: Tuple[int, int, int]
    augment: bool
    steps: int
    train: tf.data.Dataset
    test: tf.data.Dataset
    # What `fit` validates on when its model takes other inputs than the student's.
    validation: Optional[tf.data.Dataset] = None


def _run(config: TrainConfig, build_model: Optional[BuildModel], run_dir: Path, *,
         resume: bool, previous: Optional[RunRecord],
         splits: Optional[data_lib.DataSplits] = None, verbose: int = 1,
         callbacks: Optional[List[tf.keras.callbacks.Callback]] = None,
         fixed_recipe: Optional[recipes.Recipe] = None,
         teacher_source: Optional[str] = None,
         report: Optional[Callable[[str], None]] = None) -> TrainResult:
    """`train` and `resume_training`: one step after the other, the run folder locked from
    `_prepare_folder` on (a new run takes it once its data and model are there)."""
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = distribute.make_strategy(config.strategy)
    config, recipe = resolve_recipe(config)
    if fixed_recipe is not None:
        recipe = fixed_recipe.replace(epochs=config.epochs, batch_size=config.batch_size)
    start = Start.of(config, build_model, resume)
    teacher = None if resume else Teacher.of(config)
    chief = distribute.is_chief(strategy)
    if chief and not resume and run_dir.is_dir():
        run_lock.refuse_used_folder(run_dir)  # before the lock file is added to someone's folder
    if not resume:
        # Before the folder exists: a data set, model or weights file refused here leaves
        # nothing behind.
        with _interrupted_before_training(run_dir, None, config.epochs):
            data, precision, built = _data_and_model(config, recipe, strategy, build_model,
                                                     start, splits, None, 0, teacher, verbose)
    # Only the chief writes the run folder, so only the chief owns it.
    lock = run_lock.RunFolderLock(run_dir, create=not resume) if chief else contextlib.nullcontext()
    with lock:
        previous, start_epoch = _prepare_folder(run_dir, config, chief, resume, previous)
        if resume:
            with _interrupted_before_training(run_dir, start_epoch, config.epochs):
                start = Start.resumed(previous, start_epoch, build_model, run_dir)
                teacher = Teacher.resumed(previous, run_dir, teacher_source)
                data, precision, built = _data_and_model(config, recipe, strategy,
                                                         build_model, start, splits, previous,
                                                         start_epoch, teacher, verbose)
        model = built.model
        _compile(built, config, recipe, strategy, data)
        # Every worker trains and saves (collectives need all of them); only the chief writes
        # the run folder, the others write into a temporary folder of their own.
        out_dir = distribute.output_dir(run_dir, strategy)
        if chief and resume:
            _record(run_dir, config, recipe, previous, start_epoch, data, precision, built,
                    start, strategy, teacher)
        elif chief:
            with _interrupted_before_training(run_dir, None, config.epochs):
                _record_new_run(run_dir, config, recipe, data, precision, built, start,
                                strategy, teacher)
        if chief and report is not None:
            for line in plan_lines(config, recipe, data, precision, built.model,
                                   start_epoch if resume else None):
                report(line)
        fitted = _fit(built, config, recipe, strategy, data, precision, run_dir, out_dir,
                      resume, start_epoch, verbose, callbacks)
        metrics = _finish(model, config, data, fitted, out_dir)
        distribute.cleanup_output_dir(out_dir, run_dir, strategy)
    # The model model.keras holds (the best epoch's, with `keep` best).
    return TrainResult(run_dir=run_dir, model=fitted.saved[0].model, metrics=metrics,
                       history=fitted.history)


@dataclasses.dataclass
class _Built:
    """The model, the registry variant it was built as (None when not known), and the
    model `fit` trains when that is another one (the distillation model around the student)."""

    model: tf.keras.Model
    variant: Optional[str] = None
    fit_model: Optional[tf.keras.Model] = None
    distill: Any = None  # the DistillSettings of a distilled run

    @property
    def fitted(self) -> tf.keras.Model:
        return self.fit_model if self.fit_model is not None else self.model


def _data_and_model(config: TrainConfig, recipe: recipes.Recipe, strategy,
                    build_model: Optional[BuildModel], start: Start,
                    splits: Optional[data_lib.DataSplits], previous: Optional[RunRecord],
                    start_epoch: int, teacher: Optional[Teacher] = None, verbose: int = 1
                    ) -> Tuple["_Data", str, _Built]:
    """Steps 2 and 3: the data, the precision and the model (the student, with the model
    that distils it from `teacher`; with `config.distill_cache`, the teacher's logits are
    computed here, once)."""
    data = _load_data(config, splits, start_epoch)
    if previous is None and config.augment and data.splits.augmentation == "none":
        # A new run only: a folder of an older bnn, which trained on, still resumes.
        raise BnnError(f"{config.dataset} has no standard augmentation in bnn (its images are "
                       "trained as they are); drop `augment`.")
    if teacher is not None:
        teacher.check_fits(data)  # before the student is built: a wrong teacher fails fast
    precision = (previous.precision_resolved if previous else None) or resolve_precision(
        config.precision)
    warn_if_emulated_bf16(precision)
    teacher_model = None
    if config.model == binarized.BINARIZED and build_model is None:
        # The model is the teacher binarized (`bnn binarize`): the run's copy of it, loaded
        # before the student is built from it.
        if teacher is None:
            raise BnnError(f"`model` {binarized.BINARIZED} is a float model binarized: give "
                           "that float model as `teacher`.")
        with strategy.scope():
            teacher_model = teacher.load(precision)
        build_model = binarized.binarized_builder(teacher_model, config.model_options,
                                                  weights=start.weights)
    data, precision, built = _data_and_student(config, recipe, strategy, build_model, start,
                                               data, precision)
    if config.model == binarized.BINARIZED:
        # A binarized model's BatchNormalizations hold the float model's statistics (or none):
        # set them from the first training images, as the binary layers now output (a resumed
        # epoch backup restores its own over these). The same for a caller's `build_model` of
        # one (a binarized model trained without its float model as teacher).
        from bnn_keras.binarization import calibrate_batch_norm

        options = _pipeline_options(config, data.splits, data.input_shape)
        first = data_lib.make_pipeline(data.splits.train.take(_CALIBRATION_IMAGES),
                                       **dict(options, batch_size=_CALIBRATION_IMAGES))
        images, _ = next(iter(first))
        calibrate_batch_norm(built.model, images)
    if teacher is None:
        return data, precision, built
    from bnn_keras.distillation import (cached_distillation_model, check_teacher_fits,
                                        check_teacher_outputs, distillation_model)

    settings = config.distill_settings()
    if teacher_model is None:
        with strategy.scope():
            teacher_model = teacher.load(precision)
    check_teacher_fits(built.model, teacher_model)
    # Logits or probabilities: read from the teacher's last layer, or from its outputs on one
    # test batch when that layer does not show it (a softmax op, a Lambda), before any training.
    images, _ = next(iter(data.test))
    teacher_outputs = check_teacher_outputs(teacher_model, images)
    if config.distill_cache:
        data = _with_teacher_logits(data, config, teacher_model, start_epoch, verbose,
                                    teacher_outputs)
    with strategy.scope():
        # Outside the precision policy: the distillation term computes in float32.
        built.fit_model = (cached_distillation_model(built.model, settings)
                           if config.distill_cache else
                           distillation_model(built.model, teacher_model, settings,
                                              teacher_outputs=teacher_outputs))
    built.distill = settings
    return data, precision, built


# Training images a binarized model's BatchNormalization statistics are set from.
_CALIBRATION_IMAGES = 256


def _with_teacher_logits(data: "_Data", config: TrainConfig, teacher: tf.keras.Model,
                         start_epoch: int, verbose: int, teacher_outputs: str) -> "_Data":
    """`data` whose training stream carries the teacher's logits of each image, computed here
    once on the un-augmented training set, and whose validation stream has zeros in their
    place (`cached_distillation_model` reads them only while training)."""
    from bnn_keras.distillation import teacher_logits_of

    splits = data.splits
    if data.augment:
        raise BnnError(f"`distill_cache` computes the teacher's logits once, on the "
                       f"un-augmented images, and {config.dataset} is augmented by default; "
                       "turn its augmentation off (--no-augment), or drop `distill_cache`.")
    size = splits.num_train * splits.num_classes * 4
    if size > data_lib.CACHE_LIMIT_BYTES:
        raise BnnError(f"The teacher's logits on {splits.num_train:,} training images take "
                       f"{size / 2**30:.1f} GiB, more than the "
                       f"{data_lib.CACHE_LIMIT_BYTES / 2**30:g} GiB `distill_cache` keeps in "
                       "memory; drop `distill_cache` (the teacher then runs at every step).")
    options = _pipeline_options(config, splits, data.input_shape)
    # Only the images the epochs of this session draw (`--steps-per-epoch` may take a part
    # of the split); the others' rows are NaN, so that a row read by mistake stops the run
    # at its first step (`StopOnNonFiniteLoss`) instead of training towards it.
    used = data_lib.used_training_examples(
        splits.num_train, batch_size=config.batch_size, seed=config.seed,
        first_epoch=start_epoch, epochs=config.epochs, steps_per_epoch=data.steps)
    images = splits.train
    if used is not None:
        wanted = np.zeros(splits.num_train, bool)
        wanted[used] = True
        wanted = tf.constant(wanted)
        images = images.enumerate().filter(
            lambda index, example: tf.gather(wanted, index)).map(
            lambda index, example: example).apply(
            tf.data.experimental.assert_cardinality(len(used)))  # for the progress bar
    if verbose:
        count = splits.num_train if used is None else len(used)
        epochs = (f"epoch {config.epochs}" if start_epoch + 1 == config.epochs
                  else f"epochs {start_epoch + 1}-{config.epochs}")
        print(f"The teacher's logits on the {count:,} of {splits.num_train:,} training images "
              f"that {epochs} draw, once:", flush=True)
    drawn = teacher_logits_of(teacher, data_lib.make_pipeline(images, **options),
                              teacher_outputs=teacher_outputs, verbose=verbose)
    if used is None:
        logits = drawn
    else:
        logits = np.full((splits.num_train, drawn.shape[1]), np.nan, np.float32)
        logits[used] = drawn
    train = data_lib.make_pipeline(
        splits.train, training=True, first_epoch=start_epoch, steps_per_epoch=data.steps,
        teacher_logits=logits, **options)
    classes = splits.num_classes
    validation = data.test.map(lambda x, y: ((x, tf.zeros((tf.shape(x)[0], classes))), y))
    return dataclasses.replace(data, train=train, validation=validation)


def _data_and_student(config: TrainConfig, recipe: recipes.Recipe, strategy,
                      build_model: Optional[BuildModel], start: Start, data: "_Data",
                      precision: str) -> Tuple["_Data", str, _Built]:
    """Step 3 without a teacher: the model."""
    if build_model is None:
        variants: List[Optional[str]] = []

        def build_model(input_shape, num_classes):  # noqa: F811  (the registry's)
            model, variant = registry_model(config, input_shape, num_classes,
                                            weights=start.weights, variant=start.variant)
            variants.append(variant)
            return model

        model = _build(config, recipe, strategy, build_model, data, precision)
        return data, precision, _Built(model, variants[-1])
    return data, precision, _Built(_build(config, recipe, strategy, build_model, data,
                                          precision))


def _prepare_folder(run_dir: Path, config: TrainConfig, chief: bool, resume: bool,
                    previous: Optional[RunRecord]) -> Tuple[Optional[RunRecord], int]:
    """Step 1, with the folder locked: the record of the run being resumed and the epoch to
    start at (a new run: None and 0, once its folder is known to be unused)."""
    if not resume:
        if chief:
            # Again, now that the folder is ours: another run may have started meanwhile.
            run_lock.refuse_used_folder(run_dir, locked_by_us=True)
        return None, 0
    if previous is None:
        previous = RunRecord.read(run_dir)
    else:
        previous.check_unchanged(run_dir)  # read before the lock was taken
    start_epoch = check_resumable(run_dir, previous, config)
    best_epoch.check_best_kept(run_dir, _history_until(run_dir, start_epoch), config.keep)
    return previous, start_epoch


def _load_data(config: TrainConfig, splits: Optional[data_lib.DataSplits],
               start_epoch: int) -> _Data:
    """Step 2: the data set (unless given), the input shape, and the training stream (endless,
    one epoch after another, from `start_epoch`) and test pipeline."""
    splits = splits or data_lib.load_dataset(config.dataset, config.data_dir,
                                             manual_dir=config.manual_dir)
    splits = with_given_normalization(splits, config)
    input_shape = input_shape_for(config, splits)
    augment = (splits.augmentation != "none") if config.augment is None else config.augment
    pipeline_options = _pipeline_options(config, splits, input_shape)
    steps = config.steps_per_epoch or -(-splits.num_train // config.batch_size)
    # Epoch k's shuffle order and augmentation depend on (seed, k) only, so a resumed run
    # trains on the batches the uninterrupted run would have seen.
    train_ds = data_lib.make_pipeline(
        splits.train, training=True, augmentation=splits.augmentation if augment else "none",
        first_epoch=start_epoch, steps_per_epoch=steps, **pipeline_options,
    )
    test_ds = data_lib.make_pipeline(splits.test, **pipeline_options)
    return _Data(splits=splits, input_shape=input_shape, augment=augment, steps=steps,
                 train=train_ds, test=test_ds)


def with_given_normalization(splits: data_lib.DataSplits,
                             config: TrainConfig) -> data_lib.DataSplits:
    """`splits` normalized with `config.normalize_mean` and `normalize_std` instead of the
    training split's statistics, when given; on the data set's raw pixels, so values given for
    another pixel maximum (`normalize_pixel_max`) are scaled to it. The run records the result
    as its normalization, which deployment applies."""
    if config.normalize_mean is None:
        return splits
    from bnn_keras.training.data.normalization import Normalization

    channels = splits.image_shape[-1]
    scale = splits.pixel_max / (config.normalize_pixel_max or splits.pixel_max)
    values = {}
    for name in ("mean", "std"):
        given = getattr(config, f"normalize_{name}")
        if len(given) not in (1, channels):
            raise BnnError(f"`normalize_{name}` has {len(given)} values; {config.dataset} has "
                           f"{channels} channel(s): give one value, or one per channel.")
        values[name] = tuple(float(v) * scale for v in
                             (given * channels if len(given) == 1 else given))
    return dataclasses.replace(splits, normalization=Normalization(**values))


def _pipeline_options(config: TrainConfig, splits: data_lib.DataSplits,
                      input_shape: Tuple[int, int, int]) -> Dict[str, Any]:
    """The `make_pipeline` options that the training and test pipelines share."""
    return dict(batch_size=config.batch_size, normalization=splits.normalization,
                image_size=input_shape[:2], seed=config.seed)


def _build(config: TrainConfig, recipe: recipes.Recipe, strategy, build_model: BuildModel,
           data: _Data, precision: str) -> tf.keras.Model:
    """Step 3: the model, seeded, under the run's precision, with the recipe's weight decay."""
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        with precision_policy(precision):
            model = build_model(data.input_shape, data.splits.num_classes)
            if config.float_copy:
                model = _float_copy(model, config)
        recipes.add_weight_decay(model, recipe.weight_decay)
    return model


def _float_copy(model: tf.keras.Model, config: TrainConfig) -> tf.keras.Model:
    """The float copy of `model`, freshly initialised (`float_equivalent`), with the
    config's input activation where the BNN had input quantizers."""
    from bnn_keras.graph import NotFunctionalError
    from bnn_keras.training.baselines import float_equivalent

    try:
        return float_equivalent(model, copy_weights=False,
                                input_activation=config.float_input_activation())
    except NotFunctionalError as exc:
        raise BnnError(f"`float_copy` rebuilds a functional model; {first_line(exc)}") from None


def _compile(built: _Built, config: TrainConfig, recipe: recipes.Recipe, strategy,
             data: "_Data") -> None:
    """Step 4: the recipe's optimizer (its schedule spans all `config.epochs`) and loss; a
    distilled run weighs the labels' loss by `1 - distill_weight` (the distillation term adds
    the rest)."""
    with strategy.scope():
        built.fitted.compile(
            # The student's binary kernels (the teacher's are frozen, and not trained).
            optimizer=recipes.build_optimizer(recipe, built.model, steps_per_epoch=data.steps,
                                              epochs=config.epochs),
            loss=recipes.loss(recipe),
            loss_weights=None if built.distill is None else [built.distill.hard_label_weight],
            # A distilled run's loss is (1 - weight) x the labels' cross-entropy (+ the term
            # while training): the cross-entropy itself is logged as a metric too.
            metrics=["accuracy"] if built.distill is None else [
                "accuracy", tf.keras.metrics.SparseCategoricalCrossentropy(name="crossentropy")],
        )
        # Built now, not inside the first step's trace (which would then be traced again).
        build_optimizer_slots(built.fitted)
        build_loss_and_metrics(built.fitted, data.train)


def build_optimizer_slots(model: tf.keras.Model) -> None:
    """Creates a compiled model's optimizer variables now, as its first train step would.

    Keras creates them lazily, inside the first trace of the train function, and a
    `tf.function` that creates variables is traced a second time: every run traced its train
    step twice (measured here: 5.1-5.4 s of CPU for BinaryDenseNet28's first `fit` step,
    3.3-3.7 s with one trace, this and `build_loss_and_metrics` together). They are built from
    the model's trainable variables, as `minimize` passes them, under `apply_gradients`' name
    scope, so they are the same variables. The legacy optimizers (larq's CaseOptimizer) are
    left to Keras.
    """
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, tf.keras.optimizers.Optimizer) and hasattr(optimizer, "build"):
        with tf.name_scope(optimizer.name or "optimizer"):
            optimizer.build(model.trainable_variables)


def build_loss_and_metrics(model: tf.keras.Model, dataset: tf.data.Dataset) -> None:
    """Creates a compiled model's loss and metric objects now, as its first train or test step
    would (inside that step's first trace, which then runs again: see `build_optimizer_slots`).

    They are built from what Keras reads of the first batch: the model's output and the
    dataset's label spec (which resolves "accuracy" to its sparse or categorical form). A model
    with several outputs, or a dataset without (inputs, labels) elements, is left to Keras.
    """
    spec = dataset.element_spec
    if len(model.outputs or []) != 1 or not isinstance(spec, tuple) or len(spec) < 2:
        return
    labels = spec[1]
    if not isinstance(labels, tf.TensorSpec) or None in labels.shape[1:]:
        return
    y_true = tf.zeros([1, *labels.shape[1:]], labels.dtype)
    y_pred = model.outputs[0]
    if model.compiled_loss is not None and not model.compiled_loss.built:
        model.compiled_loss.build(y_pred)
    if model.compiled_metrics is not None and not model.compiled_metrics.built:
        model.compiled_metrics.build(y_pred, y_true)


def _record_new_run(run_dir: Path, config: TrainConfig, recipe: recipes.Recipe, data: "_Data",
                    precision: str, built: _Built, start: Start, strategy,
                    teacher: Optional[Teacher]) -> None:
    """Step 5 of a new run: its weights file and teacher copied into the folder
    (`run_inputs`), then config.json; a failure or a signal before config.json is written
    removes the copies, leaving the folder as it was."""
    try:
        start.freeze(run_dir)
        if teacher is not None:
            teacher.freeze(run_dir)
        _record(run_dir, config, recipe, None, 0, data, precision, built, start, strategy,
                teacher)
    except BaseException:
        run_inputs.remove_inputs(run_dir)
        raise


def _record(run_dir: Path, config: TrainConfig, recipe: recipes.Recipe,
            previous: Optional[RunRecord], start_epoch: int, data: _Data, precision: str,
            built: _Built, start: Start, strategy,
            teacher: Optional[Teacher] = None) -> None:
    """Step 5: config.json, for a new run (with the weights file it started from, its sha256
    and the variant built); a resume that changes the total epochs records the change (the
    schedule now spans the new total)."""
    if previous is None:
        splits = data.splits
        RunRecord(
            config=config,
            recipe_resolved=recipe,
            precision_resolved=precision,
            augment_resolved=data.augment,
            input_shape=data.input_shape,
            num_classes=splits.num_classes,
            class_names=splits.class_names,
            normalization=splits.normalization,
            pixel_max=getattr(splits, "pixel_max", 255.0),
            num_train=splits.num_train,
            num_test=splits.num_test,
            params=int(built.model.count_params()),
            workers=distribute.worker_count(strategy),
            versions=library_versions(),
            weights_sha256=start.sha256,
            model_variant=built.variant if start.weights else None,
            teacher_sha256=teacher.sha256 if teacher is not None else None,
        ).write(run_dir)
    elif config.epochs != previous.config.epochs:
        previous.with_epochs(config.epochs, recipe, after_epoch=start_epoch).write(run_dir)


@dataclasses.dataclass
class _Fitted:
    """What `fit` and the final evaluation leave for the metrics."""

    history: Dict[str, List[float]]
    epoch_seconds: List[float]
    step_seconds: List[float]
    fit_seconds: float
    test_loss: float
    test_accuracy: float
    mixed_accuracy: Optional[float]
    # The model files the run writes, model.keras first.
    saved: List["_SavedModel"]


def _fit(built: _Built, config: TrainConfig, recipe: recipes.Recipe, strategy,
         data: _Data, precision: str, run_dir: Path, out_dir: Path, resume: bool,
         start_epoch: int, verbose: int, callbacks) -> _Fitted:
    """Step 6: `fit` with the run folder's callbacks, then the test accuracy of the float32
    model (the student of a distilled run); Ctrl-C, SIGTERM and a non-finite loss become a
    resumable folder and one error."""
    model = built.fitted
    # The run time goes on from where the resumed run's history.csv ends.
    timer = EpochTimer(start_seconds=run_time_at(run_dir / HISTORY_FILE, start_epoch))
    tracked = built.model if built.fit_model is not None else None
    keeper = best_epoch.BestEpochKeeper(
        out_dir, built.model, _history_until(run_dir, start_epoch) if resume else [])
    run_callbacks = [timer, *run_folder_callbacks(
        config, out_dir, run_dir / BACKUP_DIR, resume, start_epoch, tracked_model=tracked,
        has_binary_kernels=bool(quantized_kernel_layers(built.model)), best_keeper=keeper),
        *(callbacks or [])]
    if verbose:
        run_callbacks.append(CompactProgbar(count_mode="steps"))
    status = next(c for c in run_callbacks if isinstance(c, StatusWriter))
    started = time.perf_counter()
    with _stopping_cleanly(out_dir, status, config.epochs):
        history = model.fit(
            data.train,
            epochs=config.epochs,
            steps_per_epoch=data.steps,  # the training stream is endless
            validation_data=data.test if data.validation is None else data.validation,
            validation_freq=validation_epochs(config.epochs, config.validation_freq),
            callbacks=run_callbacks,
            verbose=verbose,
        )
        fit_seconds = time.perf_counter() - started
        _test_pause("BNN_TEST_PAUSE_AFTER_FIT")
        if built.fit_model is not None:
            # The student's own loss: the distilled model's weighs the labels' loss down. Its
            # optimizer is the one that trained it, so that model.keras carries the real
            # optimizer state (Keras would otherwise save a fresh RMSprop).
            model = built.model
            with strategy.scope():
                model.compile(optimizer=built.fit_model.optimizer, loss=recipes.loss(recipe),
                              metrics=["accuracy"])
                build_loss_and_metrics(model, data.test)
        saved = _kept_and_other(model, keeper, config, out_dir, strategy)
        kept = saved[0].model
        if not saved[0].optimizer_state:
            with strategy.scope():  # an uncompiled copy: compile a copy of it to evaluate
                kept = _copy_of(kept)
                kept.compile(loss=recipes.loss(recipe), metrics=["accuracy"])
                build_loss_and_metrics(kept, data.test)
        test_loss, test_accuracy = kept.evaluate(data.test, verbose=0)
        mixed_accuracy = None
        if precision != "float32":
            # The deployed model computes in float32 (LCE converts a float32 copy), and in an
            # undertrained BNN bfloat16 rounding flips enough signs to move accuracy by
            # points: report the accuracy of the float32 copy, the one `bnn evaluate`
            # reproduces.
            mixed_accuracy = float(test_accuracy)
            with strategy.scope():
                float_model = as_float32(kept)
                float_model.compile(loss=recipes.loss(recipe), metrics=["accuracy"])
                build_loss_and_metrics(float_model, data.test)
            test_loss, test_accuracy = float_model.evaluate(data.test, verbose=0)
    return _Fitted(history=history.history, epoch_seconds=timer.seconds,
                   step_seconds=timer.step_seconds,
                   fit_seconds=fit_seconds, test_loss=float(test_loss),
                   test_accuracy=float(test_accuracy), mixed_accuracy=mixed_accuracy,
                   saved=saved)


@dataclasses.dataclass
class _SavedModel:
    """A model file the finished run writes: its name, the model, the epoch whose weights it
    holds, and whether it carries the optimizer state (only the last epoch's is known)."""

    name: str
    model: tf.keras.Model
    epoch: int
    optimizer_state: bool


def _kept_and_other(model: tf.keras.Model, keeper: best_epoch.BestEpochKeeper,
                    config: TrainConfig, out_dir: Path, strategy) -> List[_SavedModel]:
    """model.keras (the epoch `config.keep` chooses), then, when the best epoch is not the
    last, the other one (best.keras without optimizer state, or last.keras with it).

    The best epoch is an uncompiled copy of `model` with that epoch's weights. When its
    weights file is missing (a run of a bnn that kept none, resumed; `keep` best refuses
    such a resume), there is no other file.
    """
    last = config.epochs
    best = keeper.best_epoch
    if best is None or best == last or not best_epoch.weights_path(out_dir, best).is_file():
        return [_SavedModel(MODEL_FILE, model, last, True)]
    with strategy.scope():
        best_model = keeper.best_model()
    saved_best = _SavedModel(MODEL_FILE, best_model, best, False)
    saved_last = _SavedModel(MODEL_FILE, model, last, True)
    if config.keep == "best":
        return [saved_best, dataclasses.replace(
            saved_last, name=best_epoch.OTHER_MODEL_FILES["last"])]
    return [saved_last, dataclasses.replace(
        saved_best, name=best_epoch.OTHER_MODEL_FILES["best"])]


def _copy_of(model: tf.keras.Model) -> tf.keras.Model:
    """An uncompiled copy of `model` with its weights."""
    copy = tf.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _finish(model: tf.keras.Model, config: TrainConfig, data: _Data, fitted: _Fitted,
            out_dir: Path) -> Dict[str, Any]:
    """Step 7: the metrics, then model.keras, metrics.json and the finished status as one
    step (`_finish_run`)."""
    steps = fitted.step_seconds
    accuracy_history = _read_history_column(out_dir / HISTORY_FILE, "accuracy")
    rows = _read_history(out_dir / HISTORY_FILE)
    metrics = {
        # Keras' running mean over the last epoch (with augmentation when it is on).
        "train_accuracy": accuracy_history[-1] if accuracy_history else float("nan"),
        # Of the float32 model (as deployed); under mixed precision the bfloat16 model's is
        # `test_accuracy_mixed_precision` (the val_accuracy Keras reports per epoch).
        "test_accuracy": fitted.test_accuracy,
        "test_loss": fitted.test_loss,
        "test_accuracy_mixed_precision": fitted.mixed_accuracy,
        "epochs": config.epochs,
        "epochs_this_session": len(fitted.epoch_seconds),
        # This session's `fit`, tracing, validation and the final evaluation's set-up included.
        "wall_time_s": round(fitted.fit_seconds, 3),
        # Steady-state training rate: images per second of this session's training steps,
        # its first step (which traces and compiles the step) left out, validation not
        # counted; None when the session trained a single step.
        "images_per_s": (round(config.batch_size * len(steps) / sum(steps), 2)
                         if steps and sum(steps) > 0 else None),
        "images_per_s_steps": len(steps),  # the steps it was measured on
        # Each epoch's wall time (validation included), earlier sessions included (None for
        # epochs a bnn that did not record it trained).
        "epoch_seconds": [None if row.get(EPOCH_TIME_KEY) is None
                          else round(row[EPOCH_TIME_KEY], 3) for row in rows],
        # The run's wall time at the end of each of its epochs, earlier sessions included
        # (None for epochs a bnn that did not record it trained).
        "run_time_s": [None if row.get(RUN_TIME_KEY) is None else round(row[RUN_TIME_KEY], 3)
                       for row in rows],
        **time_to_best_accuracy(rows),
        # The last epoch's test accuracy as validated (training precision), what "best" is
        # compared with.
        "last_epoch_test_accuracy": rows[-1].get("val_accuracy") if rows else None,
        "params": int(model.count_params()),
        # Which epoch model.keras holds (`keep`), and the other model file when the best
        # epoch is not the last: {file: {"epoch", "optimizer_state"}}.
        "keep": config.keep,
        "model_files": {saved.name: {"epoch": saved.epoch,
                                     "optimizer_state": saved.optimizer_state}
                        for saved in fitted.saved},
    }
    _finish_run(fitted.saved, metrics, out_dir, config.epochs)
    return metrics


def _finish_run(saved: List[_SavedModel], metrics: Dict[str, Any], run_dir: Path,
                epochs: int) -> None:
    """Writes model.keras (and best.keras or last.keras, when the best epoch is not the last),
    metrics.json and the finished status as one step.

    Ctrl-C and SIGTERM are held back while the files are written (a run with a model but
    no metrics, or a status that still says "running", is neither finished nor resumable);
    one that arrived meanwhile is reported once the run is complete. The epoch backup is kept:
    it is what `--resume RUN --epochs M` extends the finished run from; so are the best
    epoch's weights (RUN/best). An other-epoch file of an earlier finish that this one does
    not write (the run was extended, and its best epoch is now its last) is removed.
    """
    with signals.deferred_signals() as received:
        _test_pause("BNN_TEST_PAUSE_BEFORE_FINISH")
        for model_file in saved:
            with files.atomic_path(run_dir / model_file.name) as tmp:
                model_file.model.save(tmp)
        for name in best_epoch.OTHER_MODEL_FILES.values():
            if name not in {model_file.name for model_file in saved}:
                (run_dir / name).unlink(missing_ok=True)
        files.write_json(run_dir / METRICS_FILE, metrics)
        write_status(run_dir, "finished", epochs, epochs)
    if received:
        raise TrainingInterruptedError(
            f"{received[0]} arrived while the finished run was being saved; it was saved "
            f"first, and {run_dir} is complete ({epochs} epochs)."
        )


def _test_pause(variable: str) -> None:
    """Sleeps for `$variable` seconds when set: tests widen a phase to signal the run in it.

    The line on stderr tells the test that the phase has been reached.
    """
    seconds = os.environ.get(variable)
    if seconds:
        sys.stderr.write(f"[bnn test] {variable}: pausing {seconds} s\n")
        sys.stderr.flush()
        time.sleep(float(seconds))


def validation_epochs(epochs: int, every: int) -> List[int]:
    """The 1-based epochs `fit` validates after: every `every`-th one and the last.

    Absolute epoch numbers, so a resumed run validates after the same epochs.
    """
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def _read_history_column(path: Path, column: str) -> List[float]:
    with open(path, newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def _read_history(path: Path) -> List[Dict[str, float]]:
    """history.csv's rows, the empty cells left out."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")}
                for row in csv.DictReader(f)]


def _history_until(run_dir: Path, epoch: int) -> List[Dict[str, float]]:
    """history.csv's rows of epochs 1 to `epoch` (none when the file is not there): the
    complete epochs a resume starts after (later rows are of an epoch trained again)."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    return [row for row in _read_history(path) if row.get("epoch", 0) <= epoch]


def time_to_best_accuracy(rows: List[Dict[str, float]]) -> Dict[str, Any]:
    """When a run first reached its best test accuracy, from history.csv's rows.

    The accuracy is `val_accuracy`, the test split evaluated after the epochs
    `validation_freq` picks (under mixed precision, the bfloat16 model's).

    Returns:
        `best_test_accuracy`, its first `best_epoch` and `time_to_best_s` (the run time
        then; None when not recorded), all None without any validated epoch.
    """
    best = best_epoch.best_row(rows)
    if best is None:
        return {"best_test_accuracy": None, "best_epoch": None, "time_to_best_s": None}
    seconds = best.get(RUN_TIME_KEY)
    return {"best_test_accuracy": best["val_accuracy"], "best_epoch": int(best["epoch"]),
            "time_to_best_s": None if seconds is None else round(seconds, 3)}


@contextlib.contextmanager
def _interrupted_before_training(run_dir: Path, completed: Optional[int], epochs: int):
    """Turns Ctrl-C/SIGTERM while a run is being prepared (its data, its model, a cached
    teacher's pass over the training set, which can take minutes) into one error that says
    what became of the run folder: nothing has been written to it yet.

    Args:
        run_dir: The run folder.
        completed: The complete epochs of the run being resumed; None for a new run.
        epochs: The run's epochs.
    """
    try:
        with signals.interrupt_on_sigterm():
            yield
    except KeyboardInterrupt:
        if completed is None:
            raise TrainingInterruptedError(
                f"Interrupted before training started; nothing was written to {run_dir}."
            ) from None
        raise TrainingInterruptedError(
            f"Interrupted before training resumed; {run_dir} is as it was ({completed} "
            f"complete epoch(s) of {epochs}); continue with: bnn train --resume {run_dir}"
        ) from None


@contextlib.contextmanager
def _stopping_cleanly(run_dir: Path, status: "StatusWriter", epochs: int):
    """Turns Ctrl-C/SIGTERM and a non-finite loss into a resumable run folder and one error."""
    try:
        with signals.interrupt_on_sigterm():
            yield
    except KeyboardInterrupt:
        write_status(run_dir, "interrupted", status.completed, epochs)
        raise TrainingInterruptedError(
            f"Training interrupted after {status.completed} complete epoch(s) of "
            f"{epochs}; continue with: bnn train --resume {run_dir}"
        ) from None
    except NonFiniteLossError as exc:
        write_status(run_dir, "failed", status.completed, epochs, reason=str(exc))
        raise NonFiniteLossError(
            f"{exc}; stopped with the last good epoch ({status.completed}) kept in "
            f"{run_dir / BACKUP_DIR} (`bnn train --resume {run_dir}` retries from it; a lower "
            "`learning_rate` is the usual fix, in a new run)"
        ) from None
