"""Image classification data sets as `tf.data` pipelines.

Each loader returns a `DataSplits` of *unbatched* (image, label) datasets with images in their raw
pixel scale (0..255, or 0..16 for the digits set; `DataSplits.pixel_max` says which) plus the
metadata the rest of the product needs: class names, native image shape and the per-channel
normalization computed on the training split. `make_pipeline` resizes, normalizes, augments,
batches and prefetches. The normalization is written to the run folder so that conversion checks
and prediction apply exactly the same.

Sources:

- `digits`: scikit-learn's bundled 8x8 digits (offline).
- `mnist`, `fashion_mnist`: the standard IDX files read with NumPy when `data_dir` holds them
  (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`); otherwise
  TensorFlow Datasets. Without `data_dir`, `fashion_mnist` uses Debian's
  `dataset-fashion-mnist` files in `/usr/share/datasets/fashion-mnist` when they are installed.
- `cifar10`, `cifar100`, `imagenette`, `imagenet2012`: TensorFlow Datasets (downloaded and
  prepared in `data_dir` on first use; ImageNet needs a manual download, see `load_tfds`).
- `folder:PATH`: one sub-folder of images per class, see `load_image_folder`.
"""

import dataclasses
import gzip
import os
import socket
import threading
import urllib.parse
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError, first_line

# Images used to estimate the per-channel mean/std of a training split.
_NORMALIZATION_SAMPLE = 10_000
# Fewer for sets of large, variable-size images, whose decoding dominates the estimate's cost.
_NORMALIZATION_SAMPLE_LARGE = 1_000

# `make_pipeline` caches the preprocessed split in memory when it takes less than this.
CACHE_LIMIT_BYTES = 2 * 1024**3

AUGMENTATIONS = ("none", "crop_flip", "resized_crop_flip")

DEFAULT_PIXEL_MAX = 255.0

# Debian's `dataset-fashion-mnist` package installs the IDX files here.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Share of a single-folder image set that goes to the test split (see `load_image_folder`).
FOLDER_TEST_PERCENT = 20

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


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

    @classmethod
    def from_image_stream(cls, images: Iterable[np.ndarray]) -> "Normalization":
        """Estimates mean/std per channel from (H, W, C) arrays that may differ in size.

        Raises:
            BnnError: `images` is empty.
        """
        total = total_sq = None
        count = 0
        for image in images:
            pixels = np.asarray(image, np.float64).reshape(-1, np.shape(image)[-1])
            total = pixels.sum(0) if total is None else total + pixels.sum(0)
            total_sq = (pixels**2).sum(0) if total_sq is None else total_sq + (pixels**2).sum(0)
            count += len(pixels)
        if not count:
            raise BnnError("The data set is empty.")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std > 0, std, 1.0)
        return cls(mean=tuple(mean.tolist()), std=tuple(std.tolist()))


@dataclasses.dataclass
class DataSplits:
    """A data set's train and test splits plus what training and conversion need to know.

    Attributes:
        name: Data set name as given by the user (e.g. "digits", "cifar10").
        train: Unbatched dataset of (image float32 HWC raw scale, label int32).
        test: Same for the test split (the "validation" split when a set has no "test").
        num_train: Number of training examples.
        num_test: Number of test examples.
        image_shape: Native (height, width, channels); height and width are None for sets of
            variable-size images (imagenette, imagenet2012).
        class_names: One name per class.
        normalization: Statistics of the training split.
        augmentation: Name of the default augmentation, one of `AUGMENTATIONS`.
        default_image_size: Side the model input gets when the user does not choose one.
        pixel_max: Maximum of the raw pixel scale (16 for digits, 255 otherwise), so that
            images read from files (0..255) can be rescaled to what the model was trained on.
    """

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_test: int
    image_shape: Tuple[Optional[int], Optional[int], int]
    class_names: List[str]
    normalization: Normalization
    augmentation: str = "none"
    default_image_size: Optional[int] = None
    pixel_max: float = DEFAULT_PIXEL_MAX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _from_arrays(
    name, x_train, y_train, x_test, y_test, class_names, augmentation, default_image_size=None,
    pixel_max=DEFAULT_PIXEL_MAX,
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
        pixel_max=float(pixel_max),
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
        default_image_size=16, pixel_max=16.0,
    )


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

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


