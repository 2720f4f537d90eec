"""Training-time augmentations, seeded per example so that a seed gives the same batches.

- `crop_flip`: padding by 4 pixels per 32 of side, a random crop back to the original size and a
  random horizontal flip, the CIFAR augmentation of He et al., "Deep Residual Learning for Image
  Recognition", CVPR 2016, section 4.2 (the padding here reflects the image).
- `resized_crop_flip`: a random crop of 8-100% of the area with aspect ratio 3/4-4/3, resized to
  the model's input, and a random horizontal flip: the ImageNet augmentation of Szegedy et al.,
  "Going Deeper with Convolutions", CVPR 2015, section 6.
"""

from typing import Tuple

import tensorflow as tf

AUGMENTATIONS = ("none", "crop_flip", "resized_crop_flip")


def crop_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random crop after 4-pixel-per-32 reflection padding, and random horizontal flip."""
    height = image.shape[0]
    pad = max(1, height // 8)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    return tf.image.stateless_random_flip_left_right(image, seed=seed + 1)


def resized_crop_flip(
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
