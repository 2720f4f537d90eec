"""Image classification data sets as `tf.data` pipelines.

Each loader returns a `DataSplits` of *unbatched* (image, label) datasets with images in their raw
pixel scale (0..255, or 0..16 for the digits set; `DataSplits.pixel_max` says which) plus the
metadata the rest of the product needs: class names, native image shape and the per-channel
normalization computed on the training split. `make_pipeline` resizes, normalizes, augments,
batches and prefetches. The normalization is written to the run folder so that conversion checks
and prediction apply exactly the same.

One module each, in the order data flows:

- `sources`: the data sets by name (`load_dataset`), and scikit-learn's digits;
- `idx`, `tfds`, `folder`: MNIST-style IDX files, TensorFlow Datasets (with the offline probe
  of `network`), image folders (whose files `images` reads);
- `splits`: `DataSplits`, what every source returns;
- `normalization`: `Normalization`, the per-channel statistics;
- `pipeline` and `augment`: the input pipeline and its augmentations.

The names below are this package's API; `from bnn_keras.training import data; data.X` is the
usual way in.
"""

from bnn_keras.training.data.augment import AUGMENTATIONS
from bnn_keras.training.data.folder import (
    FOLDER_PREFIX,
    FOLDER_TEST_PERCENT,
    IMAGE_EXTENSIONS,
    load_image_folder,
)
from bnn_keras.training.data.idx import has_idx_files, load_idx_folder, read_idx
from bnn_keras.training.data.images import image_file_size
from bnn_keras.training.data.network import NETWORK_PROBE_ENV, network_unreachable_reason
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.pipeline import CACHE_LIMIT_BYTES, make_pipeline, preprocess, to_numpy
from bnn_keras.training.data.sources import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    list_datasets,
    load_dataset,
    load_digits,
)
from bnn_keras.training.data.splits import DEFAULT_PIXEL_MAX, DataSplits
from bnn_keras.training.data.tfds import load_tfds

__all__ = [
    "AUGMENTATIONS", "CACHE_LIMIT_BYTES", "DEBIAN_FASHION_MNIST_DIR", "DEFAULT_PIXEL_MAX",
    "DataSplits", "FASHION_MNIST_CLASSES", "FOLDER_PREFIX", "FOLDER_TEST_PERCENT",
    "IMAGE_EXTENSIONS", "NETWORK_PROBE_ENV", "Normalization", "has_idx_files", "image_file_size",
    "list_datasets", "load_dataset", "load_digits", "load_idx_folder", "load_image_folder",
    "load_tfds", "make_pipeline", "network_unreachable_reason", "preprocess", "read_idx",
    "to_numpy",
]
