"""`bnn_keras.binarize`: the rewrite rules on small float models, and the converted result."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import bnn_keras
from bnn_keras import graph
from bnn_keras.binarization import BinarizeOptions, LayerChange
from bnn_keras.errors import BnnError
from bnn_keras.layers import RPReLU

L = tf.keras.layers


def mnist_convnet() -> tf.keras.Model:
    """Keras' "Simple MNIST convnet" example (keras.io/examples/vision/mnist_convnet)."""
    tf.keras.utils.set_random_seed(1)
    return tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        L.Conv2D(32, 3, activation="relu", name="conv1"),
        L.MaxPooling2D(name="pool1"),
        L.Conv2D(64, 3, activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool2"),
        L.Flatten(name="flatten"),
        L.Dropout(0.5, name="dropout"),
        L.Dense(10, activation="softmax", name="classifier"),
    ], name="mnist_convnet")


def bn_relu_net() -> tf.keras.Model:
    """Conv-BN-ReLU blocks, a conv without BN, a depthwise conv and two dense layers."""
    tf.keras.utils.set_random_seed(2)
    inputs = tf.keras.Input((16, 16, 3))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    x = L.Conv2D(16, 3, padding="same", name="conv_bn")(x)
    x = L.BatchNormalization(name="conv_bn_bn")(x)
    x = L.ReLU(name="conv_bn_relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same", name="conv_down")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dense(32, activation="relu", name="hidden")(x)
    outputs = L.Dense(10, activation="softmax", name="classifier")(x)
    return tf.keras.Model(inputs, outputs, name="bn_relu_net")


def _kinds(model):
    """{layer name: class name}, the input left out (Keras numbers its name)."""
    return {layer.name: type(layer).__name__ for layer in model.layers
            if not isinstance(layer, L.InputLayer)}


def test_the_mnist_convnet_keeps_its_first_and_last_layer_float():
    float_model = mnist_convnet()
    bnn, report = bnn_keras.binarize(float_model)
    assert _kinds(bnn) == {
        "conv1": "Conv2D", "pool1": "MaxPooling2D",
        "conv2": "QuantConv2D", "conv2_bn": "BatchNormalization", "conv2_relu": "Activation",
        "pool2": "MaxPooling2D", "flatten": "Flatten", "dropout": "Dropout",
        "classifier": "Dense", "classifier_softmax": "Activation"}
    conv2 = bnn.get_layer("conv2")
    assert isinstance(conv2.input_quantizer, lq.quantizers.SteSign)
    assert isinstance(conv2.kernel_quantizer, lq.quantizers.SteSign)
    assert isinstance(conv2.kernel_constraint, lq.constraints.WeightClip)
    assert not conv2.use_bias and conv2.activation is tf.keras.activations.linear
    # Latent weights from the float kernel; the bias becomes the new BatchNormalization's beta.
    np.testing.assert_array_equal(conv2.kernel.numpy(),
                                  float_model.get_layer("conv2").kernel.numpy())
    np.testing.assert_array_equal(bnn.get_layer("conv2_bn").beta.numpy(),
                                  float_model.get_layer("conv2").bias.numpy())
    # conv1's own ReLU reaches conv2's sign through the pooling: it goes; the others stay.
    assert bnn.get_layer("conv1").activation is tf.keras.activations.linear
    assert bnn.get_layer("conv2_relu").activation is tf.keras.activations.relu
    np.testing.assert_array_equal(bnn.get_layer("classifier").kernel.numpy(),
                                  float_model.get_layer("classifier").kernel.numpy())
    assert report.changes == (
        LayerChange("conv1", "Conv2D", "float", "the first layer (it reads the image)"),
        LayerChange("conv1", "Conv2D", "relu removed", "it feeds a binary layer's sign, "
                    "which would be +1 everywhere after it"),
        LayerChange("conv2", "Conv2D", "binary"),
        LayerChange("conv2_bn", "BatchNormalization", "added", "after the binary conv2"),
        LayerChange("conv2_relu", "Activation", "added",
                    "conv2's own activation, after its BatchNormalization"),
        LayerChange("classifier", "Dense", "float", "the last dense layer (the classifier)"),
        LayerChange("classifier_softmax", "Activation", "added", "classifier's own softmax as "
                    "a layer of its own (distillation reads the logits before it)"))
    # The same function: the classifier's logits, then the softmax.
    assert bnn.get_layer("classifier").activation is tf.keras.activations.linear
    assert bnn.get_layer("classifier_softmax").dtype == "float32"
    assert report.binary_layers == ("conv2",) and report.binary_convs == report.lce_bconvs == 1
    # conv2: 11 x 11 x 64 outputs of 3 x 3 x 32 MACs; conv1 26 x 26 x 32 x 9; the classifier
    # 1600 x 10.
    binary, total = 11 * 11 * 64 * 288, 11 * 11 * 64 * 288 + 26 * 26 * 32 * 9 + 16000
    assert report.binary_mac_fraction == pytest.approx(binary / total)
    assert report.lines()[-1].startswith(
        "1 binary layers (1 convolutions), 91.4% of the MACs binary; 1 LceBconv2d ops "
        "expected; LCE flatbuffer ")
    assert len(float_model.layers) == 7 and float_model.get_layer("conv2").use_bias  # unchanged


