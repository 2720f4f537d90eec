"""Writing a Raspberry Pi deployment bundle: the model, its metadata, a self-check and a C++
runner, in the layout of `convert.bundle_layout`.

`write_bundle` assembles the folder under a temporary name next to the destination, with
manifest.json written last, and renames it into place, so an interrupted call leaves no
half-written bundle; `write_checked_bundle` also self-checks it there (`convert.bundle_check`)
before it replaces anything. With `overwrite`, only bnn's files of an earlier bundle are replaced:
the user's (notes) and the device's (`build/`) are carried over into the new folder, which takes
the earlier one's place in one step (`bnn_keras.files.swap_into_place`). Also here: the checks of
a destination before the long work starts, the README, and the latency expected on the device.
"""

import json
import os
import shutil
import string
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from bnn_keras import files
from bnn_keras.model_stats import model_summary
from bnn_keras.errors import BnnError
from bnn_keras.training.data.normalization import Normalization
from bnn_keras.training.data.preprocessing import ModelInput
from convert.bundle_check import (
    CheckResult,
    check_bundle,
    entries_to_keep,
    files_under,
    write_manifest,
)
from convert.bundle_layout import (
    BENCHMARK_ASSETS,
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    EXPECTED_LATENCY_FILE,
    EXPECTED_OUTPUT_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_JSON,
    RAW_DTYPE,
    README_FILE,
    RUNNER_ARGS_FILE,
    RUNNER_DIR,
    SCRIPTS,
    SHELL_LIBRARY,
    TEST_INPUT_FILE,
    TFLITE_FILE,
    runner_args,
)
from convert.flatbuffer import Flatbuffer, FlatbufferLike
from convert.isolated import isolated_predict

_RUNNER_SOURCE = Path(__file__).resolve().parent / "runner"
# The bundle's README.md, a `string.Template` (`_readme` names its fields).
README_TEMPLATE = _RUNNER_SOURCE / "README.md.template"
# Absolute tolerance floor, relative to the output's magnitude: float32 sums in another order
# (ARM kernels vs Keras) differ by a few ulps per accumulation.
_ATOL_FLOOR = 1e-3

# LCE's published latencies of larq-zoo's QuickNets on a Raspberry Pi 4B at 1.5 GHz, 64-bit OS,
# LCE's benchmark tool (https://github.com/larq/compute-engine README, "Performance": 1 thread and
# 4 threads, RPi 4B measured 2022-04-20), beside each model's MACs at 224x224x3 and 1000 classes as
# `bnn_keras.model_stats` counts them (bnn's quicknet-small, quicknet, quicknet-large, which have
# larq-zoo's parameter counts).
# (model, MACs, ms with 1 thread, ms with 4 threads)
LCE_PI4_LATENCY_REFERENCE = (
    ("QuickNetSmall", 1_171_996_160, 27.7, 12.1),
    ("QuickNet", 1_879_339_776, 45.0, 20.8),
    ("QuickNetLarge", 3_729_027_840, 77.0, 31.7),
)
# LCE publishes no Raspberry Pi 3 figures. The Pi 3 estimate is the Pi 4 one times how much slower
# a Pi 3B+ (Cortex-A53, 1.4 GHz) is than a Pi 4B (Cortex-A72, 1.5 GHz) on the same NEON
# inference benchmark: ncnn's benchncnn with 4 threads, both boards in ncnn's
# benchmark/README.md (https://github.com/Tencent/ncnn). (model, Pi 3B+ ms, Pi 4B ms)
PI3_VS_PI4_REFERENCE = (
    ("squeezenet", 108.96, 58.73),
    ("mobilenet", 152.31, 86.01),
    ("mobilenet_v2", 194.50, 75.84),
    ("shufflenet", 91.75, 37.98),
    ("googlenet", 303.24, 176.24),
    ("resnet18", 416.54, 233.89),
    ("alexnet", 276.13, 183.05),
    ("vgg16", 1902.28, 988.65),
    ("squeezenet-ssd", 315.28, 190.40),
    ("mobilenet-ssd", 263.85, 180.52),
    ("mobilenet-yolo", 639.87, 435.26),
)
# The median ratio (1.77; the models spread from 1.46 to 2.56): an estimate of the CPU, not an LCE
# measurement, so the Pi 3 figure is rougher than the Pi 4 one.
PI3_SLOWDOWN = float(np.median([pi3 / pi4 for _, pi3, pi4 in PI3_VS_PI4_REFERENCE]))
# run.sh/benchmark.sh warn when the measured latency is this many times the expected one: far
# beyond the spread of the reference (20.6-23.9 ms per GMAC with 1 thread) and of the Pi 3 ratio, as
# a build without release flags can be (LCE issue 383: a self-built LCE ran QuickNet in ~800 ms on a
# Pi 3B+, where this estimate gives 73 ms).
LATENCY_WARN_FACTOR = 3.0
# ... and only above this latency: below it the per-invoke overhead, which MACs do not predict,
# dominates.
LATENCY_WARN_FLOOR_MS = 1.0


