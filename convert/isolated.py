"""Running untrusted flatbuffers in a child process, so a native crash cannot kill the caller.

TFLite's interpreter trusts the flatbuffer it is given: a schema-valid model with a wrong tensor
shape, buffer size or custom-op option can segfault or abort inside C++. The parent validates
the bytes against the TFLite schema (`convert.flatbuffer.Flatbuffer`, in Python), then
runs LCE's interpreter in a fresh `python -c` child with a timeout. A crash (signal), a timeout or
an exception in the child becomes a one-line `BnnError`.

The child loads LCE's interpreter extension module directly from the installed package instead of
importing `larq_compute_engine`, whose `__init__` imports TensorFlow (about 10 s per child versus
0.1 s). This module therefore imports only the standard library and NumPy at the top: the child
imports it by file path, and anything heavier is imported inside the parent-side functions.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, List, Sequence, Union

import numpy as np

if TYPE_CHECKING:  # the child imports this module by path, with NumPy only
    from convert.flatbuffer import Flatbuffer

# Defaults for the child's wall-clock limit: generous for tiny models on a loaded 2-core machine,
# small enough that a hung interpreter does not stall a CLI command for long.
DEFAULT_TIMEOUT_S = 120.0

_MODEL_FILE = "model.tflite"
_INPUT_FILE = "input.npy"
_OUTPUT_FILE = "output.npz"
_RESULT_FILE = "result.json"
_ERROR_FILE = "error.txt"
# Address-space cap for the child: a damaged tensor shape can ask TFLite for gigabytes, and on a
# shared machine that should fail inside the child (bad_alloc) rather than starve everyone else.
DEFAULT_MEMORY_LIMIT_MB = 4096

# Exit code the child uses for a Python exception it caught and described in error.txt.
_CHILD_ERROR_EXIT = 3

_CHILD_CODE = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_bnn_isolated_child', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module._child_main(sys.argv[2:]))\n"
)


# ---------------------------------------------------------------------------------------------
# Child side: standard library + NumPy + LCE's extension module only.


def _load_lce_interpreter_class():
    """LCE's `LiteInterpreter` pybind class, loaded without importing TensorFlow."""
    import glob
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("larq_compute_engine")
    if spec is None or spec.origin is None:
        raise RuntimeError("larq_compute_engine is not installed")
    folder = os.path.join(os.path.dirname(spec.origin), "tflite", "python")
    candidates = sorted(glob.glob(os.path.join(folder, "interpreter_wrapper_lite*.so")))
    if not candidates:
        raise RuntimeError(f"LCE's interpreter extension is missing from {folder}")
    name = "interpreter_wrapper_lite"
    loader = importlib.machinery.ExtensionFileLoader(name, candidates[0])
    module_spec = importlib.util.spec_from_file_location(name, candidates[0], loader=loader)
    module = importlib.util.module_from_spec(module_spec)
    loader.exec_module(module)
    return module.LiteInterpreter


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line[:limit] + ("..." if len(line) > limit else "")


def _child_main(argv: Sequence[str]) -> int:
    """Entry point of the child: `<mode> <workdir> <threads> <runs> <warmup> <memory MB>`."""
    mode, workdir = argv[0], Path(argv[1])
    threads, runs, warmup, memory_mb = (int(v) for v in argv[2:6])
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already
            pass
    try:
        lite_interpreter = _load_lce_interpreter_class()
        interpreter = lite_interpreter(
            (workdir / _MODEL_FILE).read_bytes(), threads, False, False, False
        )
        if mode == "predict":
            x = np.load(workdir / _INPUT_FILE)
            batches = [interpreter.predict([x[i : i + 1]]) for i in range(len(x))]
            outputs = [np.concatenate(parts) for parts in zip(*batches)]
            np.savez(workdir / _OUTPUT_FILE, *outputs)
        else:
            shape = tuple(interpreter.input_shapes[0])
            dtype = np.dtype(interpreter.input_types[0])
            rng = np.random.default_rng(0)
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                x = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
            else:
                x = rng.standard_normal(shape).astype(dtype)
            for _ in range(warmup):
                interpreter.predict([x])
            seconds: List[float] = []
            for _ in range(runs):
                started = time.perf_counter()
                interpreter.predict([x])
                seconds.append(time.perf_counter() - started)
            (workdir / _RESULT_FILE).write_text(json.dumps({"seconds": seconds}))
    except Exception as exc:  # reported to the parent as one line; the parent raises BnnError
        (workdir / _ERROR_FILE).write_text(_one_line(f"{type(exc).__name__}: {exc}"))
        return _CHILD_ERROR_EXIT
    return 0


