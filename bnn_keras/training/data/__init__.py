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
- `preprocessing`: `ModelInput`, the description of a model's input that config.json, the
  .tflite metadata and a bundle share (and the raw pixel maximum of each data set);
- `pipeline` and `augment`: the input pipeline and its augmentations.

The names below are this package's API; `from bnn_keras.training import data; data.X` is the
usual way in (`ModelInput` is imported from `preprocessing`). They are imported from their
modules on first use, so reading a `ModelInput` (or a `Normalization`) loads neither TensorFlow
Datasets nor the pipeline.
"""

import importlib
from typing import Any, Dict

from bnn_keras._lazy import lazy_exports

_PACKAGE = "bnn_keras.training.data"

# Public name -> the module that defines it.
_EXPORTS: Dict[str, str] = {
    "AUGMENTATIONS": f"{_PACKAGE}.augment",
    **dict.fromkeys(["FOLDER_PREFIX", "FOLDER_TEST_PERCENT", "IMAGE_EXTENSIONS",
                     "load_image_folder"], f"{_PACKAGE}.folder"),
    **dict.fromkeys(["has_idx_files", "load_idx_folder", "read_idx"], f"{_PACKAGE}.idx"),
    "image_file_size": f"{_PACKAGE}.images",
    **dict.fromkeys(["NETWORK_PROBE_ENV", "network_unreachable_reason"], f"{_PACKAGE}.network"),
    "Normalization": f"{_PACKAGE}.normalization",
    "DEFAULT_PIXEL_MAX": f"{_PACKAGE}.preprocessing",
    **dict.fromkeys(["CACHE_LIMIT_BYTES", "make_pipeline", "preprocess", "to_numpy",
                    "used_training_examples"],
                    f"{_PACKAGE}.pipeline"),
    **dict.fromkeys(["DEBIAN_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "list_datasets",
                     "load_dataset", "load_digits"], f"{_PACKAGE}.sources"),
    "DataSplits": f"{_PACKAGE}.splits",
    "load_tfds": f"{_PACKAGE}.tfds",
}

__all__ = sorted(_EXPORTS)

_SUBMODULES = ("augment", "folder", "idx", "images", "network", "normalization", "pipeline",
               "preprocessing", "sources", "splits", "tfds")

_export, __dir__ = lazy_exports(_PACKAGE, _EXPORTS, globals())


def __getattr__(name: str) -> Any:
    # `data.sources.X` worked while this package imported every module; it still does.
    if name in _SUBMODULES:
        return importlib.import_module(f"{_PACKAGE}.{name}")
    return _export(name)