def test_relu_before_a_binary_conv_goes_an_existing_bn_takes_the_bias_and_depthwise_stays():
    float_model = bn_relu_net()
    bnn, report = bnn_keras.binarize(float_model)
    kinds = _kinds(bnn)
    assert "stem_relu" not in kinds and "conv_bn_relu" in kinds  # feeds the float depthwise
    assert kinds["conv_bn"] == kinds["conv_down"] == "QuantConv2D"
    assert kinds["depthwise"] == "DepthwiseConv2D" and kinds["hidden"] == "QuantDense"
    assert kinds["conv_down_bn"] == kinds["hidden_bn"] == "BatchNormalization"
    assert "conv_bn_bn_2" not in kinds  # conv_bn had its BatchNormalization: none is added
    # "same" binary convs pad with +1, so LCE needs no padding correction.
    assert bnn.get_layer("conv_bn").pad_values == 1.0
    # The bias folds into the existing BatchNormalization exactly: BN(x + b) with mean m is
    # BN(x) with mean m - b.
    before = float_model.get_layer("conv_bn_bn").moving_mean.numpy()
    bias = float_model.get_layer("conv_bn").bias.numpy()
    np.testing.assert_allclose(bnn.get_layer("conv_bn_bn").moving_mean.numpy(), before - bias)
    assert LayerChange("depthwise", "DepthwiseConv2D", "float",
                       "a depthwise convolution: LCE has no binary depthwise kernel"
                       ) in report.changes
    assert LayerChange("stem_relu", "ReLU", "removed", "it feeds a binary layer's sign, which "
                       "would be +1 everywhere after it") in report.changes
    # The binary model computes: finite outputs for a batch.
    outputs = bnn(np.random.RandomState(0).rand(2, 16, 16, 3).astype(np.float32))
    assert outputs.shape == (2, 10) and np.all(np.isfinite(outputs.numpy()))


@pytest.mark.parametrize("relu, kind", [("prelu", "PReLU"), ("rprelu", "RPReLU")])
def test_relu_before_a_binary_layer_can_become_a_prelu_or_rprelu(relu, kind):
    bnn, report = bnn_keras.binarize(bn_relu_net(), relu=relu)
    assert type(bnn.get_layer("stem_relu")).__name__ == kind
    assert isinstance(bnn.get_layer("conv_bn_relu"), L.ReLU)  # feeds a float layer
    if relu == "prelu":
        # One slope per channel, 0.25 to start.
        np.testing.assert_array_equal(bnn.get_layer("stem_relu").alpha.numpy(),
                                      np.full((1, 1, 16), 0.25, np.float32))
    else:
        assert isinstance(bnn.get_layer("stem_relu"), RPReLU)
    assert report.options.relu == relu


def test_shortcuts_auto_adds_a_real_shortcut_only_where_shapes_match():
    bnn, report = bnn_keras.binarize(bn_relu_net(), shortcuts="auto")
    add = bnn.get_layer("conv_bn_shortcut")
    assert isinstance(add, L.Add)
    # Around conv_bn (16 -> 16 channels, stride 1): its BatchNormalization plus its input.
    assert [layer.name for layer in graph.inbound_layers(add)] == ["conv_bn_bn", "stem_bn"]
    assert [layer.name for layer in graph.inbound_layers(bnn.get_layer("conv_bn_relu"))] == [
        "conv_bn_shortcut"]
    # conv_down halves the size and doubles the channels; hidden is a dense layer.
    assert "conv_down_shortcut" not in _kinds(bnn) and "hidden_shortcut" not in _kinds(bnn)
    assert report.options == BinarizeOptions(shortcuts="auto")


def test_a_subclassed_model_is_refused_in_one_line():
    class Net(tf.keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = L.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(graph.NotFunctionalError) as raised:
        bnn_keras.binarize(Net())
    assert str(raised.value) == (
        "Model 'net' is not a functional Keras model (Net), so binarize cannot rewrite its "
        "layers: build it with tf.keras.Model(inputs, outputs) or tf.keras.Sequential.")


def test_nothing_to_binarize_and_bad_options_are_refused():
    tiny = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), L.Conv2D(4, 3), L.Flatten(),
                                L.Dense(10)], name="tiny")
    with pytest.raises(BnnError, match=r"^Model 'tiny' has no Conv2D or Dense layer that "):
        bnn_keras.binarize(tiny)
    bnn, _ = bnn_keras.binarize(tiny, keep_first=False)  # the first conv, asked for
    assert isinstance(bnn.layers[1], lq.layers.QuantConv2D)
    with pytest.raises(BnnError, match=r"^Expected `relu` one of remove, prelu, rprelu, got "
                                       r"'gelu'\.$"):
        bnn_keras.binarize(tiny, relu="gelu")
    assert BinarizeOptions.from_dict(BinarizeOptions(shortcuts="auto").to_dict()) == (
        BinarizeOptions(shortcuts="auto"))


