"""The whole `bnn convert` job as one function: load, convert, verify, write, report."""

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from bnn_keras import files
from bnn_keras.errors import BnnError
from convert.converter import as_float32, convert_model
from convert.loading import LoadedModel, load_trained_model
from convert.metadata import embed_metadata, run_metadata
from convert.report import ConversionReport, conversion_report
from convert.samples import verification_inputs
from convert.verify import verify_flatbuffer

UNVERIFIED_SUFFIX = ".unverified"


class VerificationFailedError(BnnError):
    """The flatbuffer disagrees with Keras; it was kept under a `.unverified` name."""

    def __init__(self, message: str, report: ConversionReport):
        super().__init__(message)
        self.report = report


def _inputs(loaded: LoadedModel, samples: int, inputs: Optional[str]):
    """Real test images of the run, else the user's .npy, else random inputs (warned)."""
    if loaded.run_config and "dataset" in loaded.run_config:
        return verification_inputs(loaded.model, loaded.run_config, samples)
    if inputs:
        try:
            x = np.load(inputs)
        except (OSError, ValueError) as exc:
            raise BnnError(f"Could not read --inputs {inputs} as a .npy array ({exc}).") from None
        expected = tuple(loaded.model.input_shape[1:])
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise BnnError(f"Expected --inputs of shape (N, {', '.join(map(str, expected))}), "
                           f"got {x.shape}.")
        return x[:samples].astype(np.float32), None, f"inputs from {inputs}"
    return verification_inputs(loaded.model, None, samples)


def convert_trained_model(
    source: str,
    *,
    output: Optional[str] = None,
    target: str = "arm64",
    samples: int = 64,
    inputs: Optional[str] = None,
    min_agreement: float = 0.99,
    int8: bool = False,
    int8_io: bool = False,
    calibration_samples: int = 256,
    fine_tune_epochs: int = 0,
    bundle: Optional[str] = None,
    verbose: int = 0,
) -> ConversionReport:
    """Converts a run folder or model file, verifies the flatbuffer and writes it.

    Args:
        source: A run folder (model.keras + config.json) or a Keras model file.
        output: The .tflite path [default: model.tflite next to the model].
        target: "arm64", "arm" or "xcore".
        samples: Number of inputs to compare Keras and the flatbuffer on.
        inputs: A .npy of preprocessed inputs to verify on when the run's data set is unknown.
        min_agreement: Lowest acceptable top-1 agreement between Keras and the flatbuffer.
            With `int8` too, Keras is the trained float model: int8 must keep its decisions.
        int8: Run the non-binary layers in int8: fake-quant ranges calibrated on the run's
            training images (`convert.quantize`); the report compares size and accuracy with
            the float32 conversion.
        int8_io: int8 model input and output (needs `int8`).
        calibration_samples: Training images that calibrate the int8 ranges.
        fine_tune_epochs: Quantization-aware fine-tuning epochs on those images (0: none).
        bundle: Also write a Raspberry Pi bundle folder here and self-check it.
        verbose: 1 shows a progress bar while the flatbuffer runs.

    Returns:
        The `ConversionReport`, with `path` (and `bundle`, `bundle_check`) set.

    Raises:
        BnnError: bad source or options.
        VerificationFailedError: agreement below `min_agreement`; the flatbuffer was written to
            `<output>.unverified` instead of `output`.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise BnnError(f"Expected min_agreement between 0 and 1, got {min_agreement}.")
    if int8_io and not int8:
        raise BnnError("--int8-io needs --int8: LCE gives a model int8 inputs and outputs only "
                       "when it has quantization ranges (otherwise it quietly keeps float32).")
    loaded = load_trained_model(source)
    out_path = Path(output) if output else loaded.path.parent / "model.tflite"
    if out_path.suffix != ".tflite":
        warnings.warn(f"{out_path} does not end in .tflite.", stacklevel=2)
    metadata = run_metadata(loaded.run_config)
    float_flatbuffer = embed_metadata(convert_model(loaded.model, target=target), metadata)
    x, y, where = _inputs(loaded, samples, inputs)
    flatbuffer, int8_report = float_flatbuffer, None
    if int8:
        flatbuffer = _int8(loaded, target, int8_io, calibration_samples, fine_tune_epochs,
                           metadata)
        int8_report = _int8_comparison(float_flatbuffer, flatbuffer, x, y)
    verification = verify_flatbuffer(loaded.model, flatbuffer, x, verbose=verbose)
    report = conversion_report(
        loaded.model, flatbuffer, target=target, verification=verification, verified_on=where
    )
    report.int8 = int8_report
    if verification.top1_agreement < min_agreement:
        kept = out_path.with_name(out_path.name + UNVERIFIED_SUFFIX)
        files.write_bytes(kept, flatbuffer)
        report.path = str(kept)
        raise VerificationFailedError(
            f"The .tflite agrees with Keras on only {verification.top1_agreement:.2%} of "
            f"{verification.samples} {where} (--min-agreement {min_agreement:.2%}); kept it as "
            f"{kept} for inspection.",
            report,
        )
    files.write_bytes(out_path, flatbuffer)
    report.path = str(out_path)
    if bundle:
        from convert.bundle import check_bundle, write_bundle

        bundle_path = write_bundle(
            # The expected output comes from the float32 model the flatbuffer was made from.
            bundle, flatbuffer=flatbuffer, keras_model=as_float32(loaded.model),
            run_config=loaded.run_config,
        )
        check = check_bundle(bundle_path)
        report.bundle = str(bundle_path)
        report.bundle_check = f"max |diff| {check.max_abs_diff:.3g} <= {check.atol:.3g}"
    return report


def _int8(loaded: LoadedModel, target: str, int8_io: bool, calibration_samples: int,
          fine_tune_epochs: int, metadata):
    """The int8 flatbuffer of the model, with fake-quant ranges calibrated on training images."""
    from convert.quantize import FineTune, convert_int8, prepare_int8
    from convert.samples import run_test_split

    if not (loaded.run_config and "dataset" in loaded.run_config):
        raise BnnError("--int8 needs a run folder: its training images calibrate the int8 "
                       "ranges.")
    if calibration_samples < 1 or fine_tune_epochs < 0:
        raise BnnError(f"Expected calibration samples >= 1 and fine-tune epochs >= 0, got "
                       f"{calibration_samples} and {fine_tune_epochs}.")
    x_cal, y_cal = run_test_split(loaded.run_config, calibration_samples, split="train")
    fine_tune = FineTune(data=(x_cal, y_cal), epochs=fine_tune_epochs) if fine_tune_epochs else None
    prepared = prepare_int8(loaded.model, x_cal, fine_tune=fine_tune)
    return embed_metadata(convert_int8(prepared, target=target, int8_io=int8_io), metadata)


def _int8_comparison(float_flatbuffer: bytes, int8_flatbuffer: bytes, x, y):
    """Size, and accuracy or agreement on the verification inputs, with and without int8."""
    from convert.quantize import dequantize_outputs, quantize_inputs
    from convert.runtime import LceRuntime

    def predict(fb):
        raw = LceRuntime(fb).predict(quantize_inputs(x, fb))
        return np.asarray(dequantize_outputs(raw, fb)).reshape(len(x), -1).argmax(-1)

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
