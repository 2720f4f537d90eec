"""Image classification data sets as `tf.data` pipelines.

Each loader returns a `DataSplits` of *unbatched* (image, label) datasets with images in their raw
pixel scale (uint8 0..255, or 0..16 for the digits set) plus the metadata the rest of the product
needs: class names, native image shape and the per-channel normalization computed on the training
split. `make_pipeline` resizes, normalizes, augments, batches and prefetches. The normalization is
written to the run folder so that conversion checks and prediction apply exactly the same.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError

# Images used to estimate the per-channel mean/std of a training split.
_NORMALIZATION_SAMPLE = 10_000


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel `(x - mean) / std` on raw pixel values."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def apply(self, images):
        """Normalizes a float tensor or array of images (channels last)."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (images - mean) / std

    def to_dict(self) -> Dict[str, List[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Dict[str, Sequence[float]]) -> "Normalization":
        return cls(mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))

    @classmethod
    def from_images(cls, images: np.ndarray) -> "Normalization":
        """Estimates mean/std per channel from an (N, H, W, C) array."""
        images = np.asarray(images, np.float64)
        std = images.std(axis=(0, 1, 2))
        # A constant channel would divide by zero; 1.0 leaves it centred but unscaled.
        std = np.where(std > 0, std, 1.0)
        return cls(mean=tuple(images.mean(axis=(0, 1, 2)).tolist()), std=tuple(std.tolist()))


@dataclasses.dataclass
class DataSplits:
    """A data set's train and test splits plus what training and conversion need to know.

    Attributes:
        name: Data set name as given by the user (e.g. "digits", "cifar10").
        train: Unbatched dataset of (image float32 HWC raw scale, label int32).
        test: Same for the test split.
        num_train: Number of training examples.
        num_test: Number of test examples.
        image_shape: Native (height, width, channels).
        class_names: One name per class.
        normalization: Statistics of the training split.
        augmentation: Name of the default augmentation ("none" or "crop_flip").
        default_image_size: Side the model input gets when the user does not choose one.
    """

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_test: int
    image_shape: Tuple[int, int, int]
    class_names: List[str]
    normalization: Normalization
    augmentation: str = "none"
    default_image_size: Optional[int] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _from_arrays(
    name, x_train, y_train, x_test, y_test, class_names, augmentation, default_image_size=None
) -> DataSplits:
    x_train = np.asarray(x_train, np.float32)
    x_test = np.asarray(x_test, np.float32)
    return DataSplits(
        name=name,
        train=tf.data.Dataset.from_tensor_slices((x_train, np.asarray(y_train, np.int32))),
        test=tf.data.Dataset.from_tensor_slices((x_test, np.asarray(y_test, np.int32))),
        num_train=len(x_train),
        num_test=len(x_test),
        image_shape=tuple(int(d) for d in x_train.shape[1:]),
        class_names=list(class_names),
        normalization=Normalization.from_images(x_train[:_NORMALIZATION_SAMPLE]),
        augmentation=augmentation,
        default_image_size=default_image_size,
    )


def load_digits(data_dir: Optional[str] = None) -> DataSplits:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16).

    The split is fixed (stratified, 20% test, seed 0) so that every run and every test sees the
    same 1,437 training and 360 test images. Works offline: the data ships inside scikit-learn.
    Models see them upsampled to 16x16 by default, so that the three 2x2 poolings of a
    BinaryDenseNet still leave a 2x2 feature map.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images[..., np.newaxis].astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return _from_arrays(
        "digits", x_train, y_train, x_test, y_test, [str(d) for d in range(10)], "none",
        default_image_size=16,
    )


_TFDS_AUGMENTATION = {"cifar10": "crop_flip", "cifar100": "crop_flip"}


