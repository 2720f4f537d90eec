"""The whole `bnn convert` job as one function, `convert_trained_model`, whose body is its steps:
check the options against the source, check the outputs, load, describe the input, convert,
verify, write, report.

What the job is asked to do is a `convert.options.ConvertOptions`. Messages name its fields in
backticks (`bnn_keras.options.spell_fields`); `bnn convert` shows its options in their place.

Every output location is checked before the model is even loaded (an input is never an output,
links and devices are never replaced, an existing file only with `overwrite`, the folders are
writable, nothing goes into a run folder that another process trains into), free space once the
flatbuffer's size is predicted, and the files are replaced only after the flatbuffer is verified
and the bundle has passed its self-check: a refused or failed conversion leaves every file that
existed before as it was.
"""

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from bnn_keras import files
from bnn_keras.errors import BnnError
from bnn_keras.training import run_lock
from bnn_keras.training.data.preprocessing import ModelInput, parse_floats
from bnn_keras.training.run_files import CONFIG_FILE, MODEL_FILE, RUN_MODEL_FILES
from convert.converter import convert_to_flatbuffer, float32_for_conversion
from convert.flatbuffer import UNVERIFIED_SUFFIX, Flatbuffer
from convert.loading import LoadedModel, load_trained_model
from convert.metadata import run_metadata
from convert.options import ConvertOptions
from convert.report import ConversionReport, conversion_report
from convert.samples import verification_inputs
from convert.verify import verify_flatbuffer

if TYPE_CHECKING:
    import tensorflow as tf

DEFAULT_OUTPUT = "model.tflite"
# The free-space estimate of a .tflite: `model_stats`' prediction of LCE's flatbuffer (within 5%
# of the registry's models converted) times this margin, plus the metadata and these bytes for
# what the prediction leaves out (tensor names, the metadata's table entry).
_PREDICTION_MARGIN = 1.10
_FLATBUFFER_SLACK = 16 * 1024


class VerificationFailedError(BnnError):
    """The flatbuffer disagrees with Keras; it was kept under a `.unverified` name."""

    def __init__(self, message: str, report: ConversionReport):
        super().__init__(message)
        self.report = report


def parse_class_names(value: Union[str, Sequence[str]]) -> List[str]:
    """Class names from a list, a file (one name per line) or a comma-separated string.

    Raises:
        BnnError: no names, or an empty name.
    """
    if isinstance(value, str):
        path = Path(value)
        if path.is_file():
            try:
                names = [line.strip() for line in path.read_text().splitlines()]
            except (OSError, UnicodeDecodeError) as exc:
                raise BnnError(f"Could not read `class_names` {path} ({exc}).") from None
            while names and not names[-1]:
                names.pop()
        else:
            names = [name.strip() for name in value.split(",")]
    else:
        names = [str(name) for name in value]
    if not names or any(not name for name in names):
        raise BnnError(f"Expected `class_names` as a file with one name per line or a comma-"
                       f"separated list of non-empty names, got {value!r}.")
    return names


def _run_folder(source: Path) -> bool:
    return source.is_dir() and (source / MODEL_FILE).is_file()


def _run_model_file(source: Path) -> bool:
    """A model file of a run (model.keras, best.keras or last.keras beside its config.json),
    which is read with the run's config.json (`load_trained_model`)."""
    return (source.name in RUN_MODEL_FILES and source.is_file()
            and (source.parent / CONFIG_FILE).is_file())


def _has_run(source: Path) -> bool:
    """A run folder, or one of a run's model files: its config.json says how to feed it."""
    return _run_folder(source) or _run_model_file(source)


def _default_output(source: Path) -> Path:
    """model.tflite in the run folder, best.tflite (last.tflite) beside a run's best.keras
    (last.keras), else model.tflite next to the model file (or SavedModel folder)."""
    if _run_folder(source):
        return source / DEFAULT_OUTPUT
    if _run_model_file(source):
        return source.with_suffix(".tflite")
    return source.parent / DEFAULT_OUTPUT


def _read_paths(source: Path) -> List[Path]:
    """What converting `source` reads, and so must never be written: the model file, or every
    file and folder a run folder holds except the .tflite files and bundles converting wrote."""
    from convert.bundle import MODEL_JSON, is_replaceable_bundle

    if _run_model_file(source) and _run_folder(source.parent):
        source = source.parent  # a model file of a run: protect the whole run
    if not _run_folder(source):
        return [source]
    kept = []
    for path in source.iterdir():
        if path.is_file() and path.name.endswith((".tflite", ".tflite" + UNVERIFIED_SUFFIX)):
            continue
        if path.is_dir() and (path / MODEL_JSON).is_file() and is_replaceable_bundle(path):
            continue
        kept.append(path)
    return kept