def has_idx_files(folder: Optional[str]) -> bool:
    """True when `folder` holds the four standard MNIST-style IDX files."""
    return folder is not None and all(
        _find_idx(Path(folder), stem) is not None for stem in _IDX_STEMS.values()
    )


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
    return _from_arrays(
        name,
        arrays["x_train"][..., np.newaxis], arrays["y_train"],
        arrays["x_test"][..., np.newaxis], arrays["y_test"],
        names, "none",
    )


def _mnist_like(name: str, class_names: Optional[Sequence[str]], default_dir: Optional[str]):
    def load(data_dir: Optional[str] = None, **tfds_options) -> DataSplits:
        folder = data_dir if data_dir is not None else default_dir
        if has_idx_files(folder):
            return load_idx_folder(name, folder, class_names)
        return load_tfds(name, data_dir, **tfds_options)

    return load


# ----------------------------------------------------------------------------------------------
# TensorFlow Datasets

_TFDS_AUGMENTATION = {
    "cifar10": "crop_flip",
    "cifar100": "crop_flip",
    "imagenette": "resized_crop_flip",
    "imagenet2012": "resized_crop_flip",
}
_TFDS_IMAGE_SIZE = {"imagenette": 224, "imagenet2012": 224}

# What a user has to download by hand for data sets TFDS cannot fetch (license terms).
_MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"}


# TFDS first looks for a prepared copy on Google Cloud Storage, then downloads from the data
# set's own hosts, retrying each file for minutes when offline. One TCP connection tells in
# seconds whether the network is there at all. BNN_NETWORK_PROBE=HOST:PORT probes another
# host (a mirror), BNN_NETWORK_PROBE=off skips the probe.
NETWORK_PROBE_ENV = "BNN_NETWORK_PROBE"
_DEFAULT_PROBE = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 3.0


def _probe_address() -> Optional[Tuple[str, int]]:
    """Where the connectivity probe connects: BNN_NETWORK_PROBE, the HTTPS proxy, or GCS."""
    setting = os.environ.get(NETWORK_PROBE_ENV, "").strip()
    if setting.lower() in ("off", "0", "no", "none"):
        return None
    if setting:
        host, _, port = setting.rpartition(":") if ":" in setting else (setting, "", "443")
        return host.strip("[]"), int(port)
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    if proxy:  # downloads go through the proxy; a direct connection may well be blocked
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return _DEFAULT_PROBE


