"""ReActNet-A (models/reactnet.py): the official code's parameters and the paper's binary
operations at 224 px, its blocks, the recipe, and its LCE conversion (ops and agreement)."""

import models  # noqa: F401  (must come before tensorflow)

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from bnn_keras import model_stats
from bnn_keras.binary import is_binary_conv
from bnn_keras.errors import BnnError
from bnn_keras.layers import RPReLU, RSign
from convert.converter import convert_to_flatbuffer
from convert.lint import inspect_model
from convert.verify import verify_flatbuffer
from tests.models.zoo_reference import zero_initializers

SMALL = dict(widths=(8, 16, 32, 32, 64), num_classes=10)


def _randomize(model, seed=0):
    """Non-trivial thresholds, shifts, slopes and BN statistics (all zeros/ones at init)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "kernel" in w.name:
            continue
        value = rng.normal(0, 0.3, w.shape)
        if "variance" in w.name:
            value = np.abs(value) + 0.5
        w.assign(value.astype(np.float32))


@pytest.fixture(scope="module")
def randomized_small() -> tf.keras.Model:
    """ReActNet-A with `SMALL` widths at 16x16x3 and `_randomize`d values, set here once: the
    tests that take it only read it."""
    model = models.create_model("reactnet-a", input_shape=(16, 16, 3), **SMALL)
    _randomize(model)
    return model


def test_imagenet_size_has_the_official_parameters_and_the_papers_binary_operations():
    with zero_initializers():  # only shapes are read
        model = models.create_model("reactnet-a", input_shape=(224, 224, 3), num_classes=1000)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 29_343_592  # the official mobilenet/2_step2/reactnet.py's parameters
    bn_statistics = sum(2 * layer.gamma.shape[0] for layer in model.layers
                        if isinstance(layer, tf.keras.layers.BatchNormalization))
    assert model.count_params() == 29_365_480 == trainable + bn_statistics
    stats = model_stats.model_summary(model)
    assert stats.binary_macs == 4_816_896_000  # the paper's 4.82e9 BOPs
    assert model_stats.count_binary_convs(model) == 26
    stem = model.get_layer("stem_conv")
    assert (stem.kernel_size, stem.strides) == ((3, 3), (2, 2))
    assert model.get_layer("block13_rprelu2").output_shape == (None, 7, 7, 1024)


def test_blocks_follow_the_official_code():
    with zero_initializers():  # only layers and shapes are read
        model = models.create_model("reactnet-a", input_shape=(32, 32, 3), num_classes=10)
    stem = model.get_layer("stem_conv")
    assert (stem.kernel_size, stem.strides) == ((3, 3), (1, 1))  # small-input stem
    binary = [layer for layer in model.layers if is_binary_conv(layer)]
    assert len(binary) == 26
    for layer in binary:
        assert isinstance(layer.input_quantizer, RSign)
        assert layer.input_quantizer.pseudo_gradient == "approx_sign"
        assert isinstance(layer.kernel_quantizer, lq.quantizers.MagnitudeAwareSign)
        assert layer.pad_values == 1.0 and not layer.use_bias
    # Strided blocks where the width doubles (not 32 -> 64): 3x3 conv stride 2, averaged
    # shortcut; the 1x1 conv doubles the width and both halves add the same shortcut.
    strided = [i for i in range(1, 14) if model.get_layer(f"block{i}_conv3x3").strides == (2, 2)]
    assert strided == [2, 4, 6, 12]
    assert model.get_layer("block2_pool").output_shape == (None, 16, 16, 64)
    assert model.get_layer("block2_conv1x1").filters == 128
    assert model.get_layer("block2_shortcut").output_shape == (None, 16, 16, 128)
    assert [type(model.get_layer(f"block2_rprelu{k}")) for k in (1, 2)] == [RPReLU, RPReLU]
    assert model.get_layer("block13_rprelu2").output_shape == (None, 2, 2, 1024)
    # Nothing before an RSign leaves a foldable threshold unfolded: every RSign's input also
    # feeds a shortcut, which needs the unshifted values (one SUB each, unavoidable).
    assert [f.code for f in inspect_model(model) if f.severity != "info"] == []


def test_first_training_step_keeps_float_weights():
    model = models.create_model("reactnet-a", input_shape=(16, 16, 3), kernel_quantizer=None,
                                **SMALL)
    conv = model.get_layer("block1_conv3x3")
    assert conv.kernel_quantizer is None and isinstance(conv.input_quantizer, RSign)
    assert model_stats.count_binary_convs(model) == 0


@pytest.mark.parametrize("widths, message", [
    ((32,), "the stem's width and one per block"),
    ((32, 64, 96), "equal the previous one or twice it, got 64 -> 96"),
])
def test_bad_widths_are_refused(widths, message):
    with pytest.raises(BnnError, match=message):
        models.create_model("reactnet-a", input_shape=(16, 16, 3), widths=widths)


def test_recipe_holds_the_official_256_epoch_setting():
    entry = models.get_entry("reactnet-a")
    step1, step2 = entry.staged.stages
    official = dict(optimizer="adam", learning_rate=5e-4, schedule="linear", epochs=256,
                    batch_size=256)
    assert dict(step1.recipe.values) == {**official, "weight_decay": 1e-5}
    assert dict(step2.recipe.values) == {**official, "weight_decay": 0.0}
    assert dict(step1.model_options) == {"kernel_quantizer": None}
    assert step2.start_from == "step1"
    # The single-stage recipe is the final step's.
    assert dict(entry.recipe.values) == dict(step2.recipe.values)


def test_conversion_keeps_one_bconv_per_binary_conv_and_agrees_with_keras(randomized_small):
    """Per binary conv: LceQuantize + LceBconv2d (BN folded), the threshold's SUB (its input
    also feeds the shortcut), the shortcut ADD, and RPReLU's SUB, PRELU and ADD."""
    model = randomized_small
    flatbuffer = convert_to_flatbuffer(model)
    n = model_stats.count_binary_convs(model)
    assert n == model_stats.model_summary(model).lce_bconvs == 8
    assert dict(flatbuffer.ops) == {
        "CONV_2D": 1, "LceQuantize": n, "LceBconv2d": n, "SUB": 2 * n, "ADD": 2 * n,
        "PRELU": n, "AVERAGE_POOL_2D": 2, "CONCATENATION": 3, "MEAN": 1,
        "FULLY_CONNECTED": 1, "SOFTMAX": 1,
    }
    x = np.random.default_rng(1).uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
    check = verify_flatbuffer(model, flatbuffer, x)
    assert check.top1_agreement == 1.0
    assert check.median_abs_diff < 1e-5


def test_saved_model_loads_with_only_bnn_keras_imported(tmp_path, randomized_small):
    """`bnn convert` loads a run's model.keras without `models`: RSign and RPReLU are found by
    their registered names, with their trained values."""
    import subprocess
    import sys

    model = randomized_small
    path = tmp_path / "reactnet.keras"
    model.save(path)
    script = (
        "import sys, bnn_keras, tensorflow as tf\n"
        "assert 'models' not in sys.modules\n"
        f"model = tf.keras.models.load_model({str(path)!r})\n"
        "print(float(model.get_layer('block3_conv1x1').input_quantizer.threshold[1]),\n"
        "      float(model.get_layer('block3_rprelu2').zeta[2]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    threshold, zeta = (float(v) for v in result.stdout.split()[-2:])
    assert threshold == float(model.get_layer("block3_conv1x1").input_quantizer.threshold[1])
    assert zeta == float(model.get_layer("block3_rprelu2").zeta[2])
    assert threshold != 0.0 and zeta != 0.0