def convert_trained_model(source: Union[str, os.PathLike],
                          options: Optional[ConvertOptions] = None, *, verbose: int = 0,
                          **changes: Any) -> ConversionReport:
    """Converts a run folder or model file, verifies the flatbuffer and writes it.

    Every output location is checked before the model is loaded, and the outputs are replaced
    only once the flatbuffer is verified (and the bundle has passed its self-check).

    Args:
        source: A run folder (model.keras + config.json) or a Keras model file.
        options: What to do, `ConvertOptions` (each field documents one option) [default: its
            defaults].
        verbose: 1 shows a progress bar while the flatbuffer runs.
        **changes: `ConvertOptions` fields that replace those of `options`, e.g.
            `convert_trained_model("runs/digits", output="model.tflite", int8=True)`.

    Returns:
        The `ConversionReport`, with `path` (and `bundle`, `bundle_check`) set.

    Raises:
        BnnError: bad source or options, an output that would destroy a file or cannot be
            written, class names that do not match the model's outputs, a run folder that
            another process trains into when it has no model yet or an output would go into
            it (with a model and the outputs elsewhere, a warning says that the model
            converted is the one from before that training).
        VerificationFailedError: agreement below `min_agreement`; the flatbuffer was written to
            `<output>.unverified` instead of `output` (unless that file exists and `overwrite`
            is off).
    """
    options = dataclasses.replace(options or ConvertOptions(), **changes)
    source = Path(source)
    _check_source_options(source, options)
    outputs = _check_outputs(source, options)
    loaded = load_trained_model(str(source))
    model_input = _model_input(loaded, options)
    metadata = run_metadata(model_input, model=loaded.run.model if loaded.run else None)
    _check_free_space(loaded, metadata, outputs, options)

    # The float32 model the flatbuffer is made from, rebuilt once (under mixed precision) for the
    # conversion, the verification and the bundle's self-check.
    deployed = float32_for_conversion(loaded.model)
    # Parsed once here and passed along: verification, the report and the bundle read this object.
    float_flatbuffer = convert_to_flatbuffer(deployed, target=options.target).with_metadata(metadata)
    x, y, verified_on = _verification_inputs(loaded, model_input, options)
    flatbuffer, int8_report = float_flatbuffer, None
    if options.int8:
        flatbuffer = _int8(loaded, options, metadata)
        int8_report = _int8_comparison(float_flatbuffer, flatbuffer, x, y)
    verification = verify_flatbuffer(deployed, flatbuffer, x, verbose=verbose)
    report = conversion_report(loaded.model, flatbuffer, target=options.target,
                               verification=verification, verified_on=verified_on)
    report.int8 = int8_report
    report.rebuilt_classes = tuple(loaded.rebuilt_classes)
    if verification.top1_agreement < options.min_agreement:
        _keep_unverified(flatbuffer, report, outputs, options)  # raises
    _write_outputs(flatbuffer, deployed, metadata, report, outputs, options)
    return report


@dataclasses.dataclass(frozen=True)
class _Outputs:
    """Where a conversion writes: the .tflite, the name it keeps an unverified one under, and
    the bundle folder (or None)."""

    tflite: Path
    unverified: Path
    bundle: Optional[Path]


def _check_source_options(source: Path, options: ConvertOptions) -> None:
    """Refuses options that do not apply to `source`: a run folder records its preprocessing,
    and int8 needs its training images."""
    given = options.given_model_file_options
    if _run_folder(source) and (given or options.no_metadata):
        raise BnnError(f"{', '.join(given) or '`no_metadata`'}: for a model file only; the "
                       f"run folder {source} records its preprocessing in {CONFIG_FILE}.")
    if options.int8 and not _has_run(source):
        raise BnnError("`int8` needs a run folder: its training images calibrate the int8 "
                       "ranges.")