def expected_latency_ms(macs: int) -> Dict[str, float]:
    """Latency expected on a Raspberry Pi 4B and 3B+ (64-bit OS, LCE release build) for a model of
    `macs` multiply-accumulates.

    The Pi 4B figure scales `LCE_PI4_LATENCY_REFERENCE` (total ms over total MACs); the Pi 3B+
    figure is that times `PI3_SLOWDOWN`. The scale is QuickNet's: mostly binary MACs. A model whose
    MACs are mostly float runs slower per MAC, so its estimate is optimistic.

    Returns:
        {"pi4_threads1_ms": ..., "pi4_threads4_ms": ..., "pi3_threads1_ms": ...,
        "pi3_threads4_ms": ...}.
    """
    if macs < 0:
        raise BnnError(f"Expected a MAC count >= 0, got {macs}.")
    total_macs = sum(ref[1] for ref in LCE_PI4_LATENCY_REFERENCE)
    pi4 = {
        threads: macs * sum(ref[column] for ref in LCE_PI4_LATENCY_REFERENCE) / total_macs
        for threads, column in ((1, 2), (4, 3))
    }
    return {
        **{f"pi4_threads{threads}_ms": ms for threads, ms in pi4.items()},
        **{f"pi3_threads{threads}_ms": ms * PI3_SLOWDOWN for threads, ms in pi4.items()},
    }


def _expected_latency_text(macs: int) -> str:
    expected = expected_latency_ms(macs)
    return "".join([
        "# Latency expected for model.tflite on a Raspberry Pi 4B (1.5 GHz, 64-bit OS,\n",
        "# LCE release build): LCE's published QuickNet latencies (larq/compute-engine\n",
        "# README) scaled by the model's MACs. run.sh and benchmark.sh read it.\n",
        "# LCE publishes no Raspberry Pi 3 figures: the pi3 lines are the Pi 4B ones times\n",
        f"# {PI3_SLOWDOWN:.2f}, a Pi 3B+'s slowdown on ncnn's CPU benchmark (rougher).\n",
        f"macs={macs}\n",
        *(f"{key}={value:.4g}\n" for key, value in expected.items()),
        f"warn_factor={LATENCY_WARN_FACTOR:g}\n",
        f"warn_floor_ms={LATENCY_WARN_FLOOR_MS:g}\n",
    ])


def _lce_version() -> str:
    try:
        from importlib import metadata

        return metadata.version("larq-compute-engine")
    except Exception:  # metadata missing in an unusual install: the bundle is still usable
        return "unknown"


