"""Precision policy: resolving "auto", the emulated-bf16 warning, and converting a bf16 model.

The conversion test trains in mixed_bfloat16 explicitly, so the float32 rebuild that LCE needs is
exercised on every CPU (with "auto", a CPU without native bf16 would train in float32 and skip it).
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from bnn_keras.training import precision
from convert import converter
from convert.runtime import LceRuntime

from tests.conftest import invoke, tiny_lce_model


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)


def test_auto_is_float32_without_native_bf16(no_native_bf16):
    assert precision.resolve_precision("auto") == "float32"
    assert precision.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_auto_is_bf16_with_native_bf16(native_bf16):
    assert precision.resolve_precision("auto") == "mixed_bfloat16"


def test_explicit_bf16_without_native_support_warns_once(no_native_bf16):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision.warn_if_emulated_bf16("mixed_bfloat16")
        precision.warn_if_emulated_bf16("float32")
    assert len(caught) == 1
    assert "no native bfloat16" in str(caught[0].message)
    assert "--precision auto picks float32" in str(caught[0].message)


def test_bf16_on_native_hardware_does_not_warn(native_bf16):
    assert precision.emulated_bf16_warning("mixed_bfloat16") is None


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "Path", lambda _: cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu sse avx2 fma\n")
    assert not precision.cpu_supports_bf16()
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert precision.cpu_supports_bf16()


def test_bf16_trained_model_converts_and_agrees_with_its_float32_copy():
    """A model trained under mixed_bfloat16 (Issue 5): LCE gets the float32 rebuild, and the
    flatbuffer computes what that float32 copy computes."""
    tf.keras.utils.set_random_seed(0)
    with precision.precision_policy("mixed_bfloat16"):
        model = tiny_lce_model()
    assert precision.is_mixed_precision(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    model.compile(tf.keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    with pytest.warns(UserWarning, match="converting a float32 copy"):
        flatbuffer = converter.convert_model(model, target="arm64")
    float_copy = precision.as_float32(model)
    assert not precision.is_mixed_precision(float_copy)
    expected = float_copy.predict(x, verbose=0)
    got = LceRuntime(flatbuffer).predict(x)
    # Both compute in float32; they differ only in summation order (BN folded into the
    # LceBconv2d post-multiply), so softmax outputs agree to ~1e-6.
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_bnn_train_warns_about_emulated_bf16_in_one_line(no_native_bf16, tmp_path):
    # The smallest registry model that trains, ReActNet-A with a stem and one block: the
    # warning is given before the model is built, and emulated bf16 makes every op of the run
    # slow (binary-resnet-e18's 16 binary convs took 8-9 s here, this model ~3 s).
    result = invoke([
        "train", "reactnet-a", "--model-option", "widths=[8,8]",
        "--dataset", "digits", "--image-size", "8", "--epochs", "1", "--steps-per-epoch", "1",
        "--batch-size", "8", "--precision", "mixed_bfloat16", "--verbose", "0",
        "--output", tmp_path / "run",
    ])
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.output.splitlines() if "native bfloat16" in line]
    assert warning_lines == [
        "Warning: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so mixed_bfloat16 is "
        "emulated and trains ~7x slower than float32 (--precision auto picks float32 here)."
    ]
