"""Registry models against larq-zoo: parameters, function, and what LCE makes of them.

For every model that larq-zoo 2.4.0 also defines, at ImageNet size (224x224x3, 1000 classes):

- **params**: ours (default variant) and the zoo reference's;
- **max |delta logit|**: the zoo reference, with random weights and random BatchNorm statistics,
  saved with `save_weights(".h5")` as the zoo's release files are, loaded into ours with
  `models.create_model(name, weights=FILE)` (which picks the larq-zoo variant), on the same
  random inputs; beside the logits' own magnitude;
- **LceBconv2d predicted / actual** and **flatbuffer bytes predicted / actual**: our default
  (LCE-friendly) variant, as `bnn summary` predicts it and as LCE 0.16 converts it (`--target
  arm64`).

larq-zoo cannot be installed beside bnn (its protobuf pin), so the zoo references are the
transcriptions of its public definitions that the test suite checks parity with
(`tests/models/zoo_reference.py` and the per-model test modules).

Usage (from the repository root; ~15-25 min on 2 cores, mostly the conversions)::

    .venv/bin/python benchmarks/zoo_parity.py                       # every shared model
    .venv/bin/python benchmarks/zoo_parity.py quicknet xnornet      # some of them
    .venv/bin/python benchmarks/zoo_parity.py --no-convert          # parity and params only
"""

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnn_keras  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import models  # noqa: E402
from bnn_keras.model_stats import model_summary  # noqa: E402
from convert.converter import convert_to_flatbuffer  # noqa: E402

# Registry name -> "module:function" of its zoo reference (input_shape, num_classes) -> model.
REFERENCES = {
    "binary-alexnet": "tests.models.zoo_reference:zoo_binary_alexnet",
    "binary-densenet28": "tests.models.zoo_reference:zoo_binary_densenet28",
    "binary-densenet37": "tests.models.zoo_reference:zoo_binary_densenet37",
    "binary-densenet37-dilated": "tests.models.zoo_reference:zoo_binary_densenet37_dilated",
    "binary-densenet45": "tests.models.zoo_reference:zoo_binary_densenet45",
    "binary-resnet-e18": "tests.models.zoo_reference:zoo_binary_resnet_e18",
    "birealnet18": "tests.models.zoo_reference:zoo_birealnet",
    "dorefanet": "tests.models.zoo_reference:zoo_dorefanet",
    "xnornet": "tests.models.zoo_reference:zoo_xnornet",
    "quicknet-small": "tests.models.zoo_reference:zoo_quicknet_small",
    "quicknet": "tests.models.zoo_reference:zoo_quicknet",
    "quicknet-large": "tests.models.zoo_reference:zoo_quicknet_large",
    "real-to-binary-net": "tests.models.test_real_to_binary:zoo_real_to_binary_net",
    "strong-baseline-net": "tests.models.test_real_to_binary:zoo_strong_baseline_net",
    "meliusnet22": "tests.models.test_meliusnet:zoo_meliusnet22",
}


def _reference_builder(name):
    module, function = REFERENCES[name].split(":")
    return getattr(importlib.import_module(module), function)


def parity(name, shape, num_classes, folder):
    """(zoo params, max |delta logit|, max |logit|, spread) of `name` loaded from a zoo-shaped
    file; spread is the largest change of a logit across the inputs (0: a dead comparison)."""
    from tests.models import zoo_reference

    x = np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")
    # BatchNorm statistics calibrated on the inputs: with purely random ones, DoReFa-Net's
    # 2-bit activations and XNOR-Net's signs can be constant, and any model would "agree".
    reference, path = zoo_reference._zoo_file(Path(folder), _reference_builder(name), shape,
                                              num_classes, name=f"{name}.h5", calibrate=x)
    ours = models.create_model(name, input_shape=shape, num_classes=num_classes, weights=path)
    expected = zoo_reference._logits(reference, x)
    got = zoo_reference._logits(ours, x)
    spread = float((expected.max(axis=0) - expected.min(axis=0)).max())
    return (reference.count_params(), float(np.abs(got - expected).max()),
            float(np.abs(expected).max()), spread)


def conversion(name, shape, num_classes):
    """(params, predicted LceBconv2d, actual, predicted bytes, actual bytes), default variant."""
    model = models.create_model(name, input_shape=shape, num_classes=num_classes)
    stats = model_summary(model)
    flatbuffer = convert_to_flatbuffer(model, target="arm64")
    return (model.count_params(), stats.lce_bconvs, flatbuffer.ops.get("LceBconv2d", 0),
            stats.lce_size_bytes, len(flatbuffer.data))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="registry names (default: every shared model)")
    parser.add_argument("--size", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--no-convert", action="store_true", help="skip the LCE conversions")
    args = parser.parse_args(argv)
    names = args.names or list(REFERENCES)
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        parser.error(f"no zoo reference for {', '.join(unknown)}; known: {', '.join(REFERENCES)}")
    shape = (args.size, args.size, 3)
    print(f"load average {os.getloadavg()[0]:.1f}; input {shape}, {args.num_classes} classes",
          file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in tqdm(names, desc="models", file=sys.stderr):
            start = time.time()
            zoo_params, delta, magnitude, spread = parity(name, shape, args.num_classes,
                                                          folder)
            converted = (None,) * 5 if args.no_convert else conversion(
                name, shape, args.num_classes)
            rows.append((name, zoo_params, delta, magnitude, spread, converted,
                         time.time() - start))
    print("| model | params (ours) | params (zoo) | max abs delta logit | max abs logit "
          "| logit spread over inputs | LceBconv2d predicted / actual | bytes predicted / actual "
          "| s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, zoo_params, delta, magnitude, spread, converted, seconds in rows:
        params, predicted, actual, predicted_bytes, actual_bytes = converted
        ours = f"{params:,}" if params is not None else "-"
        bconvs = f"{predicted} / {actual}" if predicted is not None else "-"
        size = (f"{predicted_bytes:,} / {actual_bytes:,} ({predicted_bytes / actual_bytes - 1:+.1%})"
                if predicted_bytes is not None else "-")
        print(f"| {name} | {ours} | {zoo_params:,} | {delta:.2e} | {magnitude:.3g} "
              f"| {spread:.3g} | {bconvs} "
              f"| {size} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