def _model_input(
    run_config: Optional[Mapping[str, Any]],
    input_shape: Optional[Sequence[int]],
    normalization: Optional[Union[Normalization, Mapping[str, Sequence[float]]]],
    class_names: Optional[Sequence[str]],
    pixel_max: Optional[float],
) -> ModelInput:
    """The input the bundle describes: `run_config`'s, with the arguments given instead."""
    config = dict(run_config or {})
    input_shape = input_shape if input_shape is not None else config.get("input_shape")
    normalization = normalization if normalization is not None else config.get("normalization")
    class_names = class_names if class_names is not None else config.get("class_names")
    missing = [name for name, value in (("input_shape", input_shape), ("normalization", normalization),
                                         ("class_names", class_names)) if value is None]
    if missing:
        raise BnnError(
            f"No {', '.join(missing)} given: pass a run_config from a run folder or give them "
            "explicitly."
        )
    if not isinstance(normalization, Normalization):
        normalization = Normalization.from_dict(normalization)
    return ModelInput(input_shape=tuple(input_shape), normalization=normalization,
                      class_names=class_names, dataset=config.get("dataset"),
                      data_dir=config.get("data_dir"),
                      pixel_max=pixel_max if pixel_max is not None else config.get("pixel_max"))


def check_bundle_metadata(run_config: Optional[Mapping[str, Any]]) -> None:
    """Raises `BnnError`, before any long work, when `run_config` lacks what a bundle records
    (input shape, normalization, class names)."""
    _model_input(run_config, None, None, None, None)


def _latency_readme(meta: Mapping[str, Any]) -> str:
    expected = meta.get("expected_latency")
    if not expected:
        return ""
    tiny = ("" if expected["pi4_threads1_ms"] >= LATENCY_WARN_FLOOR_MS else
            f"\nBelow {LATENCY_WARN_FLOOR_MS:g} ms the interpreter's per-invoke overhead, which "
            "MACs do not predict, dominates: no warning is given there.\n")
    pi3 = ("" if "pi3_threads1_ms" not in expected else
           f"""On a Raspberry Pi 3B+ (64-bit OS) expect about {expected["pi3_threads1_ms"]:.3g} ms with 1
thread and {expected["pi3_threads4_ms"]:.3g} ms with 4. LCE publishes no Pi 3 figures: this is the Pi 4B
estimate times {PI3_SLOWDOWN:.2f}, the median slowdown of a Pi 3B+ against a Pi 4B on ncnn's CPU
inference benchmark (1.46-2.56 over its models), so it is rougher than the Pi 4B figure.
""")
    return f"""
## Expected latency

On a Raspberry Pi 4B (1.5 GHz, 64-bit OS, LCE release build) this model should take about
{expected["pi4_threads1_ms"]:.3g} ms with 1 thread and {expected["pi4_threads4_ms"]:.3g} ms with 4:
LCE's published QuickNet latencies scaled by this model's {expected["macs"]:,} MACs
(`{EXPECTED_LATENCY_FILE}`).
{pi3}`benchmark.sh` and `run.sh` print the measured latency beside the estimate for the board (Pi 3
or Pi 4; a Pi 5 is held to the Pi 4 figure) and warn when it is {LATENCY_WARN_FACTOR:g} times slower or
more: a build without LCE's release flags, a 32-bit OS or a throttled CPU
(`vcgencmd get_throttled`) usually explains it. The estimate assumes mostly binary MACs as in
QuickNet; a model with mostly float layers runs slower per MAC.
{tiny}"""


def _readme(meta: Mapping[str, Any], folder: str) -> str:
    """The bundle's README.md: `README_TEMPLATE` filled in from the bundle's model.json."""
    height, width = meta["input"]["shape"][1:3]
    version = meta["lce_version"]
    return string.Template(README_TEMPLATE.read_text()).substitute(
        name=meta.get("name") or "bnn", version=version,
        tag=f"v{version}" if version != "unknown" else "v0.16.0",
        shape="x".join(str(d) for d in meta["input"]["shape"]), height=height, width=width,
        classes=len(meta["class_names"]), folder=folder, latency_section=_latency_readme(meta),
        downloads=_downloads(meta, f"v{version}" if version != "unknown" else "v0.16.0"),
        atol=f'{meta["expected_output"]["atol"]:.3g}', pixel_max=f'{meta["pixel_max"]:g}',
        TFLITE_FILE=TFLITE_FILE, MODEL_JSON=MODEL_JSON, LABELS_FILE=LABELS_FILE,
        RUNNER_DIR=RUNNER_DIR, RUNNER_ARGS_FILE=RUNNER_ARGS_FILE, SHELL_LIBRARY=SHELL_LIBRARY,
        MANIFEST_FILE=MANIFEST_FILE, TEST_INPUT_FILE=TEST_INPUT_FILE,
        EXPECTED_OUTPUT_FILE=EXPECTED_OUTPUT_FILE)


