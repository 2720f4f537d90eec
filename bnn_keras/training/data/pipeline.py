"""The input pipeline: raw (image, label) pairs to batches the model trains or is tested on.

`preprocess` resizes (bilinear) and normalizes; `make_pipeline` adds caching, shuffling,
per-example seeded augmentation (`augment`), batching and prefetching, and can carry a value per
example (a teacher's logits, computed once) with each image through the shuffle. Prediction and the
conversion checks call the same `preprocess`, so a converted model sees what training saw.
"""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from bnn_keras.errors import BnnError
from bnn_keras.training.data.augment import AUGMENTATIONS, crop_flip, resized_crop_flip
from bnn_keras.training.data.normalization import Normalization

# `make_pipeline` caches the preprocessed split in memory when it takes less than this.
CACHE_LIMIT_BYTES = 2 * 1024**3
# The training stream's shuffle buffer (examples).
SHUFFLE_BUFFER = 10_000


def preprocess(
    images: tf.Tensor, image_size: Optional[Tuple[int, int]], normalization: Normalization
) -> tf.Tensor:
    """Resizes (bilinear) raw-scale images to `image_size` and normalizes them."""
    images = tf.cast(images, tf.float32)
    if image_size is not None and tuple(images.shape[-3:-1]) != tuple(image_size):
        images = tf.image.resize(images, image_size, method="bilinear")
    return normalization.apply(images)


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
    teacher_logits: Optional[np.ndarray] = None,
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
        teacher_logits: A (examples, classes) array, one row per example of `dataset` in its
            order (`bnn_keras.distillation.teacher_logits_of` on this function's unshuffled
            pipeline): each example's row travels with its image, and the batches become
            ((images, teacher logits), labels). Only without augmentation, since the logits
            are those of the un-augmented images.

    Returns:
        A `tf.data.Dataset` of (normalized float32 images, int32 labels) batches; with
        `teacher_logits`, of ((images, float32 teacher logits), labels) batches.

    Raises:
        BnnError: an unknown augmentation, `"resized_crop_flip"` without `image_size`, or
            `teacher_logits` with augmentation or with another number of rows than examples.
    """
    if augmentation not in AUGMENTATIONS:
        raise BnnError(
            f"Expected augmentation one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}."
        )
    augment = augmentation if training else "none"
    if augment == "resized_crop_flip" and image_size is None:
        raise BnnError("Expected an image_size with augmentation 'resized_crop_flip', got None.")
    if teacher_logits is not None:
        _check_teacher_logits(teacher_logits, dataset, augment)
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
    if teacher_logits is not None:
        # Zipped before the shuffle, so that each image keeps its own teacher's logits.
        logits = tf.data.Dataset.from_tensor_slices(teacher_logits.astype(np.float32))
        source = tf.data.Dataset.zip((source, logits)).map(lambda xy, t: ((xy[0], t), xy[1]))

    def augment_one(image, example_seed):
        if preprocessed:
            return crop_flip(image, example_seed)
        return normalization.apply(
            resized_crop_flip(tf.cast(image, tf.float32), example_seed, image_size)
        )

    def one_epoch(shuffle_seed, first_example):
        """One pass over `source`: shuffled, augmented (seeded per example), batched."""
        ds = source
        if training and first_epoch is None:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
        elif training:
            ds = _epoch_shuffle(ds, shuffle_seed)
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
            ds = one_epoch(_epoch_seed(seed, epoch), epoch * 2**32)
            return ds.take(steps_per_epoch) if steps_per_epoch else ds

        ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_batches)
    else:
        ds = one_epoch(seed, 0)
    return ds.prefetch(tf.data.AUTOTUNE) if tuned else ds


def _epoch_seed(seed, epoch):
    """The shuffle seed of training epoch `epoch` (0-based) of a run seeded with `seed`."""
    return tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)


def _epoch_shuffle(ds: tf.data.Dataset, shuffle_seed) -> tf.data.Dataset:
    """One epoch's shuffle of `ds`. Its order depends on the seed and the number of elements
    only, not on what they hold: `used_training_examples` replays it on indices."""
    # The epoch's seed may be a tensor here (flat_map's argument). TF combines an op seed with
    # the graph seed, and with tf.random.set_seed(0) its check for the (0, 0) pair would test
    # the tensor as a Python bool; without a graph seed the shuffle depends on our
    # (seed, epoch) value only, which is what resuming needs anyway.
    graph = tf.compat.v1.get_default_graph()
    graph_seed, graph.seed = graph.seed, None
    try:
        return ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = graph_seed


def used_training_examples(num_examples: int, *, batch_size: int, seed: int, first_epoch: int,
                           epochs: int, steps_per_epoch: int) -> Optional[np.ndarray]:
    """The examples that epochs `first_epoch` to `epochs - 1` (0-based) of `make_pipeline`'s
    training stream draw, when each epoch takes `steps_per_epoch` batches of a shuffled
    split: their indices (sorted), or None when that is every example.

    The shuffle of each epoch is replayed on the indices 0..n-1 (its order depends on the
    seed and the number of elements only), so a cache of per-example values (a teacher's
    logits) needs to cover only these.
    """
    per_epoch = steps_per_epoch * batch_size
    if per_epoch >= num_examples or first_epoch >= epochs:
        return None if per_epoch >= num_examples else np.zeros(0, np.int64)
    indices = tf.data.Dataset.range(num_examples)
    # Through flat_map, as `make_pipeline` does: the shuffle's seeds are then made in a traced
    # function in both, whatever global seed eager code has set.
    drawn = tf.data.Dataset.range(first_epoch, epochs).flat_map(
        lambda epoch: _epoch_shuffle(indices, _epoch_seed(seed, epoch)).take(per_epoch))
    used = np.zeros(num_examples, bool)
    for batch in drawn.batch(65_536).as_numpy_iterator():
        used[batch] = True
    return None if used.all() else np.flatnonzero(used)


def _check_teacher_logits(teacher_logits: np.ndarray, dataset: tf.data.Dataset,
                          augment: str) -> None:
    """Refuses cached teacher logits that cannot belong to the images they would travel with."""
    if augment != "none":
        raise BnnError("Cached teacher logits are those of the un-augmented images; train "
                       "without augmentation to use them, or let the teacher run at every step.")
    count = int(dataset.cardinality())
    if teacher_logits.ndim != 2 or (count >= 0 and teacher_logits.shape[0] != count):
        raise BnnError(f"Expected teacher logits of shape ({count if count >= 0 else 'examples'}"
                       f", classes), one row per example, got {teacher_logits.shape}.")


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
