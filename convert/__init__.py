"""Keras -> TFLite flatbuffer through Larq Compute Engine: conversion, verification, the report,
evaluation, linting, the runtime and the Raspberry Pi bundle.

The data flow, one module each: `loading` (run folder or model file -> Keras model),
`converter` (the only call to LCE's converter), `flatbuffer` (a `Flatbuffer` parsed once: ops,
I/O quantization, metadata, renaming), `verify` and `report`, `workflow` (the whole
`bnn convert` job), `int8/` (fake-quant, calibration, range balance, thresholds), `evaluate`,
`samples`, `isolated` and `runtime` (LCE's interpreter), `lint` (what keeps LCE from fast binary
ops), `describe` (what a .tflite holds, `bnn inspect FILE.tflite`), `bundle_layout`, `bundle` and
`bundle_check` (the Raspberry Pi bundle: its files, writing it, checking it); `options`
(`ConvertOptions`, every option of `bnn convert`).

The names below are imported from their modules on first use, so `import convert` loads neither
LCE's converter nor the data sets:

    from convert import convert_trained_model
    report = convert_trained_model("runs/digits", output="model.tflite")
"""

from typing import Dict

import bnn_keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from bnn_keras._lazy import lazy_exports

# Public name -> the module that defines it.
_EXPORTS: Dict[str, str] = {
    **dict.fromkeys(["TARGETS", "ConversionError", "convert_model", "convert_to_flatbuffer"],
                    "convert.converter"),
    **dict.fromkeys(["Flatbuffer", "InvalidFlatbufferError", "IoQuantization"],
                    "convert.flatbuffer"),
    **dict.fromkeys(["LoadedModel", "load_trained_model"], "convert.loading"),
    **dict.fromkeys(["ConversionReport"], "convert.report"),
    **dict.fromkeys(["Verification", "verify_flatbuffer"], "convert.verify"),
    **dict.fromkeys(["VerificationFailedError", "convert_trained_model"], "convert.workflow"),
    **dict.fromkeys(["FineTune", "convert_int8", "prepare_int8"], "convert.int8"),
    **dict.fromkeys(["ImagePrediction", "evaluate_flatbuffer", "image_options", "load_images",
                     "predict_images"], "convert.evaluate"),
    **dict.fromkeys(["flatbuffer_test_split", "run_test_split"], "convert.samples"),
    **dict.fromkeys(["isolated_benchmark", "isolated_predict"], "convert.isolated"),
    **dict.fromkeys(["Latency", "LceRuntime"], "convert.runtime"),
    **dict.fromkeys(["Finding", "format_findings", "inspect_model"], "convert.lint"),
    **dict.fromkeys(["describe_flatbuffer"], "convert.describe"),
    **dict.fromkeys(["write_bundle"], "convert.bundle"),
    **dict.fromkeys(["CheckResult", "check_bundle"], "convert.bundle_check"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("convert", _EXPORTS, globals())