def _downloads(meta: Mapping[str, Any], tag: str) -> str:
    """What the Pi fetches from the network, said at the top of the README."""
    carried = meta.get("lce_benchmark_binary")
    other = next((a for a in BENCHMARK_ASSETS.values() if a != carried), "")
    if carried:
        bits = "64-bit" if carried.endswith("aarch64") else "32-bit"
        benchmark = (f"nothing for `benchmark.sh` on a {bits} OS: this bundle carries "
                     f"`{carried}` (LCE's benchmark binary); on the other OS it downloads "
                     f"`{other}` from LCE's GitHub release {tag}")
    else:
        benchmark = (f"`benchmark.sh` downloads LCE's benchmark binary (`lce_benchmark_model_aarch64` "
                     f"or `_aarch32`, by `uname -m`) from LCE's GitHub release {tag}, unless "
                     "`LCE_BENCHMARK_MODEL` names one or it lies in this folder (`bnn convert "
                     "--bundle ... --lce-benchmark-binary FILE` puts it here)")
    return (f"On the Pi, {benchmark}. `build.sh` clones LCE's source tree {tag} with its "
            "TensorFlow submodule, and TensorFlow Lite's CMake build downloads its third-party "
            "libraries (`apt-get install build-essential cmake git` first). `run.sh` needs no "
            "network once the runner is built.")


def _copy_runner(dest: Path) -> None:
    if not (_RUNNER_SOURCE / "bnn_runner.cc").is_file():
        raise BnnError(f"The C++ runner sources are missing from {_RUNNER_SOURCE}; reinstall bnn.")
    (dest / RUNNER_DIR).mkdir()
    for name in ("bnn_runner.cc", "CMakeLists.txt"):
        shutil.copyfile(_RUNNER_SOURCE / name, dest / RUNNER_DIR / name)
    for name in (*SCRIPTS, SHELL_LIBRARY):
        shutil.copyfile(_RUNNER_SOURCE / "scripts" / name, dest / name)
        os.chmod(dest / name, 0o755 if name in SCRIPTS else 0o644)


def is_replaceable_bundle(folder: Union[str, os.PathLike]) -> bool:
    """Whether `folder` is empty or a bundle `write_bundle` wrote (its model.json says so), the
    only folders `overwrite` may replace."""
    folder = Path(folder)
    if not any(folder.iterdir()):
        return True
    try:
        return json.loads((folder / MODEL_JSON).read_text()).get("format") == BUNDLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_bundle_destination(
    directory: Union[str, os.PathLike],
    *,
    reads: Sequence[Union[str, os.PathLike]] = (),
    overwrite: bool = False,
    what: str = "`bundle`",
) -> Path:
    """Checks, before the conversion starts, that a bundle can be written to `directory`.

    Refused: a symbolic link, a path that is not a folder, a folder holding one of `reads`, an
    existing folder without `overwrite` (with it: anything but an empty folder or an earlier
    bundle), and a parent folder where nothing can be created. With `overwrite`, also an earlier
    bundle where replacing bnn's files would lose something: one of them edited since bnn wrote
    it, a file of the user's where bnn writes one, or a manifest that no longer tells them apart.

    `write_bundle` checks its folder with this function too (`what` "Bundle folder").

    Raises:
        BnnError: one line naming `what`, the folder (and the file) and what to do.
    """
    folder = files.check_output_folder(directory, reads=reads, overwrite=overwrite,
                                       what=what, replaceable=is_replaceable_bundle,
                                       kind="bnn bundle")
    if overwrite and folder.is_dir():
        entries_to_keep(folder, BUNDLE_FILES, what=what)
    return folder


