"""Inputs to verify a conversion on: real test images when the run's data set is known."""

import warnings
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.training import data as data_lib
from bnn_keras.training.data.preprocessing import ModelInput
from convert.flatbuffer import Flatbuffer, FlatbufferLike

if TYPE_CHECKING:
    from bnn_keras.training.config import RunRecord

# A run's `RunRecord`, its `ModelInput`, or a mapping that describes one (a config.json, a
# .tflite's bnn metadata, a model file's options).
RunConfig = Union["RunRecord", ModelInput, Mapping[str, Any]]


def model_input(run_config: RunConfig) -> ModelInput:
    """The `ModelInput` that `run_config` describes (what its images were fed with)."""
    if isinstance(run_config, ModelInput):
        return run_config
    if isinstance(run_config, Mapping):
        return ModelInput.from_mapping(run_config)
    return run_config.model_input


def run_test_split(
    run_config: RunConfig,
    limit: Optional[int] = None,
    *,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    split: str = "test",
) -> Tuple[np.ndarray, np.ndarray]:
    """The run's test split, preprocessed exactly as in training (size, normalization).

    Args:
        run_config: A run folder's `RunRecord`, or a `ModelInput` or its mapping (a .tflite's
            bnn metadata).
        limit: At most this many examples (the first ones, in a fixed order).
        dataset: Another data set to take the test split from (same preprocessing).
        data_dir: Where that data set lives.
        split: "test", or "train" (un-augmented, e.g. to calibrate int8 ranges).

    Returns:
        (images, labels) as NumPy arrays.
    """
    if limit is not None and limit < 1:
        raise BnnError(f"Expected limit >= 1, got {limit}.")
    recorded = model_input(run_config)
    splits = data_lib.load_dataset(dataset or recorded.dataset, data_dir or recorded.data_dir)
    return _split_arrays(splits, recorded, limit, split)


def _split_arrays(splits: "data_lib.DataSplits", recorded: ModelInput,
                  limit: Optional[int], split: str) -> Tuple[np.ndarray, np.ndarray]:
    examples = splits.train if split == "train" else splits.test
    examples = examples.take(limit) if limit is not None else examples
    pipeline = data_lib.make_pipeline(
        examples,
        batch_size=128,
        normalization=recorded.normalization,
        image_size=recorded.image_size,
        cache=False,
    )
    return data_lib.to_numpy(pipeline, limit)


def verification_inputs(
    model: tf.keras.Model, run_config: Optional[RunConfig], samples: int
) -> Tuple[np.ndarray, Optional[np.ndarray], str]:
    """Up to `samples` inputs for comparing Keras with a flatbuffer, their labels (None for
    random inputs), and what they are.

    Real test images when `run_config` names the data set; otherwise standard-normal noise
    (which exercises the graph but not the decision boundaries real data reaches), with a
    warning.
    """
    if samples < 1:
        raise BnnError(f"Expected samples >= 1, got {samples}.")
    recorded = model_input(run_config) if run_config else None
    if recorded is not None and recorded.dataset:
        x, y = run_test_split(recorded, samples)
        return x, y, f"{recorded.dataset} test images"
    warnings.warn(
        "No run config with a data set: verifying on random inputs. Convert a run folder "
        "to verify on real images.",
        stacklevel=2,
    )
    shape = (samples, *model.input_shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return x, None, "random inputs"


def flatbuffer_test_split(
    flatbuffer: FlatbufferLike,
    *,
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    limit: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, str]:
    """A test split preprocessed as the .tflite's training was, from its embedded metadata.

    Args:
        flatbuffer: The `Flatbuffer`, or its bytes.
        dataset: Another data set with the same classes.
        data_dir: Where that data set lives.
        limit: At most this many examples.

    Returns:
        (images, labels, data set name).

    Raises:
        BnnError: the flatbuffer has no bnn metadata, or no data set is known.
    """
    flatbuffer = Flatbuffer.wrap(flatbuffer)
    meta = flatbuffer.metadata or {}
    if meta.get("normalization") is None or meta.get("input_shape") is None:
        raise BnnError(
            "The .tflite carries no training preprocessing (bnn metadata); convert it from a "
            "run folder with `bnn convert RUN_DIR`."
        )
    recorded = ModelInput.from_mapping(meta, source=f"The bnn metadata of {flatbuffer.source}")
    name = dataset or recorded.dataset
    if not name:
        raise BnnError("The .tflite does not name its data set; pass `dataset`.")
    if limit is not None and limit < 1:
        raise BnnError(f"Expected limit >= 1, got {limit}.")
    splits = data_lib.load_dataset(name, data_dir or recorded.data_dir)
    check_same_classes(recorded.class_names, flatbuffer.output_count(), splits.class_names,
                       name)
    x, y = _split_arrays(splits, recorded, limit, "test")
    return x, y, name


def check_same_classes(model_names: Optional[Sequence[str]], outputs: int,
                       data_names: Sequence[str], dataset: str) -> None:
    """Refuses a data set whose classes are not the model's: accuracy on it would be noise.

    Args:
        model_names: The class names the model was trained with (its metadata), if known.
        outputs: The model's number of outputs.
        data_names: The data set's class names, in label order.
        dataset: The data set's name, for the message.

    Raises:
        BnnError: the counts differ, or the first names that differ.
    """
    data_names = [str(n) for n in data_names]
    if outputs != len(data_names):
        raise BnnError(f"The model has {outputs} classes but {dataset} has {len(data_names)}; "
                       "evaluate it on the data set it was trained for.")
    if model_names is None:
        return
    model_names = [str(n) for n in model_names]
    if len(model_names) != outputs:
        raise BnnError(f"The .tflite names {len(model_names)} classes for {outputs} outputs; "
                       "convert the model again.")
    differ = [i for i, (a, b) in enumerate(zip(model_names, data_names)) if a != b]
    if differ:
        shown = ", ".join(f"{i}: {model_names[i]!r} vs {data_names[i]!r}" for i in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise BnnError(f"The classes of {dataset} differ from the model's ({shown}{more}); "
                       "evaluate it on the data set it was trained for.")