def _check_outputs(source: Path, options: ConvertOptions) -> _Outputs:
    """Checks every output location before the model is loaded (`bnn_keras.files`): none is
    an input, a link or a device, an existing one only with `overwrite`, and none goes into a
    run folder that another process trains into."""
    tflite = Path(options.output) if options.output else _default_output(source)
    reads = _read_paths(source) + [Path(p) for p in (options.inputs, options.lce_benchmark_binary)
                                   if p]
    if isinstance(options.class_names, str) and Path(options.class_names).is_file():
        reads.append(Path(options.class_names))
    files.check_output_file(tflite, reads=reads, overwrite=options.overwrite, what="`output`")
    unverified = tflite.with_name(tflite.name + UNVERIFIED_SUFFIX)
    # An existing .unverified file is only left alone (at the end), never a reason to refuse.
    files.check_output_file(unverified, reads=reads, overwrite=True, what="`output`")
    bundle = Path(options.bundle) if options.bundle else None
    if bundle:
        from convert.bundle import benchmark_asset, check_bundle_destination

        check_bundle_destination(bundle, reads=[*reads, tflite, unverified],
                                 overwrite=options.overwrite)
        if options.lce_benchmark_binary:
            benchmark_asset(options.lce_benchmark_binary)  # an ARM executable, before any work
    _check_not_training(source, [("`output`", tflite), ("`output`", unverified)]
                        + ([("`bundle`", bundle)] if bundle else []))
    if tflite.suffix != ".tflite":
        warnings.warn(f"{tflite} does not end in .tflite.", stacklevel=3)
    return _Outputs(tflite=tflite, unverified=unverified, bundle=bundle)


def _model_input(loaded: LoadedModel, options: ConvertOptions) -> Optional[ModelInput]:
    """What the .tflite records of the model's input: the run folder's, else the one the
    options describe (None with `no_metadata`), checked against the model's outputs. A run's
    model file given with the model-file options (or `no_metadata`) is converted as the bare
    file they describe."""
    if loaded.run is not None and not (options.given_model_file_options
                                       or options.no_metadata):
        model_input = loaded.run.model_input
        _check_classes(loaded, model_input, f"{loaded.run.config_file}")
    elif options.no_metadata:
        model_input = None
    else:
        model_input = _model_file_input(loaded, options)
        _check_classes(loaded, model_input, "`class_names`")
    if options.bundle and model_input is None:
        raise BnnError("`bundle` needs the class names and normalization that `no_metadata` "
                       "leaves out; pass `class_names`, `mean` and `std` instead.")
    return model_input


def _model_file_input(loaded: LoadedModel, options: ConvertOptions) -> ModelInput:
    """The input of a bare model file, from the user's options; refuses without them."""
    missing = [f"`{name}`" for name in ("class_names", "mean", "std")
               if getattr(options, name) is None]
    if missing:
        raise BnnError(
            f"{loaded.path} is a model file without a run folder, so nothing says how to feed and "
            f"read it: pass {', '.join(missing)} (and `pixel_max`, `dataset` if they apply), "
            "or `no_metadata` for a plain .tflite that `bnn evaluate` and `bnn predict` "
            "cannot use."
        )
    input_shape = [int(d) for d in loaded.model.input_shape[1:]]
    if len(input_shape) != 3:
        raise BnnError(f"Expected an image model with (H, W, C) inputs, got input shape "
                       f"{tuple(loaded.model.input_shape)}; pass `no_metadata` to convert it "
                       "anyway.")
    return ModelInput.from_options(
        input_shape, class_names=parse_class_names(options.class_names),
        mean=parse_floats(options.mean, "`mean`"), std=parse_floats(options.std, "`std`"),
        pixel_max=options.pixel_max, dataset=options.dataset, data_dir=options.data_dir)


def _check_classes(loaded: LoadedModel, model_input: ModelInput, where: str) -> None:
    """Class names (and num_classes) must match the model's outputs, or predict would refuse
    the .tflite later (or name the wrong classes)."""
    shape = loaded.model.output_shape
    shape = shape[0] if isinstance(shape, list) else shape
    outputs = int(shape[-1])
    names = model_input.class_names
    if names is not None and len(names) != outputs:
        raise BnnError(f"{where} names {len(names)} classes but the model has {outputs} "
                       "outputs; give one class name per output.")
    count = model_input.num_classes
    if count is not None and count != outputs:
        raise BnnError(f"{where} says num_classes {count} but the model has {outputs} outputs.")