def network_unreachable_reason(timeout: float = _PROBE_TIMEOUT_S) -> Optional[str]:
    """Why the download host cannot be reached, or None when a TCP connection to it opens.

    One TCP connect, no HTTP request. Name resolution has no timeout of its own in Python, so
    the attempt runs in a daemon thread that is abandoned after `timeout` (+1 s).

    Args:
        timeout: Seconds for the connection.

    Returns:
        None when online (or the probe is switched off with BNN_NETWORK_PROBE=off), else a
        short reason such as "cannot reach storage.googleapis.com:443: Name or service not
        known".
    """
    address = _probe_address()
    if address is None:
        return None
    outcome: List[Optional[str]] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or str(exc) or type(exc).__name__)

    thread = threading.Thread(target=connect, name="bnn-network-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if outcome and outcome[0] is None:
        return None
    why = outcome[0] if outcome else f"no answer within {timeout:.0f} s"
    return f"cannot reach {address[0]}:{address[1]}: {why}"


def _download_error(name: str, reason: str) -> BnnError:
    return BnnError(
        f"Could not download or prepare the TFDS data set {name!r} ({reason}). Offline, use "
        "--dataset digits (bundled), --dataset folder:PATH, IDX files in --data-dir for "
        f"mnist/fashion_mnist, or --data-dir pointing to a folder where TFDS already prepared "
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
        reason = network_unreachable_reason()
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
    sample = _NORMALIZATION_SAMPLE_LARGE if variable_size else _NORMALIZATION_SAMPLE

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
    )


# ----------------------------------------------------------------------------------------------
# Image files

# JPEG start-of-frame markers (baseline, progressive, lossless...): they carry the image size.
# C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding) share the range but are not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_file_size(path: Union[str, os.PathLike]) -> Optional[Tuple[int, int]]:
    """(width, height) of a PNG, JPEG, GIF or BMP file, read from its header without decoding.

    Decoding a 12000x12000 image takes gigabytes; this reads a few bytes (JPEG: the segment
    headers up to the frame header), so callers can refuse such a file first.

    Args:
        path: An image file.

    Returns:
        (width, height), or None when the header is not one of these formats or is cut short
        (the decoder then reports the file).
    """
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
            return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
        if head[:2] == b"BM" and len(head) >= 26:
            if int.from_bytes(head[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
                return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
            # BITMAPINFOHEADER and later; a negative height means rows stored top-down.
            width = int.from_bytes(head[18:22], "little", signed=True)
            return abs(width), abs(int.from_bytes(head[22:26], "little", signed=True))
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:  # JPEG: walk the segments (FF marker, 2-byte length) to the frame header
            marker = f.read(2)
            while marker[:1] == b"\xff" and marker[1:2] == b"\xff":  # fill bytes
                marker = marker[1:] + f.read(1)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            if marker[1] == 0x01 or 0xD0 <= marker[1] <= 0xD8:  # segments without a length
                continue
            length = f.read(2)
            if len(length) < 2:
                return None
            if marker[1] in _JPEG_SOF:
                frame = f.read(5)  # precision, height, width
                if len(frame) < 5:
                    return None
                return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
            f.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


# ----------------------------------------------------------------------------------------------
# Image folders


def _list_class_folder(folder: Path) -> Dict[str, List[Path]]:
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(
            p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if images:
            classes[sub.name] = images
    return classes


def _in_test_split(relative_path: str) -> bool:
    # A hash of the path (not the file's position in a listing) decides, so adding or removing
    # images never moves the others between train and test.
    return zlib.crc32(relative_path.encode("utf-8")) % 100 < FOLDER_TEST_PERCENT


def _tf_reason(exc: Exception) -> str:
    """"Invalid PNG data, size 6210" from TensorFlow's "{{function_node ...}} Invalid PNG data,
    size 6210 [Op:DecodeImage] name: " (the op's own words, without its plumbing)."""
    text = first_line(exc)
    text = text.split("}}", 1)[-1] if text.startswith("{{") else text
    return text.split(" [Op:", 1)[0].strip().rstrip(".")


def _decoded_images(files: Sequence[Tuple[Path, int]], decode) -> Iterator[np.ndarray]:
    """`decode(path, label)` of each file, eagerly, as NumPy arrays.

    Raises:
        BnnError: a file cannot be read or decoded; the message names it.
    """
    for path, label in files:
        try:
            image, _ = decode(tf.constant(str(path)), tf.constant(label, tf.int32))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                tf.errors.PermissionDeniedError, tf.errors.DataLossError) as exc:
            raise BnnError(
                f"Image file {path} cannot be decoded ({_tf_reason(exc)}); remove or replace it "
                f"(PNG, JPEG or BMP)."
            ) from None
        yield image.numpy()


def _decode_file(channels: int, height: Optional[int], width: Optional[int]):
    def decode(path: tf.Tensor, label: tf.Tensor):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=channels, expand_animations=False
        )
        image = tf.cast(image, tf.float32)
        # Images of another size are brought to the set's native size (that of the first one).
        if height is not None:
            image = tf.image.resize(image, (height, width), method="bilinear")
            image.set_shape((height, width, channels))
        return image, label

    return decode


def load_image_folder(path: str) -> DataSplits:
    """An image-folder data set: one sub-folder per class, PNG/JPEG/BMP images.

    Two layouts are accepted:

    - `PATH/train/<class>/*` and `PATH/test/<class>/*` (an explicit split; `PATH/validation`
      is accepted instead of `PATH/test`);
    - `PATH/<class>/*`: a deterministic split where an image is in the test split when
      `crc32(<class>/<file name>) % 100 < 20` (about 20% per class). The rule depends only on
      the path, so adding images never moves existing ones between the splits.

    Class names are the sub-folder names in sorted order. The native image shape is that of the
    first training image (others are resized to it); channels are 1 if that image is grayscale,
    else 3. Images are decoded in parallel by `tf.data`; the raw pixel scale is 0..255.

    Every image is decoded once here, so a file that cannot be decoded is named before any
    training starts.

    Raises:
        BnnError: the folder does not exist, has no images, a split ends up empty, or an image
            cannot be decoded (the message names the file).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BnnError(f"Image folder {root} does not exist.")
    test_dir = next((root / d for d in ("test", "validation") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train_classes = _list_class_folder(root / "train")
        test_classes = _list_class_folder(test_dir)
        class_names = sorted(set(train_classes) | set(test_classes))
        train_files = [(p, class_names.index(c)) for c, ps in train_classes.items() for p in ps]
        test_files = [(p, class_names.index(c)) for c, ps in test_classes.items() for p in ps]
    else:
        classes = _list_class_folder(root)
        class_names = sorted(classes)
        train_files, test_files = [], []
        for c, ps in classes.items():
            for p in ps:
                split = test_files if _in_test_split(f"{c}/{p.name}") else train_files
                split.append((p, class_names.index(c)))
    if not train_files or not test_files:
        raise BnnError(
            f"Image folder {root} needs images ({', '.join(IMAGE_EXTENSIONS)}) in one sub-folder "
            "per class, either as train/<class>/ and test/<class>/ or as <class>/ (split "
            f"80/20); found {len(train_files)} training and {len(test_files)} test images."
        )
    if len(class_names) < 2:
        # A one-class "classifier" trains to a constant and reports a meaningless accuracy.
        raise BnnError(
            f"Image folder {root} has {len(class_names)} class ({', '.join(class_names)}); a "
            "classifier needs at least 2 class sub-folders."
        )

    first = next(_decoded_images(train_files[:1], _decode_file(0, None, None)))
    height, width = int(first.shape[0]), int(first.shape[1])
    channels = 1 if first.shape[-1] in (1, 2) else 3
    decode = _decode_file(channels, height, width)
    # Every file is decoded once now, so that a corrupt one is named here instead of failing
    # deep inside tf.data during training. The first training images also give the
    # normalization, so the check costs only the decoding of the others (~0.2 ms per small PNG,
    # ~1.5 ms per 500x375 JPEG): 1,000 16x16 PNGs load in ~0.44 s instead of ~0.40 s.
    sample = train_files[:_NORMALIZATION_SAMPLE_LARGE]
    normalization = Normalization.from_image_stream(_decoded_images(sample, decode))
    for _ in _decoded_images(train_files[len(sample):] + test_files, _decode_file(0, None, None)):
        pass

    def dataset(files):
        paths = tf.constant([str(p) for p, _ in files])
        labels = tf.constant([label for _, label in files], tf.int32)
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE
        )

    train = dataset(train_files)
    large = min(height, width) >= 64
    return DataSplits(
        name=f"{FOLDER_PREFIX}{path}",
        train=train,
        test=dataset(test_files),
        num_train=len(train_files),
        num_test=len(test_files),
        image_shape=(height, width, channels),
        class_names=class_names,
        normalization=normalization,
        # Colour photos get the usual crop + flip; grayscale (digits, glyphs) none: a flipped
        # glyph is often another class.
        augmentation="none" if channels == 1 else ("resized_crop_flip" if large else "crop_flip"),
    )


# ----------------------------------------------------------------------------------------------
# Registry

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


# ----------------------------------------------------------------------------------------------
# Pipelines


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
    height = image.shape[0]
    pad = max(1, height // 8)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def _resized_crop_flip(
    image: tf.Tensor, seed: tf.Tensor, image_size: Tuple[int, int]
) -> tf.Tensor:
    """Inception-style random-resized crop (8-100% area, 3/4-4/3 aspect) to `image_size`, flip."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, image_size, method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def _fits_in_memory(
    dataset: tf.data.Dataset, image_size: Optional[Tuple[int, int]], limit: int
) -> bool:
    count = int(dataset.cardinality())
    if count < 0:  # unknown or infinite
        return False
    shape = dataset.element_spec[0].shape
    height, width = image_size if image_size is not None else (shape[-3], shape[-2])
    if height is None or width is None or shape[-1] is None:
        return False
    return count * int(height) * int(width) * int(shape[-1]) * 4 < limit


def make_pipeline(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    normalization: Normalization,
    image_size: Optional[Tuple[int, int]] = None,
    training: bool = False,
    augmentation: str = "none",
    seed: int = 0,
    cache: Optional[bool] = None,
    tuned: bool = True,
    first_epoch: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
) -> tf.data.Dataset:
    """Turns an unbatched (raw image, label) dataset into a batched, prefetched input pipeline.

    The result depends only on the inputs and `seed`, not on `tuned` or `cache`: the tuned
    pipeline keeps element order (tf.data's deterministic parallel map) and seeds augmentation
    per example.

    Args:
        dataset: Unbatched (image, label) pairs in raw pixel scale.
        batch_size: Global batch size.
        normalization: Applied after resizing.
        image_size: (height, width) the model expects; None keeps the native size (required for
            `"resized_crop_flip"` and for sets of variable-size images).
        training: Shuffle and augment when True.
        augmentation: One of `AUGMENTATIONS` (only used when `training`). `"crop_flip"`: random
            crop after reflection padding + horizontal flip (CIFAR-like); `"resized_crop_flip"`:
            random-resized crop + flip (ImageNet-like).
        seed: Seeds shuffling and augmentation, so two runs see the same batches.
        cache: Cache the preprocessed images in memory. None decides: cache when the
            preprocessed split (examples x height x width x channels x 4 bytes) is under
            `CACHE_LIMIT_BYTES`. Never before a random-resized crop, which needs the raw image.
        tuned: Parallel decode/augment, caching and prefetching. False gives the naive pipeline
            (one element at a time, no cache, no prefetch) the throughput benchmark compares.
        first_epoch: With `training`, return an endless stream of epochs starting at this epoch
            index, each shuffled and augmented with seeds derived from (`seed`, epoch) alone.
            A run resumed at epoch k then sees exactly the batches an uninterrupted run saw
            from epoch k on (tf.data's own reshuffling restarts from epoch 0's order with every
            new pipeline). Fit it with `steps_per_epoch`.
        steps_per_epoch: With `first_epoch`, the batches of each epoch (default: all of them).

    Returns:
        A `tf.data.Dataset` of (normalized float32 images, int32 labels) batches.

    Raises:
        BnnError: an unknown augmentation, or `"resized_crop_flip"` without `image_size`.
    """
    if augmentation not in AUGMENTATIONS:
        raise BnnError(
            f"Expected augmentation one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}."
        )
    augment = augmentation if training else "none"
    if augment == "resized_crop_flip" and image_size is None:
        raise BnnError("Expected an image_size with augmentation 'resized_crop_flip', got None.")
    parallel = tf.data.AUTOTUNE if tuned else None
    if cache is None:
        cache = augment != "resized_crop_flip" and _fits_in_memory(
            dataset, image_size, CACHE_LIMIT_BYTES
        )
    cache = cache and tuned

    if augment == "resized_crop_flip":
        # The random-resized crop needs the raw image: shuffle first, preprocess per epoch.
        source, preprocessed = dataset, False
    else:
        source = dataset.map(
            lambda x, y: (preprocess(x, image_size, normalization), y), num_parallel_calls=parallel
        )
        source, preprocessed = (source.cache() if cache else source), True

    def augment_one(image, example_seed):
        if preprocessed:
            return _crop_flip(image, example_seed)
        return normalization.apply(
            _resized_crop_flip(tf.cast(image, tf.float32), example_seed, image_size)
        )

    def one_epoch(shuffle_seed, first_example):
        """One pass over `source`: shuffled, augmented (seeded per example), batched."""
        ds = source
        if training and first_epoch is None:
            ds = ds.shuffle(10_000, seed=shuffle_seed, reshuffle_each_iteration=True)
        elif training:
            # The epoch's seed is a tensor here (flat_map's argument). TF combines an op seed
            # with the graph seed, and with tf.random.set_seed(0) its check for the (0, 0) pair
            # would test the tensor as a Python bool; without a graph seed the shuffle depends
            # on our (seed, epoch) value only, which is what resuming needs anyway.
            graph = tf.compat.v1.get_default_graph()
            graph_seed, graph.seed = graph.seed, None
            try:
                ds = ds.shuffle(10_000, seed=shuffle_seed, reshuffle_each_iteration=False)
            finally:
                graph.seed = graph_seed
        if augment != "none":
            # A counter zipped in gives every example its own stateless seed: reproducible with
            # `seed`, and independent of how many parallel calls tf.data schedules.
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter(first_example))).map(
                lambda xy, i: (augment_one(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
                num_parallel_calls=parallel,
            )
        return ds.batch(batch_size, num_parallel_calls=parallel)

    if training and first_epoch is not None:
        def epoch_batches(epoch):
            # Each epoch's seeds depend on (seed, epoch) only; example counters never repeat.
            ds = one_epoch(tf.cast(seed, tf.int64) * 1_000_003 + epoch, epoch * 2**32)
            return ds.take(steps_per_epoch) if steps_per_epoch else ds

        ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_batches)
    else:
        ds = one_epoch(seed, 0)
    return ds.prefetch(tf.data.AUTOTUNE) if tuned else ds


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
