"""`ModelInput`: what feeding a trained model and reading its outputs needs, in one place.

A run's config.json, the bnn metadata inside a .tflite, a bundle's model.json and the options
of a bare model file all describe the same facts: the data set (and where it lives), the input
shape, the classes, the per-channel normalization and the raw pixel scale the training images
had. `ModelInput` is that description; every reader and writer of those files goes through it,
so a fact is derived once (the raw pixel maximum of a data set is decided only by
`pixel_max_for`).

This module loads no data set code (no TensorFlow Datasets, no TensorFlow): a deployed model's
input is read without the training application.

The mapping layout (`to_metadata`, `from_mapping`), by `input_version`:
    1   the keys `dataset`, `data_dir`, `input_shape`, `num_classes`, `class_names`,
        `normalization` and `pixel_max`, as config.json has always written them (and without
        `input_version`, as the .tflite metadata of every bnn so far). `pixel_max` may be
        missing (runs before it was recorded): the data set's is taken. A bundle's model.json
        gives the shape as `input.shape`, (1, H, W, C).
"""

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from bnn_keras.errors import BnnError
from bnn_keras.training.data.normalization import Normalization

if TYPE_CHECKING:
    from bnn_keras.training.config import RunRecord

# The raw pixel maximum of images that are not 0..255 (scikit-learn's digits are 0..16). Image
# files are 0..255 and are rescaled to this range before the training normalization.
DEFAULT_PIXEL_MAX = 255.0
_PIXEL_MAX: Dict[str, float] = {"digits": 16.0}

# The newest mapping layout this bnn reads; see the module docstring.
INPUT_VERSION = 1
VERSION_KEY = "input_version"


def parse_floats(value: Any, option: str) -> List[float]:
    """Floats from a number, a list or a comma-separated string such as "0.5,0.4,0.3" (a
    per-channel mean or standard deviation, as the command line and config.json give it).

    Raises:
        BnnError: naming `option`, when a value is not a finite number.
    """
    items = value.split(",") if isinstance(value, str) else (
        [value] if isinstance(value, (int, float)) else list(value))
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError):
        numbers = []
    if not numbers or not all(math.isfinite(n) for n in numbers):
        raise BnnError(f"Expected {option} as numbers separated by commas (one per input "
                       f"channel, or one for all), got {value!r}.")
    return numbers


