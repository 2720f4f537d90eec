"""Adam as tf.keras computes it, with each training step's scalars built once instead of once
per variable.

tf.keras's `Adam.update_step` computes the step's bias correction for every variable:
the learning rate, `iterations + 1`, `beta_1^t`, `beta_2^t` and
`alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`, about a dozen scalar ops, each built in
Python when the training step is traced. A BNN has many small variables (every batch norm's
gamma and beta beside the kernels), so that is most of the optimizer's part of the trace:
BinaryDenseNet28's first `fit` step, which traces it, took 7.6-9.9 s on an AVX2 machine with
tf.keras's Adam and 6.5-7.6 s with this one. The values are the same ops on the same inputs,
so training is bit for bit the same.

Registered with Keras on `import bnn_keras`, so a model saved with it reloads with its optimizer.

References:
    - Kingma & Ba, Adam: A Method for Stochastic Optimization: https://arxiv.org/abs/1412.6980
"""

from typing import Any, Dict, Optional, Tuple

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class Adam(tf.keras.optimizers.Adam):
    """`tf.keras.optimizers.Adam` (same arguments, state and updates) whose step builds its
    bias correction once per step and dtype, not once per variable.

    Sparse gradients, `amsgrad` and tf-keras's `adaptive_epsilon` take tf.keras's own update.
    """

    def apply_gradients(self, *args: Any, **kwargs: Any) -> Any:
        # The step's scalars live for one call: a second call in the same traced step (or the
        # next step) reads `iterations` again. Set past Keras's attribute tracking, which would
        # make a dict a checkpoint dependency.
        object.__setattr__(self, "_step_scalars", {})
        try:
            return super().apply_gradients(*args, **kwargs)
        finally:
            object.__setattr__(self, "_step_scalars", None)

    def update_step(self, gradient: Any, variable: tf.Variable) -> None:
        scalars: Optional[Dict[Tuple[Any, str], tf.Tensor]] = getattr(
            self, "_step_scalars", None)
        if (scalars is None or isinstance(gradient, tf.IndexedSlices) or self.amsgrad
                or getattr(self, "adaptive_epsilon", False)):
            return super().update_step(gradient, variable)
        # Per dtype, and per device where a strategy updates a variable's copies on several.
        key = (variable.dtype, variable.device)
        if key not in scalars:
            scalars[key] = self._bias_corrected_learning_rate(variable.dtype)
        alpha = scalars[key]
        # tf.keras's dense update, op for op.
        index = self._index_dict[self._var_key(variable)]
        m = self._momentums[index]
        v = self._velocities[index]
        m.assign_add((gradient - m) * (1 - self.beta_1))
        v.assign_add((tf.square(gradient) - v) * (1 - self.beta_2))
        variable.assign_sub((m * alpha) / (tf.sqrt(v) + self.epsilon))
        return None

    def _bias_corrected_learning_rate(self, dtype: tf.DType) -> tf.Tensor:
        """`lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)` for this step `t`, as tf.keras computes
        it in `update_step`."""
        lr = tf.cast(self.learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        return lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
