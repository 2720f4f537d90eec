"""Choosing the Keras mixed-precision policy for training."""

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import tensorflow as tf

from bnn_keras import graph
from bnn_keras.errors import BnnError

PRECISIONS = ("auto", "mixed_bfloat16", "float32")

# CPU flags that mean bfloat16 matmuls/convolutions run natively (oneDNN uses them); with
# them, `mixed_bfloat16` trains ~1.5-2x faster than float32 (measured on AMX/AVX512-BF16
# machines; benchmarks/train_throughput.py).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo() -> str:
    """/proc/cpuinfo's text, or "" where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_supports_bf16() -> bool:
    """True when /proc/cpuinfo lists a native bfloat16 instruction set."""
    flags = _cpuinfo().split()
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def hardware_summary() -> str:
    """One line for benchmark tables: CPU model, CPU count and whether bfloat16 is native."""
    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                 if line.startswith("model name")), "unknown CPU")
    return f"{name}, {os.cpu_count()} CPUs, native bfloat16: {'yes' if native_bf16() else 'no'}"


def native_bf16() -> bool:
    """True when bfloat16 math runs natively: on a GPU, or a CPU with AVX512-BF16/AMX."""
    return bool(tf.config.list_physical_devices("GPU")) or cpu_supports_bf16()


def resolve_precision(precision: str) -> str:
    """Turns "auto" into the fastest policy this machine supports.

    "auto" is `mixed_bfloat16` on a GPU or on a CPU with AVX512-BF16/AMX, else `float32`.

    Raises:
        BnnError: `precision` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise BnnError(f"Expected precision one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bf16() else "float32"


def emulated_bf16_warning(policy: str) -> Optional[str]:
    """The warning for a `mixed_bfloat16` policy on hardware without native bfloat16, or None.

    Without AVX512-BF16/AMX (e.g. an AVX2-only CPU) TensorFlow emulates every bfloat16 op:
    measured here on a 2-core AMD EPYC (AVX2), a half-width BinaryResNetE18 step (batch 256,
    28x28) took 29.0 s in mixed_bfloat16 against 3.9 s in float32.
    """
    if policy != "mixed_bfloat16" or native_bf16():
        return None
    return ("this CPU has no native bfloat16 (AVX512-BF16 or AMX), so mixed_bfloat16 is "
            "emulated and trains ~7x slower than float32 (--precision auto picks float32 here).")


def warn_if_emulated_bf16(policy: str) -> None:
    """Warns (`UserWarning`) when `policy` would run bfloat16 in emulation."""
    message = emulated_bf16_warning(policy)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)


@contextlib.contextmanager
def precision_policy(policy: Union[str, tf.keras.mixed_precision.Policy]) -> Iterator[None]:
    """Sets the global Keras dtype policy for building a model, then restores the old one."""
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def _float32_policies(config: Any) -> Any:
    """A copy of a Keras config with every dtype policy replaced by "float32"."""
    if isinstance(config, dict):
        if config.get("class_name") in ("Policy", "DTypePolicy"):
            return "float32"
        return {key: _float32_policies(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_policies(value) for value in config]
    return config


def is_mixed_precision(model: tf.keras.Model) -> bool:
    """True when any layer computes in a dtype other than float32."""
    return any(
        layer.dtype_policy.compute_dtype != "float32" for layer in model.submodules
        if isinstance(layer, tf.keras.layers.Layer)
    )


def as_float32(model: tf.keras.Model) -> tf.keras.Model:
    """Rebuilds a (mixed-precision) functional model in float32 with the same weights.

    LCE refuses models whose layers compute in bfloat16/float16, and the deployed model runs in
    float32 (binary ops aside) anyway. Variables are float32 under mixed precision, so the
    weights carry over exactly.

    Raises:
        graph.NotFunctionalError: a subclassed mixed-precision model.
    """
    if not is_mixed_precision(model):
        return model
    return graph.rebuild(model, edit=_float32_policies, purpose="the float32 copy")
