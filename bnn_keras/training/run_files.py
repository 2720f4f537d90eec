"""A run folder's files, and what deploying its model reads of it (`RunSummary`).

`bnn train` writes a run folder; `RunRecord` (`bnn_keras.training.config`) reads and writes its
config.json for training and resuming. Converting, evaluating or bundling the run's model needs
much less: the model's registry name and its input (`ModelInput`). `RunSummary` reads that much,
with the same checks and messages as `RunRecord`, without loading the training application
(its options, recipes, tricks, precision and distribution code): this module imports only the
plugin's errors and the data layer's `ModelInput`.

The JSON field checks (`checked_field`) and config.json's layout rules (`read_config_json`,
`check_layout`) live here, so that both readers apply the same ones.
"""

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from bnn_keras.errors import BnnError
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.preprocessing import ModelInput

MODEL_FILE = "model.keras"
# The epoch model.keras does not hold, when the best epoch is not the last (`keep`).
BEST_MODEL_FILE = "best.keras"
LAST_MODEL_FILE = "last.keras"
# The model files of a finished run: each is read with the run's config.json.
RUN_MODEL_FILES = (MODEL_FILE, BEST_MODEL_FILE, LAST_MODEL_FILE)
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"

# The newest config.json layout this bnn reads and writes (`bnn_keras.training.config` says
# what each layout adds).
FORMAT_VERSION = 6

# Fields bnn 0.1 already wrote in every config.json, and which readers cannot do without.
REQUIRED_FIELDS = ("model", "dataset", "input_shape", "num_classes", "class_names",
                   "normalization")


def read_config_json(run_dir: Union[str, os.PathLike]) -> Tuple[Path, Any]:
    """The path and parsed JSON of `run_dir`'s config.json (its readers check its layout,
    `check_layout`, as they check a config.json's content given to them directly).

    Raises:
        BnnError: one line naming the file: missing, unreadable, or not JSON.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BnnError(f"{path} does not exist: {run_dir} is not a run folder written by "
                       "`bnn train`.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BnnError(f"{path} cannot be read ({exc.__class__.__name__}).") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BnnError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                       f"{exc.colno}); restore it, or start a new run.") from None
    return path, values


def check_layout(values: Any, source: str) -> int:
    """Checks that `values` is a config.json this bnn reads: a JSON object of layout
    (`format_version`, 1 when missing) up to `FORMAT_VERSION`, with `REQUIRED_FIELDS`.

    Returns:
        The layout.

    Raises:
        BnnError: naming `source` and what is wrong.
    """
    if not isinstance(values, dict):
        raise BnnError(f"{source} does not hold a JSON object.")
    version = values.get("format_version", 1)
    if not matches(version, int) or version < 1:
        raise BnnError(f"{source}: expected field 'format_version' to be an integer >= 1, "
                       f"got {version!r}.")
    if version > FORMAT_VERSION:
        raise BnnError(f"{source} has format_version {version}, newer than this bnn reads "
                       f"(up to {FORMAT_VERSION}); upgrade bnn to use this run folder.")
    missing = [name for name in REQUIRED_FIELDS if name not in values]
    if missing:
        raise BnnError(f"{source}: missing field {missing[0]!r}; it is not a config.json "
                       "written by `bnn train`.")
    return version


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What deploying a run's model reads of its folder's config.json.

    Attributes:
        config_file: The config.json read.
        model: The registry name of the run's model (e.g. "binary-densenet28").
        model_input: How the model is fed and read (`ModelInput`).
    """

    config_file: Path
    model: str
    model_input: ModelInput

    @classmethod
    def read(cls, run_dir: Union[str, os.PathLike]) -> "RunSummary":
        """The summary of `run_dir`'s config.json.

        Raises:
            BnnError: as `RunRecord.read`, for the file and the fields read here.
        """
        path, values = read_config_json(run_dir)
        source = str(path)
        check_layout(values, source)
        fields = {name: checked_field(source, name, values.get(name), annotation, parse)
                  for name, annotation, parse in _SUMMARY_FIELDS}
        model_input = ModelInput(
            input_shape=fields["input_shape"], normalization=fields["normalization"],
            class_names=fields["class_names"], num_classes=fields["num_classes"],
            dataset=fields["dataset"], data_dir=fields["data_dir"],
            pixel_max=fields["pixel_max"])
        return cls(config_file=path, model=fields["model"], model_input=model_input)

    def to_metadata(self) -> Dict[str, Any]:
        """The model's name and its input, as the .tflite metadata and a bundle record them."""
        return {"model": self.model, **self.model_input.to_metadata()}


def parse_shape(values: List[int]) -> Tuple[int, int, int]:
    if len(values) != 3 or min(values) < 1:
        raise ValueError("a list of 3 positive integers (height, width, channels)")
    return tuple(values)


def parse_normalization(values: Dict[str, List[float]]) -> Normalization:
    if set(values) != {"mean", "std"} or not values["mean"] or (
            len(values["mean"]) != len(values["std"])):
        raise ValueError("an object with lists mean and std of the same length")
    return Normalization.from_dict(values)


# (field, its JSON type, its parser) of what `RunSummary` reads; the types are those
# `TrainConfig` and `RunRecord` declare for the same fields.
_SUMMARY_FIELDS: Tuple[Tuple[str, Any, Optional[Callable[[Any], Any]]], ...] = (
    ("model", str, None),
    ("dataset", str, None),
    ("data_dir", Optional[str], None),
    ("input_shape", List[int], parse_shape),
    ("num_classes", int, None),
    ("class_names", List[str], None),
    ("normalization", Dict[str, List[float]], parse_normalization),
    ("pixel_max", Optional[float], None),
)


def checked_field(source: str, name: str, value: Any, annotation: Any,
                  parse: Optional[Callable[[Any], Any]] = None) -> Any:
    """`value` of field `name` checked against `annotation` (and parsed), or a BnnError.

    Args:
        source: The file, for the message.
        name: The field.
        value: Its JSON value.
        annotation: The type it must have (`matches`).
        parse: Turns the value into what the reader holds; raises ValueError saying what it
            expected.

    Raises:
        BnnError: "SOURCE: expected field 'NAME' to be WHAT, got VALUE."
    """
    expected = _described(annotation)
    if matches(value, annotation):
        if parse is None:
            return value
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            expected = str(exc) if isinstance(exc, ValueError) else expected
    raise BnnError(f"{source}: expected field {name!r} to be {expected}, got "
                   f"{shown(value)}.")


def shown(value: Any, limit: int = 60) -> str:
    """A JSON value for a message, cut at `limit` characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a type annotation (Optional, int, float, str, bool, Any,
    Dict[str, X], List[X])."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Union:
        return any(matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and matches(v, args[1]) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    raise TypeError(f"no JSON check for {annotation!r}")  # a field type this module forgot


def _described(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return " or ".join(_described(arg) for arg in args)
    if origin is dict:
        return "an object"
    if origin is list:
        return f"a list of {_described(args[0]).split(' ', 1)[-1]}s"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(annotation, str(annotation))

