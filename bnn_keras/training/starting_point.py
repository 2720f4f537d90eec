"""What a training run starts from: the registry model (its options, a weights file, its
training tricks) and the teacher it distils from.

`Start` is a run's weights file, checked and hashed before any long work (a resume needs it
again only when no epoch completed); `registry_model` builds `config.model` from the registry
with it and keeps the loaded weights through the tricks. `Teacher` is the classifier a run
distils from (`bnn_keras.distillation`): a finished run folder of `bnn train`, whose data must be
the student's, or a Keras model file. Both are copied into the run folder when the run starts
(`run_inputs`), and a resume reads that copy, checked by its sha256, never the original path.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
from bnn_keras.files import file_sha256
from bnn_keras.training import run_inputs
from bnn_keras.training.config import MODEL_FILE, RunRecord, TrainConfig
from bnn_keras.training.precision import as_float32

# A run's own model builder: (input_shape, num_classes) -> an uncompiled model.
BuildModel = Callable[[Tuple[int, int, int], int], tf.keras.Model]


@dataclasses.dataclass(frozen=True)
class Start:
    """What the model starts from: a weights file (`weights`, its `sha256`), or the variant
    a run from one was built as (`variant`, when resuming from its epoch backup)."""

    weights: Optional[str] = None
    sha256: Optional[str] = None
    variant: Optional[str] = None

    @classmethod
    def of(cls, config: TrainConfig, build_model: Optional[BuildModel],
           resume: bool) -> "Start":
        """A new run's start: `config.weights`, checked to exist and hashed before any long
        work (whether it fits the model is known once the data set gives the input)."""
        if resume or config.weights is None:
            return cls()
        if build_model is not None:
            raise BnnError(
                "`weights` is loaded into the registry model `model` (build_model=None); a "
                "build_model of your own loads its weights itself, with `weights` unset.")
        return cls(weights=config.weights, sha256=weights_sha256(config.weights))

    @classmethod
    def resumed(cls, previous: RunRecord, start_epoch: int,
                build_model: Optional[BuildModel], run_dir: Path) -> "Start":
        """A resumed run's start: the recorded variant, and the weights file again only when
        no epoch completed (the epoch backup restores everything else): the run's own copy
        (`run_inputs`), or for a run of an earlier bnn without one, the recorded file when
        its sha256 matches (then copied into the run)."""
        weights = previous.config.weights
        if weights is None or build_model is not None:
            return cls()
        if start_epoch > 0:
            return cls(variant=previous.model_variant)
        copy = run_inputs.read_frozen(run_dir, run_inputs.WEIGHTS, previous.weights_sha256,
                                      "`weights`")
        if copy is None:
            try:
                digest = weights_sha256(weights)
            except BnnError:
                digest = None
            if digest != previous.weights_sha256:
                what = "no longer exists" if digest is None else "has changed since (sha256)"
                raise BnnError(
                    f"Run {run_dir} has no complete epoch to continue from and started from "
                    f"`weights` {weights}, which {what}; start a new run.")
            copy = run_inputs.freeze(run_dir, run_inputs.WEIGHTS, Path(weights), digest,
                                     "`weights`")
        return cls(weights=str(copy.model_file), sha256=copy.sha256,
                   variant=previous.model_variant)

    def freeze(self, run_dir: Path) -> None:
        """Copies the weights file into the new run's folder (`run_inputs`), checked to be
        the file this run checked and loaded."""
        if self.weights is not None:
            run_inputs.freeze(run_dir, run_inputs.WEIGHTS, Path(self.weights), self.sha256,
                              "`weights`")


def weights_sha256(path: str) -> str:
    """The sha256 of the file `path` (hex).

    Raises:
        BnnError: the file does not exist or cannot be read.
    """
    try:
        return file_sha256(Path(path))
    except FileNotFoundError:
        raise BnnError(f"`weights` {path} does not exist; give the path of a weights file "
                       "(.h5).") from None
    except OSError as exc:
        raise BnnError(f"`weights` {path} cannot be read ({exc.strerror or exc}).") from None


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The classifier a run distils from (`config.teacher`): a run folder of `bnn train` (with
    its `record`) or a model file; `model_file` is the file loaded, `sha256` its hash."""

    path: str
    model_file: Path
    sha256: str
    record: Optional[RunRecord] = None

    @classmethod
    def of(cls, config: TrainConfig) -> Optional["Teacher"]:
        """The teacher of a new run, found and hashed before any long work; None without one.

        Raises:
            BnnError: no such file or folder, a folder that is not a finished run, or an
                unreadable file.
        """
        return None if config.teacher is None else cls.of_path(config.teacher)

    @classmethod
    def of_path(cls, given: str) -> "Teacher":
        """The teacher at `given` (a run folder or a model file), hashed.

        Raises:
            BnnError: as `of`.
        """
        path = Path(given)
        record = None
        if path.is_dir():
            record = RunRecord.read(path)
            model_file = path / MODEL_FILE
            if not model_file.is_file():
                raise BnnError(f"`teacher` {path} has no {MODEL_FILE} (its run has not "
                               "finished); finish it first, or give a model file.")
        elif path.is_file():
            model_file = path
        else:
            raise BnnError(f"`teacher` {path} does not exist; give a run folder of bnn train or "
                           "a Keras model file (.keras, .h5).")
        try:
            digest = file_sha256(model_file)
        except OSError as exc:
            raise BnnError(f"`teacher` {model_file} cannot be read "
                           f"({exc.strerror or exc}).") from None
        return cls(str(given), model_file, digest, record)

    @classmethod
    def resumed(cls, previous: RunRecord, run_dir: Path,
                given: Optional[str] = None) -> Optional["Teacher"]:
        """The teacher of a resumed run: the run's own copy (`run_inputs`), checked against
        the recorded sha256. A run of an earlier bnn has no copy: its recorded path, or the
        same file given again by any path (`given`), is used when its sha256 matches, and
        copied into the run.

        Raises:
            BnnError: the copy changed; or, without a copy, neither file is the recorded one.
        """
        if previous.config.teacher is None:
            return None
        copy = run_inputs.read_frozen(run_dir, run_inputs.TEACHER, previous.teacher_sha256,
                                      "`teacher`")
        if copy is None:
            found = cls.first_of((given, previous.config.teacher), previous.teacher_sha256)
            if found is None:
                raise BnnError(
                    f"Run {run_dir} distils from `teacher` {previous.config.teacher}, whose model "
                    "file is not there or has changed since the run started (sha256); give the "
                    "same teacher with `teacher` PATH to resume the run, or start a new run.")
            copy = found.freeze(run_dir)
        return cls._of_copy(copy, previous.config.teacher)

    @classmethod
    def first_of(cls, paths: Sequence[Optional[str]],
                 sha256: Optional[str]) -> Optional["Teacher"]:
        """The teacher at the first of `paths` (None skipped) that can be read and whose model
        file has `sha256` (any, when None); None when no path gives one."""
        for path in dict.fromkeys(p for p in paths if p):
            try:
                teacher = cls.of_path(path)
            except BnnError:
                continue
            if sha256 in (None, teacher.sha256):
                return teacher
        return None

    def freeze(self, run_dir: Path) -> run_inputs.FrozenInput:
        """Copies the teacher into the new run's folder (`run_inputs`: a model file, or a run
        folder's config.json and model.keras), checked to be the file this run checked."""
        source = Path(self.path) if self.record is not None else self.model_file
        return run_inputs.freeze(run_dir, run_inputs.TEACHER, source, self.sha256, "`teacher`")

    @classmethod
    def _of_copy(cls, copy: run_inputs.FrozenInput, given: str) -> "Teacher":
        record = RunRecord.read(copy.path) if copy.path.is_dir() else None
        return cls(given, copy.model_file, copy.sha256, record)

    def check_fits(self, data) -> None:
        """Refuses a teacher run trained on other inputs or classes than the student's data.

        Raises:
            BnnError: one line naming the first of input shape, number of classes, class
                names and normalization that differs.
        """
        if self.record is None:
            return  # a model file: `distillation_model` checks its shapes
        splits, theirs = data.splits, self.record
        differences = [
            ("input shape", tuple(theirs.input_shape), tuple(data.input_shape)),
            ("number of classes", theirs.num_classes, splits.num_classes),
            ("class names", list(theirs.class_names), list(splits.class_names)),
            ("normalization", theirs.normalization.to_dict(), splits.normalization.to_dict()),
        ]
        for what, teacher_value, student_value in differences:
            if not _same(teacher_value, student_value):
                raise BnnError(
                    f"`teacher` {self.path} does not fit this run: its {what} is "
                    f"{_brief(teacher_value)}, the student's is {_brief(student_value)}; give "
                    "a teacher trained on the same data set, `image_size` and classes.")

    def load(self, precision: str) -> tf.keras.Model:
        """The teacher model (float32 when the student trains in float32).

        A model file is data: one whose config carries Python code (a Lambda layer) is
        refused unless the caller trusts it (`bnn_keras.model_files.trusting_model_code`,
        `bnn train --trust-model-code`).

        Raises:
            BnnError: the file is not a Keras model this process can load, or it carries code.
        """
        from bnn_keras.model_files import load_model_file

        model = load_model_file(self.model_file, what="`teacher`")
        if precision == "float32":
            # A teacher saved under mixed_bfloat16 would compute in emulated bfloat16.
            from bnn_keras.graph import NotFunctionalError

            try:
                model = as_float32(model)
            except NotFunctionalError:
                pass
        return model


