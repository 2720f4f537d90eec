"""Losses of the BNN recipes, as serializable Keras objects (registered on `import bnn_keras`)."""

from typing import Any, Dict

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class SmoothedSparseCategoricalCrossentropy(tf.keras.losses.Loss):
    """Cross-entropy of integer labels with label smoothing.

    tf-keras 2.16's `SparseCategoricalCrossentropy` has no `label_smoothing`, so the labels are
    one-hot encoded (depth = the prediction's last axis) and smoothed like
    `CategoricalCrossentropy(label_smoothing=eps)`: target = `onehot * (1 - eps) + eps / K`.

    Args:
        label_smoothing: eps in [0, 1).
        from_logits: Whether predictions are logits rather than probabilities.
        reduction: Keras loss reduction.
        name: Loss name.

    References:
        - Szegedy et al., Rethinking the Inception Architecture: https://arxiv.org/abs/1512.00567
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        from_logits: bool = False,
        reduction: str = tf.keras.losses.Reduction.AUTO,
        name: str = "smoothed_sparse_categorical_crossentropy",
    ):
        super().__init__(reduction=reduction, name=name)
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        labels = tf.cast(y_true, tf.int32)
        # Keras passes (batch, 1) labels as well as (batch,).
        if labels.shape.rank is not None and labels.shape.rank == y_pred.shape.rank:
            labels = tf.squeeze(labels, axis=-1)
        onehot = tf.one_hot(labels, depth=tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        return tf.keras.losses.categorical_crossentropy(
            onehot, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> Dict[str, Any]:
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
        }