def test_every_binary_conv_converts_to_an_lce_bconv2d():
    from convert.converter import convert_to_flatbuffer

    bnn, report = bnn_keras.binarize(bn_relu_net(), shortcuts="auto")
    flatbuffer = convert_to_flatbuffer(bnn)
    assert report.binary_convs == 2
    assert flatbuffer.ops["LceBconv2d"] == report.binary_convs == report.lce_bconvs
    low, high = report.size_range
    assert low <= len(flatbuffer) <= high


def test_a_binarized_model_trains_from_its_float_model_as_teacher(tmp_path):
    """The Python path README shows: the float model file is the frozen teacher (copied into
    the run folder), and the run's model is the binarized one."""
    from bnn_keras import training

    tf.keras.utils.set_random_seed(3)
    float_model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
        L.Conv2D(16, 3, padding="same", activation="relu"), L.GlobalAveragePooling2D(),
        L.Dense(10, activation="softmax")], name="float_cnn")
    float_model.save(tmp_path / "float.keras")
    config = training.TrainConfig(model="my-bnn", dataset="digits", image_size=8, epochs=1,
                                  steps_per_epoch=2, batch_size=16, precision="float32",
                                  teacher=str(tmp_path / "float.keras"),
                                  distill_loss="distribution")
    result = training.train(
        config, lambda shape, n: bnn_keras.binarize(float_model).model, tmp_path / "run",
        verbose=0)
    saved = tf.keras.models.load_model(tmp_path / "run" / "model.keras")
    assert [type(layer).__name__ for layer in saved.layers[1:3]] == ["Conv2D", "QuantConv2D"]
    assert result.metrics["epochs"] == 1
    record = training.RunRecord.read(tmp_path / "run")
    assert record.teacher_sha256 is not None and record.config.distill_loss == "distribution"


def test_a_binarized_run_without_teacher_has_its_batch_norm_calibrated(tmp_path, monkeypatch):
    """A caller's `build_model` of a binarized model, trained on the labels only (the
    benchmark's 'labels only' BNN): its BatchNormalizations are set from 256 training images
    before the first step, as in `bnn binarize`'s distilled run."""
    from bnn_keras import binarization, training
    from bnn_keras.training import binarized

    calls = []
    calibrate = binarization.calibrate_batch_norm
    monkeypatch.setattr(binarization, "calibrate_batch_norm",
                        lambda model, images: calls.append((model, images.shape))
                        or calibrate(model, images))
    tf.keras.utils.set_random_seed(3)
    float_model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax")], name="float_cnn")
    config = training.TrainConfig(model=binarized.BINARIZED, dataset="digits", image_size=8,
                                  epochs=1, steps_per_epoch=2, batch_size=16,
                                  precision="float32")
    result = training.train(config, binarized.binarized_builder(float_model, {}),
                            tmp_path / "run", verbose=0)
    assert [shape for _, shape in calls] == [(256, 8, 8, 1)]
    assert calls[0][0].get_layer("conv2_bn") is not None
    assert result.metrics["epochs"] == 1
    assert training.RunRecord.read(tmp_path / "run").teacher_sha256 is None


def test_calibrate_batch_norm_sets_the_moving_statistics_to_a_batchs():
    from bnn_keras.binarization import calibrate_batch_norm

    bnn, _ = bnn_keras.binarize(mnist_convnet())
    images = np.random.RandomState(0).rand(64, 28, 28, 1).astype(np.float32)
    norm = bnn.get_layer("conv2_bn")
    conv_outputs = tf.keras.Model(bnn.inputs, bnn.get_layer("conv2").output)(images).numpy()
    assert not np.allclose(norm.moving_mean.numpy(), conv_outputs.mean(axis=(0, 1, 2)))
    calibrate_batch_norm(bnn, images)
    np.testing.assert_allclose(norm.moving_mean.numpy(), conv_outputs.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-3)
    n = conv_outputs.size // conv_outputs.shape[-1]  # the fused op's unbiased variance
    np.testing.assert_allclose(norm.moving_variance.numpy(),
                               conv_outputs.var(axis=(0, 1, 2)) * n / (n - 1), rtol=1e-3)
    assert norm.momentum == 0.99  # restored