def _same(a: Any, b: Any) -> bool:
    """Equal, numbers to float32 precision (a normalization read back from config.json)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b)))
    return a == b


def _brief(value: Any, limit: int = 80) -> str:
    text = str(value) if isinstance(value, (tuple, int)) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def registry_model(config: TrainConfig, input_shape: Tuple[int, int, int], num_classes: int,
                   *, weights: Optional[str] = None, variant: Optional[str] = None
                   ) -> Tuple[tf.keras.Model, Optional[str]]:
    """The registry model `config.model` with `config.model_options`, the weights file
    `weights` (`models.create_model(..., weights=)`), then `config.tricks`.

    The loaded weights survive the tricks: a layer a trick rewrites gets the file's weights
    back when its weights keep their shapes (other quantizers, the bipolar regularizer);
    tricks that change a loaded layer's weights (`bases` > 1, a BNN+ `regularizer`) are
    refused with the file.

    Args:
        config: The run's options (`model`, `model_options`, `tricks`).
        input_shape: The model input.
        num_classes: The classifier outputs.
        weights: A weights file to start from (usually `config.weights`).
        variant: The registry variant to build (a resumed run's), overriding the one a
            larq-zoo weights file selects.

    Returns:
        The uncompiled model and the variant it was built as (None for a model without
        variants).

    Raises:
        BnnError: an unknown model, a model option it does not take, a weights file that does
            not fit (one line naming the first layer that differs), or a trick that would
            discard the loaded weights.
    """
    import models
    from bnn_keras.training.tricks import apply_tricks

    name = config.model
    options = dict(config.model_options)
    if variant is not None:
        options["variant"] = variant
    try:
        model = models.create_model(name, input_shape=input_shape, num_classes=num_classes,
                                    weights=weights, **options)
    except (TypeError, ValueError) as exc:
        raise _build_error(name, options, weights, exc, input_shape, num_classes) from None
    chosen = _built_variant(name, options, weights, model)
    if not config.tricks:
        return model, chosen
    tricked = apply_tricks(model, **config.tricks)
    if weights is not None:
        _keep_loaded_weights(model, tricked, config.tricks, weights)
    return tricked, chosen


def _build_error(name: str, options: Dict[str, Any], weights: Optional[str], exc: Exception,
                 input_shape, num_classes: int) -> Exception:
    """The one-line error of a registry model that failed to build or to load `weights`."""
    import models

    if weights is not None and isinstance(exc, ValueError):
        try:  # the build alone works: Keras's own loading refused the file
            models.create_model(name, input_shape=input_shape, num_classes=num_classes,
                                **options)
        except (TypeError, ValueError):
            pass
        else:
            return BnnError(f"`weights` {weights} does not fit {name}: {first_line(exc)}; "
                            "give a weights file of this model at this input size and number "
                            "of classes.")
    if not options:
        return exc
    # A value of the wrong kind (`section_filters=16` for a list) fails inside the builder.
    given = " ".join(f"{k}={json.dumps(v)}" for k, v in options.items())
    return BnnError(f"{name} cannot be built with `model_options` {given}: "
                    f"{first_line(exc)}; check the option's type and value.")


def _built_variant(name: str, options: Dict[str, Any], weights: Optional[str],
                   model: tf.keras.Model) -> Optional[str]:
    """The variant `models.create_model` built (`models.registry.weights_variant`'s rule)."""
    import models
    from models import weights_file
    from models.registry import weights_variant

    file_layers = None if weights is None else weights_file.read_h5_layers(weights)
    return weights_variant(models.get_entry(name), options, file_layers, model)


def _keep_loaded_weights(loaded: tf.keras.Model, tricked: tf.keras.Model,
                         tricks: Dict[str, Any], weights: str) -> None:
    """Gives the layers `apply_tricks` rebuilt (freshly initialised) the weights `loaded`
    had from the file; refuses a trick that changed a loaded layer's weights."""
    rebuilt = {layer.name: layer for layer in tricked.layers}
    for layer in loaded.layers:
        if not layer.weights:
            continue
        new = rebuilt.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if new is None or [tuple(w.shape) for w in new.weights] != shapes:
            on = ", ".join(f"`{k}` {_shown_trick(v)}" for k, v in tricks.items())
            raise BnnError(
                f"`weights` {weights} cannot be combined with {on}: the tricks rebuild layer "
                f"{layer.name!r} with other weights than the file's, which would be lost; "
                "drop those tricks (or `weights`).")
        new.set_weights(layer.get_weights())


def _shown_trick(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value