def pixel_max_for(dataset: Optional[str]) -> float:
    """The raw pixel maximum of `dataset`'s images: 16 for digits, else 255 (None: 255)."""
    return _PIXEL_MAX.get(dataset, DEFAULT_PIXEL_MAX) if dataset else DEFAULT_PIXEL_MAX


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """The description of a model's input, as deployment needs it.

    Attributes:
        input_shape: The model input (height, width, channels).
        normalization: Per-channel mean and standard deviation, on raw pixels.
        class_names: One name per output, or None when not known (a .tflite of an early bnn).
        num_classes: Model outputs [default: the number of class names].
        dataset: The data set trained on, or None.
        data_dir: Where that data set lives, or None for its usual place.
        pixel_max: The raw maximum of the training images' pixels [default: the data set's,
            `pixel_max_for(dataset)`].
    """

    input_shape: Tuple[int, int, int]
    normalization: Normalization
    class_names: Optional[Tuple[str, ...]] = None
    num_classes: Optional[int] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    pixel_max: Optional[float] = None

    def __post_init__(self):
        # Frozen: normalised once here, so every reader sees plain tuples and a float.
        shape = tuple(int(d) for d in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise BnnError(f"Expected an input shape (height, width, channels), got "
                           f"{tuple(self.input_shape)}.")
        set_field = object.__setattr__.__get__(self)
        set_field("input_shape", shape)
        if self.class_names is not None:
            set_field("class_names", tuple(str(name) for name in self.class_names))
            if self.num_classes is None:
                set_field("num_classes", len(self.class_names))
        if self.num_classes is not None:
            set_field("num_classes", int(self.num_classes))
        pixel_max = pixel_max_for(self.dataset) if self.pixel_max is None else self.pixel_max
        if not (math.isfinite(pixel_max) and pixel_max > 0):
            raise BnnError(f"Expected `pixel_max` > 0, got {pixel_max}.")
        set_field("pixel_max", float(pixel_max))

    @classmethod
    def from_record(cls, record: "RunRecord") -> "ModelInput":
        """The input of a run, from its folder's validated config.json (`RunRecord`)."""
        return cls(input_shape=record.input_shape, normalization=record.normalization,
                   class_names=record.class_names, num_classes=record.num_classes,
                   dataset=record.config.dataset, data_dir=record.config.data_dir,
                   pixel_max=record.pixel_max)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *,
                     source: str = "the model's metadata") -> "ModelInput":
        """The input described by a config.json, a .tflite's bnn metadata or a bundle's
        model.json (see the module docstring for the layout).

        Args:
            values: The file's JSON object.
            source: The file, for messages.

        Raises:
            BnnError: a newer layout, no input shape or normalization, or a malformed value.
        """
        version = values.get(VERSION_KEY, 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BnnError(f"{source}: expected {VERSION_KEY!r} to be an integer >= 1, got "
                           f"{version!r}.")
        if version > INPUT_VERSION:
            raise BnnError(f"{source} describes its input in layout {version}, newer than this "
                           f"bnn reads (up to {INPUT_VERSION}); upgrade bnn to use it.")
        shape = values.get("input_shape")
        if shape is None and isinstance(values.get("input"), Mapping):
            shape = values["input"].get("shape", [None])[1:]  # model.json: (1, H, W, C)
        missing = [name for name, value in (("input_shape", shape),
                                             ("normalization", values.get("normalization")))
                   if value is None]
        if missing:
            raise BnnError(f"{source} has no {' or '.join(missing)}; convert the model from a "
                           "run folder written by `bnn train`.")
        try:
            return cls(input_shape=tuple(shape),
                       normalization=Normalization.from_dict(values["normalization"]),
                       class_names=values.get("class_names"),
                       num_classes=values.get("num_classes"), dataset=values.get("dataset"),
                       data_dir=values.get("data_dir"), pixel_max=values.get("pixel_max"))
        except (TypeError, ValueError, KeyError) as exc:
            raise BnnError(f"{source} describes the model's input in an unreadable form "
                           f"({exc.__class__.__name__}: {exc}); convert the model again.") from None

    @classmethod
    def from_options(cls, input_shape: Sequence[int], *, class_names: Sequence[str],
                     mean: Sequence[float], std: Sequence[float],
                     pixel_max: Optional[float] = None, dataset: Optional[str] = None,
                     data_dir: Optional[str] = None) -> "ModelInput":
        """The input of a bare model file, from what the user says about its training.

        Args:
            input_shape: The model's (H, W, C).
            class_names: One name per output.
            mean: Per-channel mean on raw pixels: one value, or one per channel.
            std: Per-channel standard deviation, likewise; every value > 0.
            pixel_max: The raw pixel maximum [default: the data set's].
            dataset: The data set trained on.
            data_dir: Where that data set lives.

        Raises:
            BnnError: `mean` or `std` with another count than 1 or the channels, `std` <= 0,
                `pixel_max` <= 0. Messages name these arguments.
        """
        channels = int(input_shape[-1])
        stats = {}
        for key, values in (("mean", mean), ("std", std)):
            values = [float(v) for v in values]
            if len(values) == 1:
                values = values * channels
            if len(values) != channels:
                raise BnnError(f"Expected `{key}` with 1 or {channels} values (one per input "
                               f"channel), got {len(values)}.")
            stats[key] = values
        if min(stats["std"]) <= 0:
            raise BnnError(f"Expected `std` > 0, got {', '.join(f'{v:g}' for v in std)}.")
        return cls(input_shape=tuple(input_shape), normalization=Normalization.from_dict(stats),
                   class_names=class_names, dataset=dataset or None,
                   data_dir=str(data_dir) if data_dir else None, pixel_max=pixel_max)

    def to_metadata(self) -> Dict[str, Any]:
        """The JSON object of this description (layout `INPUT_VERSION`, every key present;
        unknown facts are null), as config.json, the .tflite metadata and model.json hold it."""
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "normalization": self.normalization.to_dict(),
            "pixel_max": self.pixel_max,
        }

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width) the images are resized to."""
        return self.input_shape[0], self.input_shape[1]