def _verification_inputs(loaded: LoadedModel, model_input: Optional[ModelInput],
                         options: ConvertOptions):
    """(x, y or None, what they are): the data set's test images when the input names one,
    else the user's .npy, else random inputs (warned)."""
    if model_input is not None and model_input.dataset:
        return verification_inputs(loaded.model, model_input, options.samples)
    if options.inputs:
        try:
            x = np.load(options.inputs)
        except (OSError, ValueError) as exc:
            raise BnnError(f"Could not read `inputs` {options.inputs} as a .npy array "
                           f"({exc}).") from None
        expected = tuple(loaded.model.input_shape[1:])
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise BnnError(f"Expected `inputs` of shape (N, {', '.join(map(str, expected))}), "
                           f"got {x.shape}.")
        return x[:options.samples].astype(np.float32), None, f"inputs from {options.inputs}"
    return verification_inputs(loaded.model, None, options.samples)


def _keep_unverified(flatbuffer: Flatbuffer, report: ConversionReport, outputs: _Outputs,
                     options: ConvertOptions) -> None:
    """Writes a flatbuffer that failed verification under its `.unverified` name (unless one
    is there already and `overwrite` is off), then raises `VerificationFailedError`."""
    verification = report.verification
    agreement = (f"The .tflite agrees with Keras on only {verification.top1_agreement:.2%} "
                 f"of {verification.samples} {report.verified_on} (`min_agreement` "
                 f"{options.min_agreement:.2%})")
    kept = outputs.unverified
    if kept.exists() and not options.overwrite:
        raise VerificationFailedError(
            f"{agreement}; it was not kept, since {kept} already exists (pass `overwrite` "
            "to replace it).", report)
    with files.storage_errors(kept, what="the unverified .tflite"):
        files.write_bytes(kept, flatbuffer.data)
    report.path = str(kept)
    raise VerificationFailedError(f"{agreement}; kept it as {kept} for inspection.", report)


def _write_outputs(flatbuffer: Flatbuffer, deployed: "tf.keras.Model",
                   metadata: Dict[str, Any], report: ConversionReport, outputs: _Outputs,
                   options: ConvertOptions) -> None:
    """Writes the verified .tflite atomically, and the bundle before it (a refused bundle
    leaves `output` as it was); sets the report's paths."""
    with files.storage_errors(outputs.tflite, what="`output`"):
        with files.atomic_path(outputs.tflite) as partial:
            partial.write_bytes(flatbuffer.data)
            if outputs.bundle:
                # The bundle is written and self-checked before the .tflite replaces `output`
                # (when this block ends).
                report.bundle, report.bundle_check = _write_bundle(
                    outputs.bundle, flatbuffer, deployed, metadata, options)
    report.path = str(outputs.tflite)


def _check_not_training(source: Path, writes: Sequence[Tuple[str, Path]]) -> None:
    """Warns when another process trains into the run folder of `source` (holds its lock):
    its model.keras, replaced atomically, is the one from before that training. Refuses when
    nothing is there yet, or when an output would go into the folder, which that process owns.

    Args:
        source: The run folder or model file converted.
        writes: (how the option is named, path) of each output.

    Raises:
        BnnError: the run has no model yet, or an output lies in its folder.
    """
    folder = source if source.is_dir() else source.parent
    try:
        run_lock.check_not_busy(folder)
        return
    except run_lock.RunFolderBusyError as exc:
        # "Run folder RUN is in use by another bnn process (PID N)"; what to do differs here.
        busy = str(exc).split(";")[0]
    if not (folder / MODEL_FILE).is_file():
        raise BnnError(f"{busy}, which is training into it and has not written its "
                       f"{MODEL_FILE} yet; wait for it to end.")
    inside = [(what, path) for what, path in writes
              if path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents]
    if inside:
        what, path = inside[0]
        raise BnnError(f"{busy}, which is training into it: {what} {path} would be written into "
                       f"the folder that process owns, beside a {MODEL_FILE} it will replace; "
                       "wait for it to end, or give an output outside the run folder.")
    warnings.warn(f"{busy}, which is training into it: converting its {MODEL_FILE} as it is "
                  "now, which that run will replace when it ends.", stacklevel=3)


