"""The data sets by name: `load_dataset("digits")`, `load_dataset("folder:PATH")` and so on.

- `digits`: scikit-learn's bundled 8x8 digits (offline): the test set of the UCI "Optical
  Recognition of Handwritten Digits" data (Alpaydin and Kaynak, 1998).
- `mnist`, `fashion_mnist`: the standard IDX files read with NumPy when `data_dir` holds them
  (`idx`); otherwise TensorFlow Datasets. Without `data_dir`, `fashion_mnist` uses Debian's
  `dataset-fashion-mnist` files in `/usr/share/datasets/fashion-mnist` when they are installed.
- `cifar10`, `cifar100`, `imagenette`, `imagenet2012`: TensorFlow Datasets (`tfds`).
- `folder:PATH`: one sub-folder of images per class (`folder`).
"""

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from bnn_keras.errors import BnnError
from bnn_keras.training.data.folder import FOLDER_PREFIX, load_image_folder
from bnn_keras.training.data.idx import (
    IDX_FILE_NAMES,
    has_idx_files,
    load_idx_folder,
    missing_idx_files,
)
from bnn_keras.training.data.preprocessing import pixel_max_for
from bnn_keras.training.data.splits import DataSplits, from_arrays
from bnn_keras.training.data.tfds import load_tfds

# Debian's `dataset-fashion-mnist` package installs the IDX files here.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
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
    return from_arrays(
        "digits", x_train, y_train, x_test, y_test, [str(d) for d in range(10)], "none",
        default_image_size=16, pixel_max=pixel_max_for("digits"),
        source="scikit-learn's bundled 8x8 digits",
    )


def _mnist_like(name: str, class_names: Optional[Sequence[str]], default_dir: Optional[str]):
    def load(data_dir: Optional[str] = None, **tfds_options) -> DataSplits:
        folder = data_dir if data_dir is not None else default_dir
        if has_idx_files(folder):
            return load_idx_folder(name, folder, class_names)
        try:  # (TFDS downloads into `data_dir`, which it may create)
            return load_tfds(name, data_dir, **tfds_options)
        except BnnError as exc:
            raise BnnError(f"{_no_idx_files(name, data_dir, default_dir)}; and TensorFlow "
                           f"Datasets: {exc}") from None

    return load


def _no_idx_files(name: str, data_dir: Optional[str], default_dir: Optional[str]) -> str:
    """Why the IDX files of `name` were not read: which folder was looked in, what it lacks."""
    if data_dir is not None and not Path(data_dir).is_dir():
        return (f"`data_dir` {data_dir} is not a folder, so it has no {name} IDX files "
                f"({', '.join(IDX_FILE_NAMES)}, each optionally .gz)")
    if data_dir is not None:
        return (f"No {name} IDX files in `data_dir` {data_dir} (missing "
                f"{', '.join(missing_idx_files(data_dir))}, each optionally .gz)")
    if default_dir is not None:
        return (f"Without `data_dir`, {name} is read from {default_dir} (Debian's "
                f"dataset-{name.replace('_', '-')} package: apt-get install "
                f"dataset-{name.replace('_', '-')}), which has no IDX files here")
    return f"No `data_dir` with the {name} IDX files ({', '.join(IDX_FILE_NAMES)}) was given"


_LOADERS: Dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits,
    "mnist": _mnist_like("mnist", None, None),
    "fashion_mnist": _mnist_like("fashion_mnist", FASHION_MNIST_CLASSES, DEBIAN_FASHION_MNIST_DIR),
    "cifar10": lambda data_dir=None, **kw: load_tfds("cifar10", data_dir, **kw),
    "cifar100": lambda data_dir=None, **kw: load_tfds("cifar100", data_dir, **kw),
    "imagenette": lambda data_dir=None, **kw: load_tfds("imagenette", data_dir, **kw),
    "imagenet2012": lambda data_dir=None, **kw: load_tfds("imagenet2012", data_dir, **kw),
}


def list_datasets() -> List[str]:
    """Names accepted by `load_dataset` (plus `folder:PATH` for an image folder)."""
    return sorted(_LOADERS)


def load_dataset(
    name: str, data_dir: Optional[str] = None, *, manual_dir: Optional[str] = None
) -> DataSplits:
    """Loads a data set by name.

    Args:
        name: One of `list_datasets()`, or `folder:PATH` for an image folder (see
            `load_image_folder`).
        data_dir: Where the data set lives or is downloaded to (TFDS `data_dir`; for mnist and
            fashion_mnist a folder with the IDX files is read directly).
        manual_dir: Folder with manually downloaded archives (imagenet2012).

    Raises:
        BnnError: unknown name, or the data cannot be loaded.
    """
    if name.startswith(FOLDER_PREFIX):
        return load_image_folder(name[len(FOLDER_PREFIX):])
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise BnnError(
            f"Unknown data set {name!r}; expected one of: {', '.join(list_datasets())}, "
            f"or {FOLDER_PREFIX}PATH."
        ) from None
    if name == "digits":
        return loader(data_dir)
    return loader(data_dir, manual_dir=manual_dir) if manual_dir else loader(data_dir)
