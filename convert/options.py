"""`ConvertOptions`: every option of a conversion, declared once.

Each field carries its default, help text and choices (`bnn_keras.options.option`): `bnn convert`
generates its options from these fields, as `bnn train` does from `TrainConfig`, and
`convert.workflow.convert_trained_model` takes a `ConvertOptions`. The checks that need no model
(a value out of range, options that exclude each other) run when the options are made, before
anything is loaded. This module loads neither TensorFlow nor LCE.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Union

from bnn_keras.errors import BnnError
from bnn_keras.options import ANY_PATH, EXISTING_FILE, FOLDER, option

# `target` -> the target LCE's converter is given. LCE has one ARM target for both: its kernels
# for 32-bit ARM are built from the same graph.
TARGETS: Dict[str, str] = {"arm64": "arm", "arm": "arm", "xcore": "xcore"}

# The options that describe a bare model file's training, which a run folder's config.json
# records instead (`ConvertOptions.model_file_options`).
MODEL_FILE_OPTIONS = ("class_names", "mean", "std", "pixel_max", "dataset", "data_dir")


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """What `bnn convert` (`convert.workflow.convert_trained_model`) is asked to do.

    Each field's help is its documentation (`bnn convert --help` shows the same text). In a
    message, a field is named in backticks (`min_agreement`); `bnn convert` shows its option.

    Raises:
        BnnError: on creation, for a value out of range or options that exclude each other.
    """

    target: str = option(
        "arm64", choices=tuple(TARGETS),
        help="LCE target; arm64 and arm both mean LCE's ARM kernels.")
    output: Optional[str] = option(
        path=ANY_PATH, aliases=("-o",),
        help="Where to write the .tflite [default: model.tflite in the run folder, or next to "
             "the model file]. Never an input, a link or a device; an existing file only with "
             "--overwrite.")
    overwrite: bool = option(
        False,
        help="Replace an existing --output (and its .unverified file) and --bundle folder (an "
             "earlier bundle or an empty folder only).")
    samples: int = option(
        64, help="Inputs to compare Keras and the .tflite on (the run's test images).")
    inputs: Optional[str] = option(
        path=EXISTING_FILE,
        help="A .npy of preprocessed inputs to verify on when the model has no run folder.")
    min_agreement: float = option(
        0.99,
        help="Fail (keeping the file as .unverified) below this Keras/.tflite top-1 agreement.")
    int8: bool = option(
        False,
        help="Run the non-binary layers in int8 (fake-quant ranges calibrated on the run's "
             "training images); the report compares size and accuracy with float32.")
    int8_io: bool = option(False, help="int8 model input and output (needs --int8).")
    calibration_samples: int = option(
        256, help="Training images that calibrate the --int8 ranges.")
    fine_tune_epochs: int = option(
        0, help="Quantization-aware fine-tuning epochs for --int8 on those images.")
    bundle: Optional[str] = option(
        path=ANY_PATH,
        help="Also write a Raspberry Pi deployment folder (model, labels, test I/O, runner, "
             "manifest.json); a new folder, or an earlier bundle with --overwrite, which "
             "replaces only the files bnn wrote and keeps yours (notes, build/).")
    lce_benchmark_binary: Optional[str] = option(
        path=EXISTING_FILE,
        help="With --bundle: LCE's lce_benchmark_model for the Pi (its aarch64 or aarch32 "
             "release asset, or one you built), copied into the bundle so that benchmark.sh "
             "downloads nothing on the device.")
    class_names: Optional[Union[str, Sequence[str]]] = option(
        metavar="FILE|A,B,...",
        help="Model file only: one class name per output, as a file (one per line) or a "
             "comma-separated list.")
    mean: Optional[Union[str, float, Sequence[float]]] = option(
        metavar="M[,M,M]",
        help="Model file only: per-channel mean of the training normalization, on raw pixels "
             "(one value, or one per channel).")
    std: Optional[Union[str, float, Sequence[float]]] = option(
        metavar="S[,S,S]",
        help="Model file only: per-channel standard deviation of that normalization.")
    pixel_max: Optional[float] = option(
        help="Model file only: raw pixel maximum training saw [default: 16 for digits, else "
             "255].")
    dataset: Optional[str] = option(
        help="Model file only: the data set it was trained on (verification on its test "
             "images; `bnn evaluate` then needs no --dataset).")
    data_dir: Optional[str] = option(
        path=FOLDER, help="Model file only: where that data set lives.")
    no_metadata: bool = option(
        False,
        help="Model file only: convert without the preprocessing metadata (a plain .tflite "
             "that `bnn evaluate` and `bnn predict` refuse).")

    def __post_init__(self):
        if self.target not in TARGETS:
            raise BnnError(f"Expected `target` one of {', '.join(TARGETS)}, got "
                           f"{self.target!r}.")
        if self.samples < 1:
            raise BnnError(f"Expected `samples` >= 1, got {self.samples}.")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise BnnError(f"Expected `min_agreement` between 0 and 1, got "
                           f"{self.min_agreement}.")
        if self.int8_io and not self.int8:
            raise BnnError("`int8_io` needs `int8`: LCE gives a model int8 inputs and outputs "
                           "only when it has quantization ranges (otherwise it quietly keeps "
                           "float32).")
        if self.calibration_samples < 1 or self.fine_tune_epochs < 0:
            raise BnnError(f"Expected `calibration_samples` >= 1 and `fine_tune_epochs` >= 0, "
                           f"got {self.calibration_samples} and {self.fine_tune_epochs}.")
        if self.lce_benchmark_binary and not self.bundle:
            raise BnnError("`lce_benchmark_binary` goes into the bundle: give `bundle` too.")
        if self.no_metadata and self.given_model_file_options:
            raise BnnError(f"`no_metadata` converts without "
                           f"{' '.join(self.given_model_file_options)}; pass one or the other.")

    @property
    def model_file_options(self) -> Dict[str, Any]:
        """{name: value} of the options that describe a bare model file (`MODEL_FILE_OPTIONS`)."""
        return {name: getattr(self, name) for name in MODEL_FILE_OPTIONS}

    @property
    def given_model_file_options(self) -> List[str]:
        """Those of them that were given, each in backticks as messages name them."""
        return [f"`{name}`" for name, value in self.model_file_options.items()
                if value is not None]
