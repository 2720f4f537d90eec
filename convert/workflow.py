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
        return x[:samples].astype(np.float32), f"inputs from {inputs}"
    return verification_inputs(loaded.model, None, samples)


def convert_trained_model(
    source: str,
    *,
    output: Optional[str] = None,
    target: str = "arm64",
    samples: int = 64,
    inputs: Optional[str] = None,
    min_agreement: float = 0.99,
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
    loaded = load_trained_model(source)
    out_path = Path(output) if output else loaded.path.parent / "model.tflite"
    if out_path.suffix != ".tflite":
        warnings.warn(f"{out_path} does not end in .tflite.", stacklevel=2)
    flatbuffer = embed_metadata(
        convert_model(loaded.model, target=target), run_metadata(loaded.run_config)
    )
    x, where = _inputs(loaded, samples, inputs)
    verification = verify_flatbuffer(loaded.model, flatbuffer, x, verbose=verbose)
    report = conversion_report(
        loaded.model, flatbuffer, target=target, verification=verification, verified_on=where
    )
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
