"""Learning-rate schedules of the BNN recipes, as serializable Keras objects.

`WarmupDecay` covers what the BNN papers use: a linear warm-up, then a constant rate, step
decay (BinaryNet, XNOR-Net, Bi-Real Net), linear decay (Bop) or cosine decay (QuickNet).
Registered with Keras on `import bnn_keras`, so a model saved with its optimizer reloads
without the training code.

References:
    - Loshchilov & Hutter, SGDR (cosine annealing): https://arxiv.org/abs/1608.03983
    - Goyal et al., Accurate, Large Minibatch SGD (linear warm-up):
      https://arxiv.org/abs/1706.02677
"""

import math
from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

SCHEDULES = ("constant", "step", "linear", "cosine")


@tf.keras.utils.register_keras_serializable(package="bnn_keras")
class WarmupDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0, then a constant, step, linear or cosine decay.

    With `s` the optimizer step, `W` = `warmup_steps`, `T` = `total_steps` and `lr` the peak:

    - `s < W`: `lr * s / W`
    - "constant": `lr`
    - "step": `lr * multipliers[i]`, `i` = number of `boundaries` (absolute steps) <= `s`
    - "linear": `lr * max(0, 1 - (s - W) / (T - W))`
    - "cosine": `lr * (1 + cos(pi * min(s - W, T - W) / (T - W))) / 2`

    Step boundaries count from the start of training, as the papers give them ("decay at epoch
    100"), so a warm-up does not shift them.

    Args:
        learning_rate: Peak learning rate.
        decay: "constant", "step", "linear" or "cosine".
        warmup_steps: Steps of linear warm-up.
        total_steps: Length of training in steps (required for "linear" and "cosine").
        boundaries: For "step": increasing step numbers.
        multipliers: For "step": `len(boundaries) + 1` multipliers of `learning_rate`.
        name: Optional name.
    """

    def __init__(
        self,
        learning_rate: float,
        decay: str = "constant",
        warmup_steps: int = 0,
        total_steps: Optional[int] = None,
        boundaries: Sequence[int] = (),
        multipliers: Optional[Sequence[float]] = None,
        name: Optional[str] = None,
    ):
        super().__init__()
        if decay not in SCHEDULES:
            raise ValueError(f"Expected decay in {SCHEDULES}, got {decay!r}.")
        if decay in ("linear", "cosine") and (total_steps is None or total_steps <= warmup_steps):
            raise ValueError(
                f"Expected total_steps > warmup_steps for a {decay} decay, got "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}."
            )
        multipliers = [1.0] * (len(boundaries) + 1) if multipliers is None else list(multipliers)
        if len(multipliers) != len(boundaries) + 1:
            raise ValueError(
                f"Expected {len(boundaries) + 1} multipliers, got {len(multipliers)}."
            )
        self.learning_rate = float(learning_rate)
        self.decay = decay
        self.warmup_steps = int(warmup_steps)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.multipliers = [float(m) for m in multipliers]
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name or "WarmupDecay"):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(self.learning_rate, tf.float32)
            if self.decay == "step" and self.boundaries:
                passed = tf.reduce_sum(
                    tf.cast(step >= tf.constant(self.boundaries, tf.float32), tf.int32)
                )
                decayed = peak * tf.gather(tf.constant(self.multipliers, tf.float32), passed)
            elif self.decay == "step":
                decayed = peak * self.multipliers[0]
            elif self.decay in ("linear", "cosine"):
                span = float(self.total_steps - self.warmup_steps)
                progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
                if self.decay == "linear":
                    decayed = peak * (1.0 - progress)
                else:
                    decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
            else:
                decayed = peak
            if self.warmup_steps <= 0:
                return decayed
            warm = peak * step / float(self.warmup_steps)
            return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> Dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "boundaries": list(self.boundaries),
            "multipliers": list(self.multipliers),
            "name": self.name,
        }
