"""MNIST-style IDX files read with NumPy, without TensorFlow Datasets (works offline).

The IDX format is that of LeCun, Cortes and Burges' MNIST database
(http://yann.lecun.com/exdb/mnist/); Fashion-MNIST (Xiao, Rasul and Vollgraf, "Fashion-MNIST: a
Novel Image Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017) ships
in the same four files.
"""

import gzip
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from bnn_keras.errors import BnnError
from bnn_keras.training.data.splits import DataSplits, from_arrays

# IDX type codes -> big-endian NumPy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed, by its `.gz` suffix) into a NumPy array.

    Raises:
        BnnError: the file is not a valid IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise BnnError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise BnnError(
            f"{path} is truncated or corrupt: expected {expected} data bytes for shape {shape}, "
            f"got {len(raw) - header}."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    # Both the canonical names and the "train-images.idx3-ubyte" variant some mirrors use.
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


_IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# The four files of an MNIST-style data set (each may be gzipped: NAME.gz).
IDX_FILE_NAMES = tuple(_IDX_STEMS.values())


def has_idx_files(folder: Optional[str]) -> bool:
    """True when `folder` holds the four standard MNIST-style IDX files."""
    return folder is not None and not missing_idx_files(folder)


def missing_idx_files(folder: str) -> List[str]:
    """Those of `IDX_FILE_NAMES` that `folder` lacks (all of them when it is no folder)."""
    return [stem for stem in IDX_FILE_NAMES if _find_idx(Path(folder), stem) is None]


def load_idx_folder(
    name: str, data_dir: str, class_names: Optional[Sequence[str]] = None
) -> DataSplits:
    """An MNIST-style data set from the four standard IDX files in `data_dir`, without TFDS.

    Args:
        name: Data set name to record (e.g. "fashion_mnist").
        data_dir: Folder with `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
            `t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]`.
        class_names: One name per class; default "0", "1", ...

    Raises:
        BnnError: a file is missing or invalid.
    """
    folder = Path(data_dir)
    arrays = {}
    for key, stem in _IDX_STEMS.items():
        path = _find_idx(folder, stem)
        if path is None:
            raise BnnError(
                f"{folder} has no {stem} (or {stem}.gz): expected the four MNIST-style IDX files "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                "t10k-labels-idx1-ubyte there."
            )
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise BnnError(
                f"{folder}: expected {split} images (N, H, W) and labels (N,), got {x.shape} "
                f"and {y.shape}."
            )
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    return from_arrays(
        name,
        arrays["x_train"][..., np.newaxis], arrays["y_train"],
        arrays["x_test"][..., np.newaxis], arrays["y_test"],
        names, "none", source=f"IDX files in {folder}",
    )