def load_tfds(name: str, data_dir: Optional[str] = None) -> DataSplits:
    """A TensorFlow Datasets image classification set (downloaded and prepared on first use).

    Raises:
        BnnError: the data set cannot be downloaded or prepared (e.g. no internet).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
    except Exception as exc:  # network, DNS, checksum and manual-download errors alike
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BnnError(
            f"Could not download or prepare the TFDS data set {name!r} ({reason}). Offline, use "
            "--dataset digits (bundled), or --data-dir pointing to a folder where TFDS already "
            f"prepared {name!r}."
        ) from None
    info = builder.info
    train = builder.as_dataset(split="train", as_supervised=True)
    test = builder.as_dataset(split="test", as_supervised=True)
    sample = np.stack(
        [img for img, _ in tfds.as_numpy(train.take(_NORMALIZATION_SAMPLE))]
    ).astype(np.float32)

    def to_float(image, label):
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    return DataSplits(
        name=name,
        train=train.map(to_float, num_parallel_calls=tf.data.AUTOTUNE),
        test=test.map(to_float, num_parallel_calls=tf.data.AUTOTUNE),
        num_train=info.splits["train"].num_examples,
        num_test=info.splits["test"].num_examples,
        image_shape=tuple(int(d) for d in info.features["image"].shape),
        class_names=list(info.features["label"].names),
        normalization=Normalization.from_images(sample),
        augmentation=_TFDS_AUGMENTATION.get(name, "none"),
    )


_LOADERS: Dict[str, Callable[[Optional[str]], DataSplits]] = {
    "digits": load_digits,
    "cifar10": lambda data_dir=None: load_tfds("cifar10", data_dir),
}


def list_datasets() -> List[str]:
    """Names accepted by `load_dataset`."""
    return sorted(_LOADERS)


def load_dataset(name: str, data_dir: Optional[str] = None) -> DataSplits:
    """Loads a data set by name.

    Args:
        name: One of `list_datasets()`.
        data_dir: Where the data set lives or is downloaded to (TFDS `data_dir`).

    Raises:
        BnnError: unknown name, or the data cannot be loaded.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise BnnError(
            f"Unknown data set {name!r}; expected one of: {', '.join(list_datasets())}."
        ) from None
    return loader(data_dir)


def preprocess(
    images: tf.Tensor, image_size: Optional[Tuple[int, int]], normalization: Normalization
) -> tf.Tensor:
    """Resizes (bilinear) raw-scale images to `image_size` and normalizes them."""
    images = tf.cast(images, tf.float32)
    if image_size is not None and tuple(images.shape[-3:-1]) != tuple(image_size):
        images = tf.image.resize(images, image_size, method="bilinear")
    return normalization.apply(images)


def _crop_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random crop after 4-pixel-per-32 reflection padding, and random horizontal flip."""
    height, width = image.shape[0], image.shape[1]
    pad = max(1, height // 8)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def make_pipeline(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    normalization: Normalization,
    image_size: Optional[Tuple[int, int]] = None,
    training: bool = False,
    augmentation: str = "none",
    seed: int = 0,
    cache: bool = True,
) -> tf.data.Dataset:
    """Turns an unbatched (raw image, label) dataset into a batched, prefetched input pipeline.

    Args:
        dataset: Unbatched (image, label) pairs in raw pixel scale.
        batch_size: Global batch size.
        normalization: Applied after resizing.
        image_size: (height, width) the model expects; None keeps the native size.
        training: Shuffle and augment when True.
        augmentation: "none" or "crop_flip" (only used when `training`).
        seed: Seeds shuffling and augmentation, so two runs see the same batches.
        cache: Cache the preprocessed images in memory (for sets that fit).

    Returns:
        A `tf.data.Dataset` of (normalized float32 images, int32 labels) batches.
    """
    if augmentation not in ("none", "crop_flip"):
        raise BnnError(f"Expected augmentation 'none' or 'crop_flip', got {augmentation!r}.")
    autotune = tf.data.AUTOTUNE
    ds = dataset.map(
        lambda x, y: (preprocess(x, image_size, normalization), y), num_parallel_calls=autotune
    )
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        if augmentation == "crop_flip":
            # A counter zipped in gives every example its own stateless seed: reproducible
            # with `seed`, and independent of how many parallel calls tf.data schedules.
            counter = tf.data.Dataset.counter()
            ds = tf.data.Dataset.zip((ds, counter)).map(
                lambda xy, i: (_crop_flip(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
                num_parallel_calls=autotune,
            )
    return ds.batch(batch_size).prefetch(autotune)


def to_numpy(
    dataset: tf.data.Dataset, limit: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Collects (images, labels) from a batched dataset, up to `limit` examples."""
    xs, ys, n = [], [], 0
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(y.numpy())
        n += len(xs[-1])
        if limit is not None and n >= limit:
            break
    if not xs:
        raise BnnError("The data set is empty.")
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)
