"""Image-folder data sets: one sub-folder of PNG, JPEG or BMP images per class.

The layout of Keras' `image_dataset_from_directory` and torchvision's `ImageFolder`, with either
an explicit train/test split or a split by a hash of each file's path (see `load_image_folder`).
"""

import zlib
from pathlib import Path
from typing import Dict, List

import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.training.data.images import check_decodable, decode_file, decoded_images
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.splits import NORMALIZATION_SAMPLE_LARGE, DataSplits

FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Share of a single-folder image set that goes to the test split (see `load_image_folder`).
FOLDER_TEST_PERCENT = 20


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

    A damaged file is named here, before any training starts, without decoding every image:
    the first training images are decoded for the normalization, the others only when their
    structure looks damaged (`images.looks_complete`, which reads their bytes).

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

    first = next(decoded_images(train_files[:1], decode_file(0, None, None)))
    height, width = int(first.shape[0]), int(first.shape[1])
    channels = 1 if first.shape[-1] in (1, 2) else 3
    decode = decode_file(channels, height, width)
    sample = train_files[:NORMALIZATION_SAMPLE_LARGE]
    normalization = Normalization.from_image_stream(decoded_images(sample, decode))
    # A corrupt file is named now instead of failing deep inside tf.data during training;
    # reading the others' structure costs a fraction of decoding them (see `images`).
    check_decodable(p for p, _ in train_files[len(sample):] + test_files)

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
        source=f"image folder {path}",
    )