# ---------------------------------------------------------------------------------------------
# Parent side.


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _validated(flatbuffer):
    """The `Flatbuffer` of a .tflite path or of bytes (validated against the schema), or the
    object itself."""
    from convert.flatbuffer import Flatbuffer

    return Flatbuffer.wrap(flatbuffer)


def _run_child(data: bytes, mode: str, workdir: Path, threads: int, runs: int, warmup: int,
               timeout: float, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB) -> None:
    from bnn_keras.errors import BnnError

    (workdir / _MODEL_FILE).write_bytes(data)
    command = [sys.executable, "-c", _CHILD_CODE, str(Path(__file__).resolve()), mode,
               str(workdir), str(threads), str(runs), str(warmup), str(memory_limit_mb)]
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    try:
        completed = subprocess.run(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BnnError(
            f"LCE's interpreter did not finish within {timeout:g} s; the model may be damaged "
            "(convert it again) or too large for this timeout."
        ) from None
    if completed.returncode == 0:
        return
    if completed.returncode < 0:
        raise BnnError(
            f"LCE's interpreter crashed ({_signal_name(-completed.returncode)}) on this model; "
            "the .tflite file is damaged or not an LCE model: convert it again."
        )
    error_file = workdir / _ERROR_FILE
    if completed.returncode == _CHILD_ERROR_EXIT and error_file.is_file():
        reason = error_file.read_text()
    else:
        tail = completed.stderr.decode(errors="replace").strip().splitlines()
        reason = tail[-1] if tail else f"exit code {completed.returncode}"
    raise BnnError(f"LCE's interpreter rejected the model: {_one_line(reason)}")


def isolated_benchmark(
    path_or_bytes: Union[str, os.PathLike, bytes, "Flatbuffer"],
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
):
    """Measures single-image latency with LCE's interpreter in a child process.

    Args:
        path_or_bytes: A .tflite path, the flatbuffer bytes (untrusted: validated first), or a
            `Flatbuffer`.
        threads: Interpreter threads.
        runs: Timed inferences.
        warmup: Untimed inferences first.
        timeout: Seconds before the child is killed.

    Returns:
        `convert.runtime.Latency` statistics.

    Raises:
        BnnError: invalid options, a file that is not a TFLite model, or a child that failed,
            crashed or timed out (one-line message).
    """
    from bnn_keras.errors import BnnError
    from convert.runtime import Latency

    if threads < 1 or runs < 1 or warmup < 0:
        raise BnnError(
            f"Expected threads >= 1, runs >= 1 and warmup >= 0, got threads={threads}, "
            f"runs={runs}, warmup={warmup}."
        )
    data = _validated(path_or_bytes).data
    with tempfile.TemporaryDirectory(prefix="bnn-isolated-") as tmp:
        workdir = Path(tmp)
        _run_child(data, "benchmark", workdir, threads, runs, warmup, timeout)
        seconds = json.loads((workdir / _RESULT_FILE).read_text())["seconds"]
    return Latency.from_seconds(seconds, threads)


def isolated_predict(
    flatbuffer: Union[str, os.PathLike, bytes, "Flatbuffer"],
    x: np.ndarray,
    *,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> np.ndarray:
    """Runs a batch through LCE's interpreter in a child process, one example at a time.

    Args:
        flatbuffer: A .tflite path, the flatbuffer bytes (untrusted: validated first), or a
            `Flatbuffer`.
        x: Inputs of shape (N, *model input shape without batch); cast to the model's input type.
        threads: Interpreter threads.
        timeout: Seconds before the child is killed.

    Returns:
        The model's single output for the batch, shape (N, ...).

    Raises:
        BnnError: wrong input shape, a file that is not a TFLite model, a model with several
            outputs, or a child that failed, crashed or timed out.
    """
    from bnn_keras.errors import BnnError

    if threads < 1:
        raise BnnError(f"Expected threads >= 1, got {threads}.")
    validated = _validated(flatbuffer)
    shape, dtype = validated.input_spec()
    x = np.asarray(x)
    if x.shape[1:] != shape or len(x) == 0:
        raise BnnError(
            f"Expected inputs of shape (N, {', '.join(map(str, shape))}) with N >= 1, got {x.shape}."
        )
    with tempfile.TemporaryDirectory(prefix="bnn-isolated-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / _INPUT_FILE, np.ascontiguousarray(x.astype(dtype, copy=False)))
        _run_child(validated.data, "predict", workdir, threads, 0, 0, timeout)
        with np.load(workdir / _OUTPUT_FILE) as outputs:
            arrays = [outputs[key] for key in sorted(outputs.files, key=lambda k: int(k.split("_")[1]))]
    if len(arrays) != 1:
        raise BnnError(f"Expected a model with one output, got {len(arrays)}.")
    return arrays[0]