# ----------------------------------------------------------------------------------------------
# overwrite: replace bnn's files, keep everything else

_WHAT = "Bundle folder"


def _first_reason(exc: OSError) -> str:
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        return str(exc.args[0][0][-1])  # copytree's [(source, target, why), ...]
    return exc.strerror or str(exc)


def _carry_over(old: Path, new: Path, entries: Sequence[str]) -> None:
    """Puts the `entries` ("notes.txt", "build/") of the bundle `old` into the folder `new`,
    leaving `old` as it is.

    Raises:
        BnnError: an entry that cannot be linked or copied (`new` is then discarded).
    """
    for entry in entries:
        name = entry.rstrip("/")
        source, target = old / name, new / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry.endswith("/"):
                shutil.copytree(source, target, symlinks=True, copy_function=files.link_or_copy)
            elif source.is_symlink():
                os.symlink(os.readlink(source), target)
            else:
                files.link_or_copy(str(source), str(target))
        except OSError as exc:
            raise BnnError(f"Could not keep {source} in the new bundle: {_first_reason(exc)}; "
                           f"nothing was replaced. Move it out of {old}, then run again.") from None


def estimated_size(flatbuffer_size: int, input_shape: Sequence[int], num_outputs: int,
                   benchmark_binary: Optional[Union[str, os.PathLike]] = None) -> int:
    """Bytes a bundle takes: the flatbuffer, the raw test tensors, the runner sources, text, and
    LCE's benchmark binary when it carries one."""
    runner = sum(p.stat().st_size for p in _RUNNER_SOURCE.rglob("*") if p.is_file())
    tensors = (int(np.prod(input_shape)) + int(num_outputs)) * RAW_DTYPE.itemsize
    binary = Path(benchmark_binary).stat().st_size if benchmark_binary else 0
    return int(flatbuffer_size) + tensors + runner + binary + 64 * 1024


