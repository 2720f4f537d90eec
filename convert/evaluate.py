"""Accuracy of a flatbuffer on a labelled set, and top-k predictions for image files.

Both run LCE's interpreter in a child process (`convert.isolated`), so a damaged .tflite file
gives a `BnnError` instead of killing the caller. Images are preprocessed exactly as in training
(`bnn_keras.training.data.preprocess`: bilinear resize in raw pixel scale, then the run's per-channel
normalization), so the numbers match what the model saw during training. A flatbuffer read from
the `.unverified` file that `bnn convert` keeps when it disagrees with Keras still runs, with a
warning that its outputs may not be the model's.
"""

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from bnn_keras.errors import BnnError
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.preprocessing import DEFAULT_PIXEL_MAX, ModelInput
from convert.flatbuffer import UNVERIFIED_SUFFIX, Flatbuffer
from convert.isolated import DEFAULT_TIMEOUT_S, isolated_predict

# What the functions below accept as a model: a .tflite path, its bytes, or a `Flatbuffer`.
FlatbufferSource = Union[str, os.PathLike, bytes, Flatbuffer]

# Largest image `load_images` decodes by default (`bnn predict --max-pixels`): 40 megapixels
# cover any camera photo and take ~0.5 GB to decode and resize.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclasses.dataclass
class ImagePrediction:
    """Top-k classes for one image file.

    Attributes:
        path: The image file.
        top: (class index, class name, score) tuples, best first; the score is the model's output
            (a probability when the model ends in softmax).
    """

    path: str
    top: List[Tuple[int, str, float]]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "path": self.path,
            "top": [{"index": i, "class": name, "score": score} for i, name, score in self.top],
        }


def is_unverified(flatbuffer: Flatbuffer) -> bool:
    """Whether `flatbuffer` was read from a file that `bnn convert` kept as `.unverified`
    because its outputs disagreed with its Keras model's (`convert.workflow`)."""
    return flatbuffer.source.endswith(UNVERIFIED_SUFFIX)


def _warn_if_unverified(flatbuffer: Flatbuffer) -> None:
    """Warns that an `.unverified` flatbuffer's outputs may not be its model's: it still runs
    (it is kept for inspection), but a number it gives must not pass for the model's."""
    if is_unverified(flatbuffer):
        warnings.warn(
            f"{flatbuffer.source} failed verification against its Keras model when `bnn "
            "convert` made it (it keeps such a flatbuffer as .unverified, for inspection): its "
            "outputs, and so its accuracy, may not be the model's.", UserWarning, stacklevel=4)


def _predict(flatbuffer: Flatbuffer, x: np.ndarray, threads: int, timeout: float) -> np.ndarray:
    """Float outputs of the flatbuffer for float inputs, in an isolated interpreter (int8 I/O is
    quantized and dequantized with the flatbuffer's own scales)."""
    _warn_if_unverified(flatbuffer)
    raw = isolated_predict(flatbuffer, flatbuffer.quantize_inputs(x), threads=threads,
                           timeout=timeout)
    return flatbuffer.dequantize_outputs(raw)


