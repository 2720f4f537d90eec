"""Running a flatbuffer with Larq Compute Engine's interpreter: prediction and latency."""

import dataclasses
import os
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from bnn_keras.errors import BnnError
from convert.flatbuffer import read_model


def read_flatbuffer(path: str) -> bytes:
    """Reads a .tflite file, checks it against the TFLite schema and against the SHA-256 that
    `bnn convert` stores in its metadata (files without one are accepted).

    Raises:
        BnnError: missing/unreadable file, bytes that are not a valid TFLite flatbuffer, or a
            file whose content no longer matches its recorded hash (damaged on disk or in a copy).
    """
    from convert.metadata import check_content_digest

    file = Path(path)
    if not file.is_file():
        raise BnnError(f"No such .tflite file: {file}.")
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise BnnError(f"Could not read {file}: {exc.strerror or type(exc).__name__}.") from None
    read_model(data, source=str(file))
    check_content_digest(data, source=str(file))
    return data


def is_binary_model(flatbuffer: bytes, *, source: str = "the input") -> bool:
    """Whether LCE turned binary convolutions of the model into LceBconv2d ops (a plain TFLite
    float model, or one without a binary layer, has none)."""
    from convert.flatbuffer import InvalidFlatbufferError, op_histogram

    try:
        return op_histogram(flatbuffer, source=source)["LceBconv2d"] > 0
    except UnicodeDecodeError:  # a custom op name that is not text: damaged on disk
        raise InvalidFlatbufferError(f"{source} is a damaged TFLite flatbuffer (an op name is "
                                     "not text); convert the model again.") from None


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

    def __init__(self, flatbuffer: bytes, *, num_threads: int = 1):
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        if num_threads < 1:
            raise BnnError(f"Expected threads >= 1, got {num_threads}.")
        read_model(flatbuffer)
        try:
            self._interpreter = Interpreter(flatbuffer, num_threads=num_threads)
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

    def time_one(self, x: np.ndarray) -> float:
        """Seconds for one inference on a single example `x` of shape (1, ...)."""
        started = time.perf_counter()
        self._interpreter.interpreter.predict([x])
        return time.perf_counter() - started


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


def benchmark(
    flatbuffer: bytes,
    *,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    progress: Optional[callable] = None,
) -> Latency:
    """Measures single-image latency in LCE's interpreter on a random input.

    Args:
        flatbuffer: A validated .tflite model.
        threads: Interpreter threads.
        runs: Timed inferences.
        warmup: Untimed inferences first (allocation, caches).
        progress: Optional wrapper for the timing loop's iterable (e.g. `tqdm`).

    Returns:
        `Latency` statistics.
    """
    if runs < 1 or warmup < 0:
        raise BnnError(f"Expected runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    runtime = LceRuntime(flatbuffer, num_threads=threads)
    shape = (1, *runtime.input_shape[1:])
    rng = np.random.default_rng(0)
    if np.issubdtype(runtime.input_dtype, np.integer):
        info = np.iinfo(runtime.input_dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(runtime.input_dtype)
    else:
        x = rng.standard_normal(shape).astype(runtime.input_dtype)
    for _ in range(warmup):
        runtime.time_one(x)
    loop = range(runs) if progress is None else progress(range(runs))
    return Latency.from_seconds([runtime.time_one(x) for _ in loop], threads)