def benchmark_asset(path: Union[str, os.PathLike]) -> str:
    """The name under which the bundle carries LCE's benchmark binary at `path`: the release
    asset benchmark.sh looks for on its architecture, read from the file's ELF header.

    Raises:
        BnnError: not an ELF executable for 64-bit or 32-bit ARM.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError as exc:
        raise BnnError(f"Could not read `lce_benchmark_binary` {path} ({exc.strerror}).") from None
    if len(header) == 20 and header[:4] == b"\x7fELF":
        machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
        if machine in BENCHMARK_ASSETS:
            return BENCHMARK_ASSETS[machine]
    raise BnnError(f"`lce_benchmark_binary` {path} is not a Linux executable for 64-bit or "
                   "32-bit ARM; give LCE's lce_benchmark_model release asset for the Pi "
                   "(lce_benchmark_model_aarch64 or _aarch32) or one built for it.")


def write_bundle(
    directory: Union[str, os.PathLike],
    *,
    flatbuffer: FlatbufferLike,
    keras_model=None,
    run_config: Optional[Mapping[str, Any]] = None,
    input_shape: Optional[Sequence[int]] = None,
    normalization: Optional[Union[Normalization, Mapping[str, Sequence[float]]]] = None,
    class_names: Optional[Sequence[str]] = None,
    sample_input: Optional[np.ndarray] = None,
    pixel_max: Optional[float] = None,
    name: Optional[str] = None,
    overwrite: bool = False,
    benchmark_binary: Optional[Union[str, os.PathLike]] = None,
) -> Path:
    """Writes a Raspberry Pi bundle folder, atomically.

    The folder is assembled next to `directory` under a temporary name, with manifest.json
    written last, and renamed into place, so an interrupted call leaves no half-written bundle.

    Args:
        directory: The bundle folder to create.
        flatbuffer: The LCE flatbuffer (a `Flatbuffer` or its bytes).
        keras_model: The Keras model the flatbuffer was converted from: its output on the sample
            is the expected output. None uses LCE's own output (the check then only guards
            against the device disagreeing with LCE on x86).
        run_config: A run's config.json (input_shape, normalization, class_names, dataset).
        input_shape: (H, W, C); overrides run_config.
        normalization: Per-channel mean/std on raw pixels; overrides run_config.
        class_names: One per output; overrides run_config.
        sample_input: One normalized input (H, W, C) or (1, H, W, C); default a fixed random one.
        pixel_max: Raw pixel maximum of the training images; overrides run_config [default:
            the data set's, `pixel_max_for`].
        name: Model name for the README (default: the run's model name, else the folder name).
        overwrite: Replace an earlier bundle (or empty folder) at `directory`: only the files
            bnn wrote there are replaced; the user's (notes, `build/`) are kept as they are.
        benchmark_binary: LCE's lce_benchmark_model for the Pi, copied in under the name
            benchmark.sh looks for (`benchmark_asset`), so that the Pi downloads nothing.

    Returns:
        The bundle folder.

    Raises:
        BnnError: missing metadata, shapes that disagree with the flatbuffer, an existing folder
            (with `overwrite`: one that is not a bundle, or where a new bundle would replace a
            file bnn did not write or one it wrote that was edited since), or a flatbuffer whose
            top-1 class on the sample differs from the Keras model's.
    """
    return _write_bundle(directory, flatbuffer=flatbuffer, keras_model=keras_model,
                         run_config=run_config, input_shape=input_shape,
                         normalization=normalization, class_names=class_names,
                         sample_input=sample_input, pixel_max=pixel_max, name=name,
                         overwrite=overwrite, benchmark_binary=benchmark_binary,
                         self_check=False)[0]


def write_checked_bundle(directory: Union[str, os.PathLike], **options) -> Tuple[Path, CheckResult]:
    """`write_bundle` (same keyword arguments), self-checked before it replaces anything.

    The folder assembled under its temporary name passes `check_bundle` there before it is
    renamed into place: a bundle that fails its check never replaces anything.

    Returns:
        The bundle folder and its passing `CheckResult`.

    Raises:
        BnnError: as `write_bundle`, or a failed self-check.
    """
    return _write_bundle(directory, **options, self_check=True)


def _write_bundle(directory, *, flatbuffer, keras_model=None, run_config=None, input_shape=None,
                  normalization=None, class_names=None, sample_input=None, pixel_max=None,
                  name=None, overwrite=False, benchmark_binary=None, self_check=False):
    final = check_bundle_destination(directory, overwrite=overwrite, what=_WHAT)
    asset = benchmark_asset(benchmark_binary) if benchmark_binary else None
    flatbuffer = Flatbuffer.wrap(flatbuffer)
    model_input = _model_input(run_config, input_shape, normalization, class_names, pixel_max)
    shape, norm = model_input.input_shape, model_input.normalization.to_dict()
    labels, pixel_max = list(model_input.class_names), model_input.pixel_max

    if sample_input is None:
        sample = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    else:
        sample = np.asarray(sample_input, np.float32)
        sample = sample[np.newaxis] if sample.ndim == len(shape) else sample
    if sample.shape != (1, *shape):
        raise BnnError(f"Expected a sample input of shape {shape}, got {np.shape(sample_input)}.")

    lce_output = np.asarray(isolated_predict(flatbuffer, sample), np.float32)
    if keras_model is not None:
        expected = np.asarray(keras_model.predict(sample, verbose=0), np.float32)
        if expected.shape != lce_output.shape:
            raise BnnError(
                f"The Keras model's output shape {expected.shape} differs from the flatbuffer's "
                f"{lce_output.shape}; is this the model the flatbuffer was converted from?"
            )
        if expected.argmax() != lce_output.argmax():
            raise BnnError(
                "The flatbuffer's top-1 class on the sample input differs from the Keras model's; "
                "run `bnn convert` again (or pass another sample_input if a logit is a near tie)."
            )
    else:
        expected = lce_output
    if expected.reshape(-1).shape[0] != len(labels):
        raise BnnError(
            f"The model has {expected.size} outputs but {len(labels)} class names were given."
        )
    x86_diff = float(np.max(np.abs(expected - lce_output)))
    # The device's optimized kernels reorder float sums differently again; allow a margin over
    # what x86 LCE already shows, never below a small fraction of the output's magnitude.
    atol = max(_ATOL_FLOOR * max(1.0, float(np.max(np.abs(expected)))), 4.0 * x86_diff)

    meta: Dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": name or (run_config or {}).get("model") or final.name,
        "tflite": TFLITE_FILE,
        "lce_version": _lce_version(),
        "input": {"shape": [1, *shape], "dtype": "float32"},
        "normalization": norm,
        "pixel_max": float(pixel_max),
        "class_names": labels,
        "labels": LABELS_FILE,
        "test_input": {"file": TEST_INPUT_FILE, "shape": list(sample.shape), "dtype": "float32",
                       "byte_order": "little"},
        "expected_output": {"file": EXPECTED_OUTPUT_FILE, "shape": list(expected.shape),
                            "dtype": "float32", "byte_order": "little", "atol": atol,
                            "source": "keras" if keras_model is not None else "lce",
                            "x86_lce_max_abs_diff": x86_diff},
    }
    for key in ("dataset", "model"):
        if run_config and key in run_config:
            meta[key] = run_config[key]
    if asset:
        meta["lce_benchmark_binary"] = asset
    macs = model_summary(keras_model).total_macs if keras_model is not None else None
    if macs is not None:
        meta["expected_latency"] = {
            **expected_latency_ms(macs), "macs": macs, "file": EXPECTED_LATENCY_FILE,
            "source": "LCE's published Raspberry Pi 4B QuickNet latencies, scaled by MACs",
        }

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files.write_bytes(tmp / TFLITE_FILE, flatbuffer.data)
        files.write_text(tmp / LABELS_FILE, "".join(f"{label}\n" for label in labels))
        files.write_bytes(tmp / TEST_INPUT_FILE, sample.astype(RAW_DTYPE).tobytes())
        files.write_bytes(tmp / EXPECTED_OUTPUT_FILE, expected.astype(RAW_DTYPE).tobytes())
        files.write_text(tmp / RUNNER_ARGS_FILE, runner_args(atol, norm, float(pixel_max)))
        if macs is not None:
            files.write_text(tmp / EXPECTED_LATENCY_FILE, _expected_latency_text(macs))
        files.write_json(tmp / MODEL_JSON, meta)
        files.write_text(tmp / README_FILE, _readme(meta, final.name))
        _copy_runner(tmp)
        if asset:
            shutil.copyfile(benchmark_binary, tmp / asset)
            os.chmod(tmp / asset, 0o755)
        write_manifest(tmp)  # last: a folder without it is not a complete bundle
        check = None
        if self_check:
            try:
                check = check_bundle(tmp)
            except BnnError as exc:  # name the folder the user asked for, not the temporary one
                raise BnnError(str(exc).replace(str(tmp), str(final))) from None
        if final.exists():
            # Read again now: the user's files as they are at the moment of the swap.
            keep = entries_to_keep(final, files_under(tmp), what=_WHAT)
            _carry_over(final, tmp, keep)
            shutil.copymode(final, tmp)  # the folder's own permissions are the user's too
            files.swap_into_place(tmp, final)
        else:
            os.replace(tmp, final)
    finally:
        # The new folder after a failure, the earlier bundle after a swap. The user's files in
        # either are hard links or copies of those in the bundle that stays.
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final, check
