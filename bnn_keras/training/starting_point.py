"""What a training run starts from: the registry model (its options, a weights file, its
training tricks) and the teacher it distils from.

`Start` is a run's weights file, checked and hashed before any long work (a resume needs it
again only when no epoch completed); `registry_model` builds `config.model` from the registry
with it and keeps the loaded weights through the tricks. `Teacher` is the classifier a run
distils from (`bnn_keras.distillation`): a finished run folder of `bnn train`, whose data must be
the student's, or a Keras model file, hashed so that a resume refuses a changed one.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
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
        no epoch completed (the epoch backup restores everything else)."""
        weights = previous.config.weights
        if weights is None or build_model is not None:
            return cls()
        if start_epoch > 0:
            return cls(variant=previous.model_variant)
        try:
            digest = weights_sha256(weights)
        except BnnError:
            digest = None
        if digest != previous.weights_sha256:
            what = "no longer exists" if digest is None else "has changed since (sha256)"
            raise BnnError(
                f"Run {run_dir} has no complete epoch to continue from and started from "
                f"`weights` {weights}, which {what}; start a new run.")
        return cls(weights=weights, sha256=digest, variant=previous.model_variant)


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
        if config.teacher is None:
            return None
        path = Path(config.teacher)
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
        return cls(config.teacher, model_file, digest, record)

    @classmethod
    def resumed(cls, previous: RunRecord, run_dir: Path) -> Optional["Teacher"]:
        """The recorded teacher of a resumed run, which must be the very file it started with.

        Raises:
            BnnError: the teacher's model file is gone or changed (sha256).
        """
        if previous.config.teacher is None:
            return None
        try:
            teacher = cls.of(previous.config)
        except BnnError:
            teacher = None
        if teacher is None or teacher.sha256 != previous.teacher_sha256:
            what = "is no longer there" if teacher is None else "has changed since (sha256)"
            raise BnnError(f"Run {run_dir} distils from `teacher` {previous.config.teacher}, "
                           f"whose model file {what}; restore it to resume the run, or start "
                           "a new run.")
        return teacher

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

        Raises:
            BnnError: the file is not a Keras model this process can load.
        """
        try:
            model = tf.keras.models.load_model(self.model_file, compile=False)
        except Exception as exc:  # Keras raises ValueError, OSError, TypeError, ImportError...
            reason = first_line(exc)
            reason = reason if len(reason) <= 200 else reason[:197] + "..."  # a layer's config
            raise BnnError(f"`teacher` {self.model_file} cannot be loaded as a Keras model: "
                           f"{reason}; give a .keras or .h5 model file whose custom layers "
                           "are registered.") from None
        if precision == "float32":
            # A teacher saved under mixed_bfloat16 would compute in emulated bfloat16.
            from bnn_keras.graph import NotFunctionalError

            try:
                model = as_float32(model)
            except NotFunctionalError:
                pass
        return model


def file_sha256(path: Path) -> str:
    """The sha256 of the file `path` (hex), read in 1 MiB blocks; OSError as open() raises."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
