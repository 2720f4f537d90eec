"""Input sizes a registry model cannot take, and the smallest square one it can.

Every downsampling layer (strided convolution, pooling) divides the feature map's side, so an
input below some size leaves a layer with a side of zero or less, and Keras refuses to build the
model. These helpers recognise that failure and find the smallest square input that builds, so
the user is told a size that works rather than Keras' message about one layer.
"""

import time
from typing import Optional, Sequence

import tensorflow as tf

from bnn_keras.errors import BnnError, first_line
from models.registry import create_model

# How Keras says that a layer's output would have a side <= 0 (pooling, valid convolutions).
_SHAPE_ERROR_MARKERS = ("Negative dimension size", "increasing the input size",
                        "zero or negative value in a dimension")
# Seconds `smallest_square_side` may spend building the model at other sizes.
SMALLEST_SIDE_BUDGET_S = 10.0


def is_input_too_small(exc: Exception) -> bool:
    """Whether `exc` (from building a model) says a feature map shrank to nothing."""
    return isinstance(exc, ValueError) and any(m in str(exc) for m in _SHAPE_ERROR_MARKERS)


def smallest_square_side(name: str, channels: int, num_classes: int, *,
                         at_least: int = 1,
                         budget_s: float = SMALLEST_SIDE_BUDGET_S) -> Optional[int]:
    """The smallest side S for which model `name` builds at (S, S, channels).

    Building fails fast where the feature maps vanish and takes ~1 s where it works, so a
    doubling search then a bisection costs a few seconds. Side lengths work from some minimum
    on (every layer's output grows with its input), which the bisection relies on.

    Args:
        name: A registry name.
        channels: The input's channels.
        num_classes: The classifier's classes.
        at_least: A side known not to build (the search starts above it).
        budget_s: Seconds the search may take.

    Returns:
        The side, or None when it was not found within `budget_s` (or above 4096).
    """
    deadline = time.monotonic() + budget_s

    def builds(side: int) -> bool:
        try:
            create_model(name, input_shape=(side, side, channels), num_classes=num_classes)
            return True
        except ValueError as exc:
            if not is_input_too_small(exc):
                raise
            return False
        finally:
            tf.keras.backend.clear_session()

    low = at_least
    high = max(2 * low, 2)
    while not builds(high):
        low, high = high, 2 * high
        if high > 4096 or time.monotonic() > deadline:
            return None
    while high - low > 1:
        if time.monotonic() > deadline:
            return None
        middle = (low + high) // 2
        low, high = (low, middle) if builds(middle) else (middle, high)
    return high


def input_too_small_error(name: str, exc: ValueError, input_shape: Sequence[int],
                          num_classes: int) -> BnnError:
    """The one-line error for an `input_shape` whose feature maps shrink to nothing in `name`,
    with the smallest square shape that builds."""
    height, width, channels = input_shape
    # A square of the shorter side is no larger than the input, so it fails too.
    side = smallest_square_side(name, channels, num_classes, at_least=min(height, width))
    given = ",".join(map(str, input_shape))
    works = (f"the smallest that works is `input_shape` {side},{side},{channels}" if side
             else "try a larger one")
    return BnnError(f"`input_shape` {given} is too small for {name}: {works} "
                    f"(Keras: {first_line(exc)})")