def evaluate_flatbuffer(
    flatbuffer: FlatbufferSource,
    x: np.ndarray,
    y: np.ndarray,
    *,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Dict[str, float]:
    """Top-1 accuracy of a flatbuffer on preprocessed inputs.

    Args:
        flatbuffer: A .tflite path, bytes or `Flatbuffer`.
        x: Normalized inputs (N, H, W, C), as `make_pipeline` produces them.
        y: Integer labels (N,) or one-hot labels (N, classes).
        threads: Interpreter threads.
        timeout: Seconds before the interpreter child is killed.

    Returns:
        `{"accuracy": float in [0, 1], "n": number of examples}`. A flatbuffer read from an
        `.unverified` file warns (`UserWarning`) that this may not be its Keras model's
        accuracy.

    Raises:
        BnnError: mismatched lengths, a bad flatbuffer, or an interpreter failure.
    """
    y = np.asarray(y)
    labels = y.argmax(-1) if y.ndim == 2 else y.reshape(-1)
    if len(labels) != len(x):
        raise BnnError(
            f"Expected as many labels as inputs, got {len(labels)} labels for {len(x)} inputs."
        )
    outputs = _predict(Flatbuffer.wrap(flatbuffer), x, threads, timeout)
    predicted = outputs.reshape(len(x), -1).argmax(-1)
    return {"accuracy": float(np.mean(predicted == labels)), "n": int(len(labels))}


def image_options(run_config: Mapping[str, Any]) -> Dict[str, Any]:
    """`predict_images` keyword arguments from a run's config.json, a .tflite's bnn metadata
    or a bundle's model.json (read as a `ModelInput`)."""
    has_shape = "input_shape" in run_config or "input" in run_config
    missing = [k for k in ("normalization", "input_shape", "class_names")
               if run_config.get(k) is None and not (k == "input_shape" and has_shape)]
    if missing:
        raise BnnError(f"The run config has no {', '.join(missing)}; was it written by `bnn train`?")
    model_input = ModelInput.from_mapping(run_config)
    return {
        "normalization": model_input.normalization,
        "input_shape": model_input.input_shape,
        "class_names": list(model_input.class_names),
        "pixel_max": model_input.pixel_max,
    }


def load_images(
    image_paths: Sequence[Union[str, os.PathLike]],
    *,
    normalization: Normalization,
    input_shape: Sequence[int],
    pixel_max: float = DEFAULT_PIXEL_MAX,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Reads image files into a normalized (N, H, W, C) float32 batch.

    PNG, JPEG, BMP and GIF (first frame) are read with `tf.io.decode_image`. Grayscale images
    feeding an RGB model are repeated over 3 channels; colour images feeding a 1-channel model are
    converted with `tf.image.rgb_to_grayscale`; alpha is dropped.

    Args:
        image_paths: Image files.
        normalization: The training normalization (raw pixel scale).
        input_shape: The model's (H, W, C).
        pixel_max: The training images' raw maximum (255, or 16 for digits).
        max_pixels: Refuse an image with more pixels than this, read from its header before
            decoding (decoding and resizing in float32 take ~13 bytes per pixel: 1.9 GB for
            12000x12000); None for no limit.

    Raises:
        BnnError: a missing or undecodable file, an image over `max_pixels`, or a channel count
            the model cannot take.
    """
    import tensorflow as tf

    from bnn_keras.training.data import image_file_size, preprocess

    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise BnnError(f"Expected a model with 1 or 3 input channels, got {channels}.")
    images = []
    for path in image_paths:
        file = Path(path)
        if not file.is_file():
            raise BnnError(f"No such image file: {file}.")
        size = image_file_size(file)
        if size is not None and max_pixels is not None and size[0] * size[1] > max_pixels:
            width, height = size
            raise BnnError(
                f"{file} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), over "
                f"the limit of {max_pixels / 1e6:g} megapixels that keeps decoding it from "
                f"taking gigabytes of memory; shrink it, or pass `max_pixels` "
                f"{width * height} to read it anyway."
            )
        try:
            image = tf.io.decode_image(file.read_bytes(), expand_animations=False)
        except Exception:  # decode errors are InvalidArgumentError with a multi-line message
            raise BnnError(f"{file} is not a PNG, JPEG, BMP or GIF image.") from None
        if image.shape[-1] in (2, 4):  # gray+alpha or RGBA
            image = image[..., : image.shape[-1] - 1]
        if image.shape[-1] == 1 and channels == 3:
            image = tf.image.grayscale_to_rgb(image)
        elif image.shape[-1] == 3 and channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        # Image files are 0..255 (decode_image gives uint8); training saw 0..pixel_max.
        image = tf.cast(image, tf.float32) * (pixel_max / 255.0)
        images.append(preprocess(image[tf.newaxis], (height, width), normalization)[0].numpy())
    if not images:
        raise BnnError("Expected at least one image file.")
    return np.stack(images).astype(np.float32)


def predict_images(
    flatbuffer: FlatbufferSource,
    image_paths: Sequence[Union[str, os.PathLike]],
    *,
    normalization: Union[Normalization, Mapping[str, Sequence[float]]],
    input_shape: Sequence[int],
    class_names: Sequence[str],
    top_k: int = 5,
    pixel_max: float = DEFAULT_PIXEL_MAX,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
) -> List[ImagePrediction]:
    """Top-k classes for each image file, with the training preprocessing.

    Args:
        flatbuffer: A .tflite path, bytes or `Flatbuffer`.
        image_paths: PNG/JPEG/BMP/GIF files.
        normalization: The run's normalization (`Normalization` or its dict).
        input_shape: The model's (H, W, C).
        class_names: One name per model output.
        top_k: Classes to report per image (capped at the number of classes).
        pixel_max: The training images' raw maximum; `image_options(run_config)` picks it.
        threads: Interpreter threads.
        timeout: Seconds before the interpreter child is killed.
        max_pixels: Largest image accepted, see `load_images`.

    Returns:
        One `ImagePrediction` per image, in order.

    Raises:
        BnnError: bad files, `top_k < 1`, or class names that do not match the model's outputs.
    """
    if top_k < 1:
        raise BnnError(f"Expected top_k >= 1, got {top_k}.")
    if not isinstance(normalization, Normalization):
        normalization = Normalization.from_dict(normalization)
    x = load_images(image_paths, normalization=normalization, input_shape=input_shape,
                    pixel_max=pixel_max, max_pixels=max_pixels)
    scores = _predict(Flatbuffer.wrap(flatbuffer), x, threads, timeout).reshape(len(x), -1)
    if scores.shape[1] != len(class_names):
        raise BnnError(
            f"The model has {scores.shape[1]} outputs but {len(class_names)} class names were given."
        )
    k = min(top_k, scores.shape[1])
    predictions = []
    for path, row in zip(image_paths, scores):
        best = np.argsort(-row, kind="stable")[:k]
        predictions.append(ImagePrediction(
            path=str(path), top=[(int(i), str(class_names[i]), float(row[i])) for i in best]
        ))
    return predictions
