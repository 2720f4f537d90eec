"""Running a flatbuffer with Larq Compute Engine's interpreter in this process, and the
interpreter's thread count and latency statistics.

Untrusted files run in a child process instead (`convert.isolated`).
"""

import dataclasses
import os
from typing import List, Optional

import numpy as np

from bnn_keras.errors import BnnError
from convert.flatbuffer import Flatbuffer, FlatbufferLike, InvalidFlatbufferError


def is_binary_model(flatbuffer: FlatbufferLike, *, source: Optional[str] = None) -> bool:
    """Whether LCE turned binary convolutions of the model into LceBconv2d ops (a plain TFLite
    float model, or one without a binary layer, has none).

    Args:
        flatbuffer: The flatbuffer, or its bytes.
        source: How to name it in error messages [default: the flatbuffer's own name].
    """
    flatbuffer = Flatbuffer.wrap(flatbuffer, source=source or "the input")
    try:
        return flatbuffer.ops["LceBconv2d"] > 0
    except UnicodeDecodeError:  # a custom op name that is not text: damaged on disk
        raise InvalidFlatbufferError(f"{source or flatbuffer.source} is a damaged TFLite "
                                     "flatbuffer (an op name is not text); convert the model "
                                     "again.") from None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int, *, option: str = "--threads") -> int:
    """`threads`, if between 1 and the CPUs available; more threads than CPUs only slow the
    interpreter down (and 100000 of them exhaust the machine).

    Raises:
        BnnError: naming `option` and the allowed range.
    """
    cpus = available_cpus()
    if not 1 <= threads <= cpus:
        raise BnnError(f"{option} must be between 1 and {cpus} (the CPUs available here), "
                       f"got {threads}.")
    return threads


class LceRuntime:
    """LCE's interpreter (x86-64/macOS Python wheel) around a validated flatbuffer.

    On the device the same flatbuffer runs with LCE's C++ runtime or `lce_benchmark_model`;
    on x86 LCE falls back to portable kernels, so latencies here are a regression check only.
    """

    def __init__(self, flatbuffer: FlatbufferLike, *, num_threads: int = 1):
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        if num_threads < 1:
            raise BnnError(f"Expected threads >= 1, got {num_threads}.")
        data = Flatbuffer.wrap(flatbuffer).data
        try:
            self._interpreter = Interpreter(data, num_threads=num_threads)
        except Exception as exc:
            raise BnnError(f"LCE's interpreter rejected the flatbuffer: {exc}") from None

    @property
    def input_shape(self) -> tuple:
        return tuple(self._interpreter.input_shapes[0])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._interpreter.input_types[0])

    def predict(self, x: np.ndarray, *, verbose: int = 0) -> np.ndarray:
        """Runs the model on a batch, one example at a time (tqdm progress when verbose)."""
        x = np.asarray(x, dtype=self.input_dtype)
        expected = self.input_shape[1:]
        if x.shape[1:] != expected:
            raise BnnError(f"Expected inputs of shape (N, {', '.join(map(str, expected))}), got {x.shape}.")
        return self._interpreter.predict(x, verbose=verbose)


@dataclasses.dataclass
class Latency:
    """Latency statistics in milliseconds over `runs` timed inferences."""

    runs: int
    threads: int
    min_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float

    @classmethod
    def from_seconds(cls, seconds: List[float], threads: int) -> "Latency":
        ms = np.asarray(seconds) * 1000.0
        return cls(
            runs=len(ms), threads=threads, min_ms=float(ms.min()),
            median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(ms.mean()),
        )
