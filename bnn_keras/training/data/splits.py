"""`DataSplits`: what every data source returns, a train and a test split plus their metadata.

The splits are *unbatched* (image, label) datasets in raw pixel scale; `pipeline.make_pipeline`
turns them into model input.
"""

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.preprocessing import DEFAULT_PIXEL_MAX

# Images used to estimate the per-channel mean/std of a training split.
NORMALIZATION_SAMPLE = 10_000
# Fewer for sets of large, variable-size images, whose decoding dominates the estimate's cost.
NORMALIZATION_SAMPLE_LARGE = 1_000


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
        augmentation: Name of the default augmentation, one of `augment.AUGMENTATIONS`.
        default_image_size: Side the model input gets when the user does not choose one.
        pixel_max: Maximum of the raw pixel scale (16 for digits, 255 otherwise), so that
            images read from files (0..255) can be rescaled to what the model was trained on.
        source: Where the images were read from, for people (e.g. "IDX files in
            /usr/share/datasets/fashion-mnist").
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
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def from_arrays(
    name, x_train, y_train, x_test, y_test, class_names, augmentation, default_image_size=None,
    pixel_max=DEFAULT_PIXEL_MAX, source="",
) -> DataSplits:
    """`DataSplits` of in-memory (N, H, W, C) images and (N,) labels."""
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
        normalization=Normalization.from_images(x_train[:NORMALIZATION_SAMPLE]),
        augmentation=augmentation,
        default_image_size=default_image_size,
        pixel_max=float(pixel_max),
        source=source,
    )