def estimated_tflite_size(model: "tf.keras.Model", metadata: Optional[Dict[str, Any]]) -> int:
    """Bytes the .tflite of `model` takes, rounded up rather than down, for the free-space check.

    LCE's flatbuffer as `bnn_keras.model_stats` predicts it (binary kernels bitpacked at 1 bit,
    the other weights at 32 bits; an int8 conversion is smaller) with a margin, plus the
    `metadata` stored in it. The Keras model's own size is no guide: it keeps every latent
    weight in float32, 32x a binary kernel's bytes in the flatbuffer.

    Args:
        model: The Keras model to convert.
        metadata: What `run_metadata` stores in the .tflite (None: nothing).

    Returns:
        The estimate in bytes.
    """
    from bnn_keras.model_stats import model_summary

    predicted = model_summary(model).lce_size_bytes
    stored = len(json.dumps(metadata or {}, sort_keys=True).encode())
    return int(predicted * _PREDICTION_MARGIN) + stored + _FLATBUFFER_SLACK


def _check_free_space(loaded: LoadedModel, metadata: Dict[str, Any], outputs: _Outputs,
                      options: ConvertOptions) -> None:
    """Refuses early when the outputs cannot fit: the .tflite (`estimated_tflite_size`) and
    the bundle's extra files."""
    from convert.bundle import estimated_size

    size = estimated_tflite_size(loaded.model, metadata)
    needs = [(outputs.tflite, size)]
    if outputs.bundle:
        shape = loaded.model.output_shape
        classes = int(np.prod((shape[0] if isinstance(shape, list) else shape)[1:]))
        needs.append((outputs.bundle, estimated_size(size, loaded.model.input_shape[1:], classes,
                                                     options.lce_benchmark_binary)))
    files.check_free_space(needs, what="the .tflite" + (" and the bundle" if outputs.bundle
                                                        else ""))


def _write_bundle(bundle: Path, flatbuffer: Flatbuffer, deployed: "tf.keras.Model",
                  metadata: Dict[str, Any], options: ConvertOptions) -> Tuple[str, str]:
    """Writes and self-checks the bundle; returns (folder, check summary) for the report.
    `deployed` is the float32 model the flatbuffer was made from: the expected output;
    `metadata` the .tflite's (`run_metadata`), which describes the model's input."""
    from convert.bundle import write_checked_bundle

    with files.storage_errors(bundle, what="`bundle`"):
        path, check = write_checked_bundle(
            bundle, flatbuffer=flatbuffer, keras_model=deployed, run_config=metadata,
            overwrite=options.overwrite, benchmark_binary=options.lce_benchmark_binary,
        )
    return str(path), f"max |diff| {check.max_abs_diff:.3g} <= {check.atol:.3g}"


def _int8(loaded: LoadedModel, options: ConvertOptions, metadata: Dict[str, Any]) -> Flatbuffer:
    """The int8 flatbuffer of the model, with fake-quant ranges calibrated on the run's
    training images (and fine-tuned on them when asked)."""
    from convert.int8 import FineTune, prepare_int8
    from convert.samples import run_test_split

    x_cal, y_cal = run_test_split(loaded.run.model_input, options.calibration_samples,
                                  split="train")
    fine_tune = (FineTune(data=(x_cal, y_cal), epochs=options.fine_tune_epochs)
                 if options.fine_tune_epochs else None)
    prepared = prepare_int8(loaded.model, x_cal, fine_tune=fine_tune)
    io_type = "int8" if options.int8_io else "float32"
    return convert_to_flatbuffer(prepared, target=options.target, inference_input_type=io_type,
                                 inference_output_type=io_type).with_metadata(metadata)


def _int8_comparison(float_flatbuffer: Flatbuffer, int8_flatbuffer: Flatbuffer, x, y):
    """Size, and accuracy or agreement on the verification inputs, with and without int8."""
    from convert.runtime import LceRuntime

    def predict(fb: Flatbuffer):
        raw = LceRuntime(fb).predict(fb.quantize_inputs(x))
        return np.asarray(fb.dequantize_outputs(raw)).reshape(len(x), -1).argmax(-1)

    float_top1, int8_top1 = predict(float_flatbuffer), predict(int8_flatbuffer)
    comparison = {
        "float32_size_bytes": len(float_flatbuffer),
        "int8_size_bytes": len(int8_flatbuffer),
        "top1_agreement_int8_vs_float32": float(np.mean(float_top1 == int8_top1)),
    }
    if y is not None:
        comparison["float32_accuracy"] = float(np.mean(float_top1 == y))
        comparison["int8_accuracy"] = float(np.mean(int8_top1 == y))
    return comparison
