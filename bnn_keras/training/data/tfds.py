"""TensorFlow Datasets image classification sets (cifar10, cifar100, imagenette, imagenet2012...).

Downloaded and prepared in `data_dir` on first use (TFDS, https://www.tensorflow.org/datasets).
When a set is not prepared yet, `network.network_unreachable_reason` decides in seconds whether a
download can work; ImageNet (Russakovsky et al., "ImageNet Large Scale Visual Recognition
Challenge", IJCV 2015) needs its archives downloaded by hand first.
"""

from pathlib import Path
from typing import Optional

import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
from bnn_keras.training.data import network
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.splits import (
    NORMALIZATION_SAMPLE,
    NORMALIZATION_SAMPLE_LARGE,
    DataSplits,
)

_TFDS_AUGMENTATION = {
    "cifar10": "crop_flip",
    "cifar100": "crop_flip",
    "imagenette": "resized_crop_flip",
    "imagenet2012": "resized_crop_flip",
}
_TFDS_IMAGE_SIZE = {"imagenette": 224, "imagenet2012": 224}

# What a user has to download by hand for data sets TFDS cannot fetch (license terms).
_MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"}


def _download_error(name: str, reason: str) -> BnnError:
    return BnnError(
        f"Could not download or prepare the TFDS data set {name!r} ({reason}). Offline, use "
        "`dataset` digits (bundled), `dataset` folder:PATH, IDX files in `data_dir` for "
        f"mnist/fashion_mnist, or `data_dir` pointing to a folder where TFDS already prepared "
        f"{name!r}."
    )


def _prepare(builder, name: str, manual: Path) -> None:
    """Downloads and prepares a TFDS builder's data, failing at once when it would need the
    network and there is none."""
    import tensorflow_datasets as tfds

    if _missing_manual_download(builder, manual):
        files = _MANUAL_FILES.get(name, "the files named in the TFDS instructions")
        raise BnnError(
            f"The TFDS data set {name!r} needs a manual download: put {files} in {manual} "
            "(or pass its folder as the manual download folder), then run again."
        )
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
        )
        return
    is_prepared = getattr(builder, "is_prepared", None)
    if is_prepared is not None and not is_prepared():
        reason = network.network_unreachable_reason()
        if reason:
            raise _download_error(name, reason)
    builder.download_and_prepare()


def _missing_manual_download(builder, manual_dir: Path) -> bool:
    if not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        return False
    is_prepared = getattr(builder, "is_prepared", None)
    if is_prepared is not None and is_prepared():
        return False
    return not (manual_dir.is_dir() and any(manual_dir.iterdir()))


def load_tfds(
    name: str, data_dir: Optional[str] = None, *, manual_dir: Optional[str] = None
) -> DataSplits:
    """A TensorFlow Datasets image classification set (downloaded and prepared on first use).

    Sets without a "test" split (imagenette, imagenet2012) use their "validation" split as test.

    Args:
        name: TFDS name, e.g. "cifar10" or "imagenet2012".
        data_dir: TFDS data folder (default `~/tensorflow_datasets`).
        manual_dir: Where manually downloaded archives are (ImageNet); default
            `DATA_DIR/downloads/manual`, TFDS' own default.

    Raises:
        BnnError: the data set cannot be downloaded or prepared (e.g. no internet: when the set
            is not prepared in `data_dir` yet, one connection attempt to the download host,
            `network_unreachable_reason`, decides in seconds), or a manual download is missing
            (the message says which files go where).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        manual = Path(manual_dir) if manual_dir else (
            Path(data_dir or Path("~/tensorflow_datasets").expanduser()) / "downloads" / "manual"
        )
        _prepare(builder, name, manual)
    except BnnError:
        raise
    except Exception as exc:  # network, DNS, checksum and manual-download errors alike
        raise _download_error(name, first_line(exc, 160)) from None
    info = builder.info
    test_split = "test" if "test" in info.splits else "validation"
    train = builder.as_dataset(split="train", as_supervised=True)
    test = builder.as_dataset(split=test_split, as_supervised=True)
    image_shape = tuple(None if d is None else int(d) for d in info.features["image"].shape)
    variable_size = None in image_shape[:2]
    sample = NORMALIZATION_SAMPLE_LARGE if variable_size else NORMALIZATION_SAMPLE

    def to_float(image, label):
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    return DataSplits(
        name=name,
        train=train.map(to_float, num_parallel_calls=tf.data.AUTOTUNE),
        test=test.map(to_float, num_parallel_calls=tf.data.AUTOTUNE),
        num_train=info.splits["train"].num_examples,
        num_test=info.splits[test_split].num_examples,
        image_shape=image_shape,
        class_names=list(info.features["label"].names),
        normalization=Normalization.from_image_stream(
            img for img, _ in tfds.as_numpy(train.take(sample))
        ),
        augmentation=_TFDS_AUGMENTATION.get(name, "none"),
        default_image_size=_TFDS_IMAGE_SIZE.get(name),
        source=f"TensorFlow Datasets {name} in "
               f"{getattr(builder, 'data_dir', None) or data_dir or 'its default data_dir'}",
    )
