"""Constraints on latent weights (registered under "bnn_keras").

larq warns when a layer has a binary weight quantizer and no `kernel_constraint`: with a
clipped straight-through estimator (SteSign's `clip_value=1`, larq's default) a latent weight
that grows past the clip gets a zero gradient from then on, a "starved" weight, and larq's
`WeightClip` keeps it inside. A quantizer whose gradient is never clipped cannot starve a
weight; `NoClip` says so where a model chooses that on purpose.
"""

import tensorflow as tf

__all__ = ["NoClip"]

_PACKAGE = "bnn_keras"


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class NoClip(tf.keras.constraints.Constraint):
    """Leaves the latent weights as they are, on purpose.

    For binary weight quantizers whose gradient is the identity (larq's
    `MagnitudeAwareSign(clip_value=None)`, DoReFa-Net's weights): no latent weight is ever
    starved, so a clip would only change the training the paper describes. Setting it instead
    of no constraint records that decision in the saved model, and larq then gives no
    "starved weights" warning for the layer (that warning looks only for a constraint).

    References:
        - [DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks with Low Bitwidth
          Gradients](https://arxiv.org/abs/1606.06160)
    """

    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        return w

    def get_config(self):
        return {}
